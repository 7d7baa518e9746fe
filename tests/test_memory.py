"""alignlab.memory: the formulas against what autograd really keeps, against the peak memory of real training
steps on this CPU (slow), and against published figures for 7-8B LoRA/QLoRA fine-tuning. LoRA and QLoRA models
are built with alignlab.lora and alignlab.quant (through benchmarks/bench_memory.py)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from alignlab.cli import build_parser
from alignlab.errors import CheckpointError, ConfigError
from alignlab.memory import (
    KNOWN_CONFIGS,
    attention_probs,
    estimate_memory,
    load_config,
    lora_params,
    nf4_bytes_per_param,
    parse_targets,
)
from alignlab.model.config import ModelConfig, preset
from alignlab.model.transformer import CausalLM
from alignlab.objectives import linear_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def saved_bytes(model, B, T, V) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward + loss (parameters and views
    of them excluded), recorded with saved_tensors_hooks."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, V, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_cross_entropy(model(x, head=False), model.lm_head.weight, x)
    return sum(seen.values())


CASES = [  # (config, method, targets, dropout, B, T)
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2), "full", None, 0.0, 4, 128),
    (dict(vocab_size=300, dim=96, n_layers=3, n_heads=6), "full", None, 0.0, 2, 100),  # T not a multiple of 64
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2), "lora", None, 0.0, 4, 128),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4), "lora", ("q_proj", "v_proj"), 0.0, 2, 64),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4), "lora", ("o_proj", "down_proj"), 0.0, 2, 64),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4), "lora", None, 0.1, 2, 64),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4), "lora", ("q_proj", "v_proj"), 0.1, 2, 64),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4), "lora", ("o_proj", "up_proj"), 0.1, 2, 64),
    (dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, max_seq_len=2048), "full", None, 0.0, 1, 1100),  # flash
    (dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, max_seq_len=2048), "lora", None, 0.0, 1, 1100),
    (dict(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2), "qlora", None, 0.0, 2, 128),
    (dict(arch="qwen3", vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, qk_norm=True),
     "full", None, 0.0, 2, 64),
]


@pytest.mark.parametrize("cfg,method,targets,dropout,B,T", CASES)
def test_activation_formula_equals_what_autograd_keeps(cfg, method, targets, dropout, B, T):
    """The activations + loss buffers of the estimate are exactly the bytes autograd saves (fp32, CPU)."""
    torch.manual_seed(0)
    c = ModelConfig(**{"max_seq_len": 256, **cfg})
    model = CausalLM(c).train()
    if method == "qlora":
        from alignlab.quant import quantize_model

        quantize_model(model)
    if method != "full":
        bench.add_lora(model, 8, targets, dropout)
    e = estimate_memory(c, method=method, seq=T, batch=B, rank=8, lora_targets=targets or "all-linear",
                        lora_dropout=dropout)
    assert saved_bytes(model, B, T, c.vocab_size) == e["activations"] + e["loss buffers"]


def test_lora_parameter_count_matches_the_module():
    c = ModelConfig(vocab_size=256, dim=64, n_layers=3, n_heads=4, n_kv_heads=2)
    model = CausalLM(c)
    bench.add_lora(model, 4)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == lora_params(c, 4, "all-linear")
    e = estimate_memory(c, method="lora", rank=4, seq=64)
    assert e["gradients"] == 4 * n and e["optimizer states"] == 8 * n and e["LoRA adapters"] == 4 * n
    assert parse_targets("attn,down_proj", c) == ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    with pytest.raises(ConfigError, match="unknown LoRA target"):
        parse_targets("c_attn", c)


def test_building_blocks():
    assert nf4_bytes_per_param() * 8 == pytest.approx(4.127, abs=1e-3)  # QLoRA paper: 0.127 bits of scales
    assert nf4_bytes_per_param(double_quant=False) == 0.5 + 4 / 64
    assert attention_probs(256) == 256 * (256 + 64) // 2 and attention_probs(100) == 64 * 64 + 36 * 100
    c = ModelConfig(vocab_size=1000, dim=256, n_layers=4, n_heads=4)
    full = estimate_memory(c, seq=128)
    assert full["weights"] == 4 * c.num_params() == full["gradients"]
    bf16 = estimate_memory(c, seq=128, dtype="bf16")
    assert bf16["weights"] == 2 * c.num_params() and bf16["optimizer states"] == 12 * c.num_params()
    a8 = estimate_memory(c, seq=128, optimizer="adamw8bit")
    assert a8["optimizer states"] == pytest.approx(2.004 * c.num_params(), rel=1e-3)
    q = estimate_memory(c, method="qlora", seq=128)
    assert q["weights"] < full["weights"] / 3


def test_peak_logic():
    """Gradients and activations do not add up unless gradients persist (accumulation); checkpointing trades
    the per-layer activations for the block inputs; the materialised logits only count when built."""
    c = ModelConfig(vocab_size=2048, dim=128, n_layers=4, n_heads=4)
    base = estimate_memory(c, seq=512, batch=4)  # activations dominate
    fixed = base["weights"] + base["optimizer states"]
    act = base["activations"] + base["loss buffers"] + base["working memory"]
    assert base.total == pytest.approx(fixed + act)
    short = estimate_memory(c, seq=8, batch=1)  # gradients dominate
    grads_fixed = short["weights"] + short["optimizer states"] + short["gradients"]
    assert grads_fixed < short.total < grads_fixed + short["activations"]
    acc = estimate_memory(c, seq=512, batch=4, grad_accum=4)
    assert acc.total == pytest.approx(fixed + base["gradients"] + act)
    ck = estimate_memory(c, seq=512, batch=4, grad_ckpt=True)
    assert ck["activations"] < base["activations"] / 3 and ck.total < base.total
    logits = estimate_memory(c, seq=512, batch=4, loss="logits")
    assert logits["loss buffers"] > base["loss buffers"] and logits.total > base.total
    shown = [comp for comp in base.components if not comp.counted]
    assert [comp.name for comp in shown] == ["logits if materialised"]
    assert shown[0].bytes == 8 * 4 * 512 * 2048
    for bad in (dict(method="dora"), dict(dtype="fp16"), dict(seq=0), dict(loss="none")):
        with pytest.raises(ConfigError):
            estimate_memory(c, **bad)


def test_every_row_has_a_formula_and_the_table_prints_them():
    e = estimate_memory("llama-3.1-8b", method="qlora", seq=2048, batch=2, rank=8, grad_ckpt=True, dtype="bf16")
    assert all(comp.formula for comp in e.components) and e.total_formula
    table = e.table()
    for comp in e.components:
        assert comp.formula in table
    d = e.to_dict()
    assert d["total"]["bytes"] == e.total and json.dumps(d)


def test_load_config(tmp_path):
    c = load_config("llama-3.1-8b")
    assert (c.dim, c.n_layers, c.n_kv_heads, c.hidden_dim, c.vocab_size) == (4096, 32, 8, 14336, 128256)
    assert c.num_params() == 8_030_261_248  # Llama 3.1 8B
    assert load_config("llama-2-7b").num_params() == 6_738_415_616  # Llama 2 7B
    (tmp_path / "config.json").write_text(json.dumps(KNOWN_CONFIGS["llama-2-7b"]))
    assert load_config(tmp_path) == load_config(tmp_path / "config.json") == load_config("llama-2-7b")
    with pytest.raises(CheckpointError):
        load_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"model_type": "llama",')  # a user's broken file: one line naming it
    with pytest.raises(CheckpointError, match=r"config.json: invalid JSON at line 1"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="config.json: missing field 'vocab_size'"):
        load_config(tmp_path / "config.json")


def test_load_config_from_the_hub_downloads_config_json_only(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        path = tmp_path / "config.json"
        path.write_text(json.dumps(KNOWN_CONFIGS["llama-3.1-8b"]))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert load_config("meta-llama/Llama-3.1-8B") == load_config("llama-3.1-8b")
    assert asked == [("meta-llama/Llama-3.1-8B", "config.json")]


def run_cli(*argv) -> str:
    args = build_parser().parse_args(["memory", *argv])
    args.fn(args)


def test_cli_table_and_json(capsys):
    run_cli("--model", "llama-2-7b", "--method", "qlora", "--dtype", "bf16", "--grad-ckpt", "--rank", "16")
    out = capsys.readouterr().out
    for word in ("weights", "LoRA adapters", "gradients", "optimizer states", "activations", "total (peak)",
                 "0.5159 B x", "formula", "GiB"):
        assert word in out
    run_cli("--model", "llama-2-7b", "--method", "lora", "--seq", "512", "--json")
    d = json.loads(capsys.readouterr().out)
    assert d["setup"]["method"] == "lora" and d["setup"]["seq"] == 512
    assert {c["name"] for c in d["components"]} >= {"weights", "gradients", "optimizer states", "activations"}
    assert d["total"]["gb"] == pytest.approx(d["total"]["bytes"] / 1e9)


# --- the worked example in the module docstring --------------------------------------------------------

def test_worked_example_numbers():
    """The 7B numbers quoted in alignlab/memory.py's docstring."""
    kw = dict(seq=2048, batch=1, rank=16, dtype="bf16", grad_ckpt=True)
    q = estimate_memory("llama-2-7b", method="qlora", **kw)
    lora = estimate_memory("llama-2-7b", method="lora", **kw)
    full = estimate_memory("llama-2-7b", method="full", **kw)
    assert lora["weights"] / 1e9 == pytest.approx(13.5, abs=0.05)
    assert q["weights"] / 1e9 == pytest.approx(3.87, abs=0.01)
    assert q["LoRA adapters"] / 4 == 39_976_960 and q["LoRA adapters"] / 1e9 == pytest.approx(0.16, abs=0.005)
    assert q["optimizer states"] / 1e9 == pytest.approx(0.32, abs=0.005)
    assert (full["gradients"] + full["optimizer states"]) / 1e9 == pytest.approx(94.3, abs=0.05)
    nockpt = estimate_memory("llama-2-7b", method="qlora", **{**kw, "grad_ckpt": False})
    assert nockpt["activations"] / 1e9 == pytest.approx(12.2, abs=0.05)
    assert q["activations"] / 1e9 == pytest.approx(0.59, abs=0.01)
    assert q.total / 1e9 == pytest.approx(5.5, abs=0.05)
    assert lora.total / 1e9 == pytest.approx(15.0, abs=0.05)
    assert full.total / 1e9 == pytest.approx(108.2, abs=0.1)
    assert estimate_memory("llama-2-7b", method="qlora", **{**kw, "seq": 8192}).total / 1e9 == \
        pytest.approx(8.7, abs=0.05)


