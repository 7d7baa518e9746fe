"""Parity with transformers: the same checkpoint gives the same logits; export reloads in transformers."""

import json

import pytest
import torch

from alignlab.model import CausalLM, preset
from alignlab.model.hf import CheckpointError, load_model, save_model

from .hf_models import VOCAB, make_hf_model, require

transformers = require("transformers")
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gpt2"]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    arch = request.param
    hf = make_hf_model(arch)
    d = tmp_path_factory.mktemp(arch)
    hf.save_pretrained(d)
    return arch, hf, load_model(d), d


def inputs(B=2, T=24, seed=0):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_logits_match_transformers(pair):
    arch, hf, ours, _ = pair
    x = inputs()
    diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4, f"{arch}: max |logits diff| = {diff}"


@torch.no_grad()
def test_logits_match_with_left_padding(pair):
    arch, hf, ours, _ = pair
    x = inputs()
    mask = torch.ones_like(x)
    mask[1, :7] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = hf(x, attention_mask=mask, position_ids=pos).logits
    out = ours(x, attention_mask=mask)
    diff = (ref - out).abs()[mask.bool()].max().item()
    assert diff <= 1e-4, f"{arch}: padded logits differ by {diff}"


@torch.no_grad()
@pytest.mark.parametrize("impl", ["naive", "tiled"])
def test_attention_forms_give_the_same_model(pair, impl):
    arch, _, ours, d = pair
    other = load_model(d, attn_impl=impl)
    x = inputs()
    assert (ours(x) - other(x)).abs().max() <= 1e-5


