"""GGUF export (alignlab/quant/gguf.py, `alignlab export gguf`): the Q8_0 / Q4_0 block packers give the same bytes as
gguf-py's reference quantizer, the q/k rotary permutation is the right one and inverts, and a file written by the CLI
reads back with gguf.GGUFReader with llama.cpp's metadata types, names, shapes and the weights alignlab quantized.
llama.cpp itself runs the files in tests/test_interop_llamacpp.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignlab.cli import main
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.model.rope import apply_rope, inv_frequencies, rope_cos_sin
from alignlab.quant.gguf import (
    dequantize_q4_0,
    dequantize_q8_0,
    fake_quantize,
    hf_to_interleaved,
    interleaved_to_hf,
    quantize_q4_0,
    quantize_q8_0,
    round_half_away,
)

from .hf_models import require

gguf = require("gguf")
Q = gguf.GGMLQuantizationType
PACKERS = {"q8_0": (quantize_q8_0, dequantize_q8_0, Q.Q8_0), "q4_0": (quantize_q4_0, dequantize_q4_0, Q.Q4_0)}


# --- the block packers ---------------------------------------------------------------------------------------

def edge_blocks() -> np.ndarray:
    """Rows of one 32-block each that test the corners of both formats."""
    ramp = np.arange(32, dtype=np.float32)
    rows = [
        np.zeros(32, np.float32),  # all zero: d = 0, codes 0 (Q8_0) / 8 (Q4_0)
        -(ramp + 1),  # the largest magnitude is negative: Q4_0's d > 0
        np.where(ramp == 5, -3.0, np.where(ramp == 9, 3.0, 0.5)).astype(np.float32),  # tie: the first (-3) wins
        np.r_[127.0, np.arange(31) - 15.5].astype(np.float32),  # Q8_0 d = 1, x.5 values: roundf, not round-to-even
        np.r_[-8.0, np.arange(31) / 4 - 3.75].astype(np.float32),  # Q4_0 d = 1: x + 8.5 lands on .5 boundaries
        np.full(32, 1e-3, np.float32) * (ramp - 7),  # small values, fp16 d far from 1
        np.full(32, 3e4, np.float32) * np.sin(ramp),  # large values
        np.r_[np.float32(-5.0), np.full(31, 5.0, np.float32)],  # Q4_0: m = -5, +5 maps past 15 and clamps
    ]
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_packers_give_gguf_quants_bytes(kind):
    quantize, dequantize, qtype = PACKERS[kind]
    rng = np.random.default_rng(0)
    scale = rng.exponential(1.0, (64, 1)).astype(np.float32)  # rows of very different magnitudes
    random = (rng.standard_normal((64, 256)) * scale).astype(np.float32)
    for x in (random, edge_blocks()):
        ours = quantize(torch.from_numpy(x)).numpy()
        assert ours.dtype == np.uint8 and ours.shape == gguf.quant_shape_to_byte_shape(x.shape, qtype)
        np.testing.assert_array_equal(ours, gguf.quants.quantize(x, qtype))
        np.testing.assert_array_equal(dequantize(torch.from_numpy(ours)).numpy(), gguf.quants.dequantize(ours, qtype))


def test_q4_0_layout_by_hand():
    """d = m / -8 with m = -8 gives d = 1, so the codes are x + 8; value j sits in the low nibble of byte j and
    value j + 16 in its high nibble."""
    x = torch.cat([torch.arange(16.0) - 8, torch.arange(16.0) - 8])[None]  # codes 0..15, twice
    packed = quantize_q4_0(x)[0]
    assert packed[:2].view(torch.float16).item() == 1.0
    assert packed[2:].tolist() == [j | j << 4 for j in range(16)]
    assert torch.equal(dequantize_q4_0(packed[None]), x)


def test_q8_0_layout_by_hand():
    """max |x| = 127 gives d = 1, so the int8 codes are x rounded, halves away from zero."""
    x = torch.cat([torch.tensor([-127.0, 2.5, -2.5]), torch.linspace(-100, 100, 29)])[None]
    packed = quantize_q8_0(x)[0]
    assert packed[:2].view(torch.float16).item() == 1.0
    assert packed[2:].view(torch.int8).tolist() == [int(np.sign(v) * np.floor(abs(v) + 0.5)) for v in x[0].tolist()]
    assert packed[2:5].view(torch.int8).tolist() == [-127, 3, -3]


def test_round_half_away_from_zero():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -0.49999997, 2.4, -2.6])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0, 2, -3]


def test_packers_refuse_partial_blocks_and_nan():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(torch.ones(2, 48))
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_q4_0(torch.full((1, 32), float("nan")))


# --- the rotary permutation --------------------------------------------------------------------------------

def test_permutation_turns_half_split_rope_into_interleaved_rope():
    """Rotating a head in the half-split layout, then permuting, equals permuting, then rotating pairs (2i, 2i+1)
    by the same angles: what llama.cpp's (non-NeoX) rope does to the permuted weights' outputs."""
    n_head, hd, T = 3, 8, 5
    w = torch.randn(n_head * hd, 16)
    x = torch.randn(T, 16)
    q = (x @ w.T).view(T, n_head, hd).transpose(0, 1)[None]  # (1, heads, T, hd)
    cos, sin = rope_cos_sin(inv_frequencies(hd, 10000.0), torch.arange(T)[None], torch.float32)
    hf = apply_rope(q, cos, sin)[0].transpose(0, 1).reshape(T, -1)  # (T, heads * hd)

    qi = (x @ hf_to_interleaved(w, n_head).T).view(T, n_head, hd // 2, 2)
    angle = torch.arange(T)[:, None] * inv_frequencies(hd, 10000.0)  # (T, hd/2)
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    rotated = torch.stack([qi[..., 0] * c - qi[..., 1] * s, qi[..., 1] * c + qi[..., 0] * s], dim=-1)
    torch.testing.assert_close(rotated.reshape(T, -1), hf @ hf_to_interleaved(torch.eye(n_head * hd), n_head).T)
    assert torch.equal(interleaved_to_hf(hf_to_interleaved(w, n_head), n_head), w)
    assert hf_to_interleaved(torch.arange(8.0), 1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# --- files written by the CLI ------------------------------------------------------------------------------

def tiny_model(arch="llama", **kw):
    torch.manual_seed(0)
    model = CausalLM(preset(arch, **{"vocab_size": 768, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                     "max_seq_len": 128, **kw}))
    with torch.no_grad():  # random norms and biases, so that a mix-up of them shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, world):
    """A random GQA Llama (4 heads, 2 kv heads) with TinyWorld's BPE and chat template; its MLP width 72 is not a
    multiple of 32, so ffn_down cannot be block-quantized."""
    tok = world.tokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, hidden_dim=72, eos_token_id=tok.eos_token_id)
    return save_model(model, tmp_path_factory.mktemp("gguf_model"), tokenizer=tok)


def export(model_dir, kind, out):
    return main(["export", "gguf", "--model", str(model_dir), "--type", kind, "--out", str(out)])


def field(reader, key):
    f = reader.fields[key]
    return f.contents(), [t.name for t in f.types]


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0", "q4_0"])
def test_round_trip_through_gguf_reader(model_dir, tmp_path, kind, capsys):
    assert export(model_dir, kind, tmp_path / "m.gguf") == 0
    out = capsys.readouterr().out
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    c = load_model(model_dir).config

    u32 = {"context_length": 128, "embedding_length": 64, "block_count": 2, "feed_forward_length": 72,
           "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16}
    for key, value in u32.items():
        assert field(r, f"llama.{key}") == (value, ["UINT32"]), key
    assert field(r, "general.architecture") == ("llama", ["STRING"])
    assert field(r, "general.file_type") == ({"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[kind], ["UINT32"])
    assert field(r, "llama.rope.freq_base") == (10000.0, ["FLOAT32"])
    eps, types = field(r, "llama.attention.layer_norm_rms_epsilon")
    assert types == ["FLOAT32"] and eps == pytest.approx(c.norm_eps)

    # the vocabulary: tokenizer.json's byte-level strings, special tokens as control tokens
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tokens, types = field(r, "tokenizer.ggml.tokens")
    assert types == ["ARRAY", "STRING"] and len(tokens) == c.vocab_size
    assert all(tokens[i] == s for s, i in tj["model"]["vocab"].items()) and tokens[32] == "Ġ" and tokens[65] == "A"
    token_types, types = field(r, "tokenizer.ggml.token_type")
    assert types == ["ARRAY", "INT32"]
    special = {t["id"]: t["content"] for t in tj["added_tokens"]}
    assert {i for i, k in enumerate(token_types) if k == 3} == set(special)
    assert all(tokens[i] == s for i, s in special.items())
    merges, _ = field(r, "tokenizer.ggml.merges")
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert field(r, "tokenizer.ggml.model") == ("gpt2", ["STRING"])
    assert field(r, "tokenizer.ggml.pre") == ("gpt-2", ["STRING"])
    assert field(r, "tokenizer.ggml.eos_token_id") == (c.eos_token_id, ["UINT32"])
    assert field(r, "tokenizer.ggml.add_bos_token") == (False, ["BOOL"])
    assert field(r, "tokenizer.chat_template")[0] == (model_dir / "chat_template.jinja").read_text()

    # the tensors: names, shapes (GGUF lists the innermost dimension first), types and values
    model = load_model(model_dir)
    sd = model.state_dict()
    tensors = {t.name: t for t in r.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    assert list(tensors) == ["token_embd.weight", *[f"blk.{i}.{n}.weight" for i in range(2) for n in per_block],
                             "output_norm.weight", "output.weight"]
    hf_names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    ours = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
            **{f"blk.{i}.{g}.weight": f"model.layers.{i}.{h}.weight" for i in range(2) for g, h in hf_names.items()}}
    for name, t in tensors.items():
        w = sd[ours[name]]
        want_type = "F32" if w.dim() == 1 else "F16" if kind != "f32" and name.endswith("ffn_down.weight") else kind
        assert t.tensor_type.name == want_type.upper(), name
        assert [int(n) for n in t.shape] == list(reversed(w.shape)), name
        values = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
        values = values.reshape(w.shape)
        expected = fake_quantize(w, want_type.lower())  # blocks run along rows: it commutes with a row permutation
        if "attn_q" in name or "attn_k" in name:  # llama.cpp's interleaved rotary layout; the inverse gives HF's
            n_head = 4 if "attn_q" in name else 2
            assert torch.equal(values, hf_to_interleaved(expected, n_head)) and not torch.equal(values, expected)
            values = interleaved_to_hf(values, n_head)
        assert torch.equal(values, expected), name
        if kind == "f32":
            assert torch.equal(values, w), name

    assert "arch llama, 21 tensors" in out and f"{len(tokens)} tokens" in out
    if kind == "f32":
        assert "kept" not in out
    else:
        assert "kept in f32: 5 1-D tensors" in out
    if kind in ("q8_0", "q4_0"):
        assert "kept in f16: blk.0.ffn_down.weight (rows of 72 are not a multiple of 32)" in out
        assert f"(14 {kind}, 5 f32, 2 f16)" in out


def test_quantized_files_are_smaller(model_dir, tmp_path, capsys):
    sizes = {}
    for kind in ("f32", "f16", "q8_0", "q4_0"):
        assert export(model_dir, kind, tmp_path / f"{kind}.gguf") == 0
        sizes[kind] = (tmp_path / f"{kind}.gguf").stat().st_size
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]


@pytest.mark.parametrize("arch,kw", [("qwen2", {}), ("qwen3", {"tie_embeddings": True, "head_dim": 32})])
def test_qwen_layouts(world, tmp_path, arch, kw, capsys):
    """Qwen2 keeps its q/k/v biases, Qwen3 its QK-norm; both use llama.cpp's NeoX rope (no permutation); a tied head
    has no output tensor."""
    tok = world.tokenizer()
    model = tiny_model(arch, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id, **kw)
    d = save_model(model, tmp_path / "m", tokenizer=tok)
    assert export(d, "f32", tmp_path / "m.gguf") == 0
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: torch.from_numpy(np.array(t.data)) for t in r.tensors}
    assert field(r, "general.architecture")[0] == arch
    sd = model.state_dict()
    assert torch.equal(tensors["blk.1.attn_q.weight"], sd["model.layers.1.self_attn.q_proj.weight"])
    if arch == "qwen2":
        assert torch.equal(tensors["blk.0.attn_k.bias"], sd["model.layers.0.self_attn.k_proj.bias"])
        assert "output.weight" in tensors
    else:
        assert torch.equal(tensors["blk.0.attn_q_norm.weight"], sd["model.layers.0.self_attn.q_norm.weight"])
        assert "output.weight" not in tensors
        assert field(r, "qwen3.attention.key_length")[0] == 32  # head_dim * heads != dim


def run_cli_error(capsys, *args):
    assert main(["export", "gguf", *args]) == 2
    return capsys.readouterr().err


def test_errors_are_one_line(world, tmp_path, capsys):
    out = str(tmp_path / "x.gguf")
    assert "not a model directory" in run_cli_error(capsys, "--model", str(tmp_path / "nope"), "--out", out)

    tok = world.tokenizer()
    gpt2 = CausalLM(preset("gpt2", vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    d = save_model(gpt2, tmp_path / "gpt2", tokenizer=tok)
    assert "GGUF export supports llama, mistral, qwen2 and qwen3 models, not gpt2" in run_cli_error(
        capsys, "--model", str(d), "--out", out)

    biased = tiny_model(vocab_size=tok.vocab_size, qkv_bias=True, o_bias=True)
    d = save_model(biased, tmp_path / "biased", tokenizer=tok)
    assert "qkv_bias=True" in run_cli_error(capsys, "--model", str(d), "--out", out)

    d = save_model(tiny_model(vocab_size=tok.vocab_size), tmp_path / "no_tokenizer")
    assert "no tokenizer.json" in run_cli_error(capsys, "--model", str(d), "--out", out)

    tok.save(d)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    assert "not a GPT-2 style byte-level BPE" in run_cli_error(capsys, "--model", str(d), "--out", out)

    small = tiny_model(vocab_size=300)
    d = save_model(small, tmp_path / "small", tokenizer=tok)
    assert "the tokenizer has 768 tokens but the model only 300 embeddings" in run_cli_error(
        capsys, "--model", str(d), "--out", out)
    assert not (tmp_path / "x.gguf").exists()