# --- published figures -----------------------------------------------------------------------------------

def test_torchtune_llama31_8b_qlora_and_lora_on_a_4090():
    """torchtune README (github.com/pytorch/torchtune, "Memory and training speed", README at commit 0031bfb):
    Llama 3.1 8B, 1x RTX 4090, batch size 2, packed to sequence length 2048, torch compile, peak memory per
    GPU: QLoRA 7.4 GiB, LoRA 16.2 GiB. Configs (recipes/configs/llama3_1/8B_qlora_single_device.yaml and
    8B_lora_single_device.yaml): rank 8; QLoRA on q/k/v/output + MLP, LoRA on q/v/output + MLP; activation
    checkpointing; bf16; CEWithChunkedOutputLoss (logits kept in bf16, upcast one chunk at a time).
    Stated tolerance: 10%. Our estimates are ~8% high; part of it is compile, whose partitioner recomputes
    pointwise ops instead of keeping their outputs, and pure bf16 (torchtune keeps adapters and AdamW states
    in bf16; we count fp32)."""
    kw = dict(seq=2048, batch=2, rank=8, grad_ckpt=True, dtype="bf16", loss="chunked")
    qlora = estimate_memory("llama-3.1-8b", method="qlora", lora_targets="attn,mlp", **kw)
    lora = estimate_memory("llama-3.1-8b", method="lora", lora_targets="q_proj,v_proj,o_proj,mlp", **kw)
    assert qlora.total / GiB == pytest.approx(7.4, rel=0.10)
    assert lora.total / GiB == pytest.approx(16.2, rel=0.10)
    # what QLoRA saves is the weights: 15.0 GiB of bf16 against 5.3 GiB of NF4 + bf16 embeddings and head
    assert lora["weights"] / GiB == pytest.approx(14.96, abs=0.01)
    assert qlora["weights"] / GiB == pytest.approx(5.31, abs=0.01)