@torch.no_grad()
def test_kv_cache_matches_full_forward(pair):
    _, _, ours, _ = pair
    x = inputs(T=20)
    full = ours(x)
    cache = ours.new_cache(2, 32)
    steps = [ours(x[:, :12], cache=cache)] + [ours(x[:, t:t + 1], cache=cache) for t in range(12, 20)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("impl", ["naive", "tiled", "sdpa"])
def test_rows_at_different_cache_lengths_decode_together(pair, impl, monkeypatch):
    """Rows whose caches hold 7 (2 of them left padding), 12 and 9 slots decode in one batch, one token and then
    three at once, each at its own slots and positions: every row's logits are those of the row run alone,
    without a cache. The cache starts NaN-filled, so a slot read before it is written would show."""
    _, _, _, d = pair
    model = load_model(d, attn_impl=impl)
    x = inputs(B=3, T=20)
    real = [5, 12, 9]  # each row's prompt: its first real[b] tokens; row 0 left-padded by 2
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    cache = model.new_cache(3, 32)
    monkeypatch.undo()
    model(torch.cat([torch.zeros(1, 2, dtype=torch.long), x[:1, :5]], 1),
          attention_mask=torch.tensor([[0, 0] + [1] * 5]), cache=cache.rows([0]))
    model(x[1:2, :12], cache=cache.rows([1]))
    model(x[2:3, :9], cache=cache.rows([2]))
    assert cache.lengths == [7, 12, 9]
    steps = []
    for cols in ([0], [1, 2, 3]):  # the next tokens of every row
        new = x.gather(1, torch.tensor(real)[:, None] + torch.tensor(cols))
        mask = torch.ones(3, max(cache.lengths) + len(cols), dtype=torch.long)
        mask[0, :2] = 0
        steps.append(model(new, attention_mask=mask, cache=cache))
    got = torch.cat(steps, dim=1)  # [3, 4, vocab]
    full = model(x)
    for b, n in enumerate(real):
        assert (got[b] - full[b, n:n + 4]).abs().max() <= 1e-5, b


@torch.no_grad()
def test_export_reloads_in_transformers(pair, tmp_path):
    arch, _, ours, _ = pair
    save_model(ours, tmp_path)
    cls = transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.AutoModelForCausalLM
    reloaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = inputs()
    assert (reloaded.float().eval()(x).logits - ours(x)).abs().max() <= 1e-4


@torch.no_grad()
def test_native_model_roundtrips_through_transformers(tmp_path):
    """A model alignlab built (not one it loaded) exports with tied embeddings and reloads."""
    torch.manual_seed(0)
    ours = CausalLM(preset("qwen3", vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                           tie_embeddings=True, max_seq_len=64)).eval()
    save_model(ours, tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = inputs()
    assert (ref(x).logits - ours(x)).abs().max() <= 1e-4
    assert (load_model(tmp_path)(x) - ours(x)).abs().max() == 0


@torch.no_grad()
def test_llama3_rope_scaling_both_spellings(tmp_path):
    # head_dim 16, theta 5e5: wavelengths 6.3, 32.4, 167, ...; with L = 64 the band [L/4, L] holds 32.4, so
    # the smooth interpolation, not just the two plain cases, is exercised
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = make_hf_model("llama", rope_parameters={"rope_theta": 500000.0, **scaling})
    hf.save_pretrained(tmp_path)
    x = inputs(T=100)
    new = load_model(tmp_path)
    assert new.config.rope_scaling["rope_type"] == "llama3" and new.config.rope_theta == 500000.0
    assert (hf(x).logits - new(x)).abs().max() <= 1e-4
    # the classic spelling: rope_theta and rope_scaling at the top level
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=500000.0, rope_scaling=scaling, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = load_model(tmp_path)
    assert old.config.rope_scaling == new.config.rope_scaling
    assert (old(x) - new(x)).abs().max() == 0


def test_sharded_checkpoint(tmp_path):
    hf = make_hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    x = inputs()
    with torch.no_grad():
        assert (hf(x).logits - load_model(tmp_path)(x)).abs().max() <= 1e-4


def test_param_count_and_flops():
    c = preset("llama", vocab_size=8192, dim=256, n_layers=4, n_heads=4, n_kv_heads=2)
    m = CausalLM(c)
    assert c.num_params() == m.num_params()
    # forward FLOPs/token ~ 2 * matmul params + attention; training is 3x
    f = c.flops_per_token(128)
    assert 2 * (m.num_params() - 8192 * 256) < f < 2 * m.num_params() + 1e6
    assert c.flops_per_token(128, training=True) == 3 * f


# --- bad input ---------------------------------------------------------------------------------------

def saved(tmp_path, arch="llama"):
    make_hf_model(arch).save_pretrained(tmp_path)
    return tmp_path


def test_corrupt_safetensors(tmp_path):
    d = saved(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors file"):
        load_model(d)


def test_unknown_model_type(tmp_path):
    d = saved(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match=r"config\.json: unsupported model_type 'mamba'"):
        load_model(d)


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    d = saved(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape "
                                              r"\[\d+, \d+\], config\.json implies \[\d+, \d+\]"):
        load_model(d)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8,
                                                      "hidden_size": 8, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "intermediate_size": 8}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model(tmp_path / "nope")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hub download failed"):
        load_model("alignlab-test/does-not-exist")


@torch.no_grad()
@pytest.mark.parametrize("arch,overrides", [
    ("gpt2", dict(tie_embeddings=False)),  # an untied GPT-2 keeps its own head
    ("llama", dict(act="gelu_tanh")),  # activations are spelled the way transformers reads them
    ("mistral", dict(sliding_window=8)),
    ("qwen2", dict(sliding_window=8)),
])
def test_export_variants_reload_in_transformers(tmp_path, arch, overrides):
    torch.manual_seed(0)
    ours = CausalLM(preset(arch, vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, max_seq_len=64,
                           **overrides)).eval()
    save_model(ours, tmp_path)
    cls = transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.AutoModelForCausalLM
    ref, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = inputs(T=30)
    assert (ref.eval()(x).logits - ours(x)).abs().max() <= 1e-4
    assert (load_model(tmp_path)(x) - ours(x)).abs().max() == 0


def test_config_that_no_checkpoint_can_express_is_refused(tmp_path):
    ours = CausalLM(preset("llama", vocab_size=VOCAB, dim=64, n_layers=1, n_heads=4, qkv_bias=True))
    with pytest.raises(ValueError, match="cannot express qkv_bias=True, o_bias=False"):
        save_model(ours, tmp_path)


def test_qwen_mixed_sliding_window_layers_are_refused(tmp_path):
    d = saved(tmp_path, "qwen2")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "sliding_attention"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mix sliding-window and full attention"):
        load_model(d)


def test_qwen3_default_head_dim(tmp_path):
    d = saved(tmp_path, "qwen3")
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("head_dim")  # transformers then uses 128, not hidden_size / heads
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"k_norm.weight has shape \[32\], config.json implies \[128\]"):
        load_model(d)