def test_qlora_paper_lora_parameters_of_llama_7b():
    """QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, section 2, "Memory Requirement of
    Parameter-Efficient Finetuning"): for LLaMA-7B, LoRA weights of 0.2% of the model "take up only 26 MB",
    while "the 4-bit base model consumes 5,048 MB". The first: 0.2% of P in 16-bit. The second is quoted,
    not reproduced: we estimate 3.87 GB of NF4 weights (4.39 GB with embeddings and head upcast to fp32),
    and the paper does not say what else its measurement holds."""
    c = load_config("llama-7b")
    assert 0.002 * c.num_params() * 2 / 1e6 == pytest.approx(26, rel=0.05)
    # an adapter set of that size: rank 26 on q and v (0.20% of LLaMA-7B)
    n = lora_params(c, 26, "q_proj,v_proj")
    assert n / c.num_params() == pytest.approx(0.002, rel=0.02)
    weights = estimate_memory(c, method="qlora", dtype="bf16", seq=512)["weights"]
    assert weights / 1e9 == pytest.approx(3.87, abs=0.01) and weights < 5048e6


# --- measured on this CPU ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("size,method,grad_ckpt", bench.RUNS, ids=lambda v: v[0] if isinstance(v, tuple) else str(v))
def test_estimate_within_20_percent_of_measured_peak(size, method, grad_ckpt):
    """Peak resident memory of real training steps (a fresh process, VmHWM - baseline; see
    benchmarks/bench_memory.py) against the estimate: full fine-tuning, LoRA and QLoRA at three sizes, and
    with gradient checkpointing."""
    name, config, batch, seq = size
    measured = bench.measure(config, method, batch, seq, grad_ckpt=grad_ckpt, profile=False)["rss_peak"]
    est = bench.estimate(config, method, batch, seq, grad_ckpt=grad_ckpt)
    assert est == pytest.approx(measured, rel=0.20), \
        f"{name} {method} ckpt={grad_ckpt}: estimate {est / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB"


def test_gpt2_family_estimates():
    """Plain (GELU) MLP, LayerNorm, learned positions, tied embeddings: the estimate still matches autograd."""
    c = preset("gpt2", vocab_size=300, dim=64, n_layers=2, n_heads=4, max_seq_len=128)
    model = CausalLM(c).train()
    e = estimate_memory(c, seq=64, batch=2)
    assert saved_bytes(model, 2, 64, c.vocab_size) == e["activations"] + e["loss buffers"]
