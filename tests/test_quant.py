"""Post-training quantisation: the integer grid, LLM.int8(), GPTQ, AWQ, whole models, HF-format checkpoints and
`alignlab quantize`."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.model.config import preset
from alignlab.model.transformer import CausalLM
from alignlab.quant import Int8Linear, Linear4bit, QuantConfig, QuantLinear, load_quantized, quantize_post_training
from alignlab.quant.awq import fold, search_scale
from alignlab.quant.checkpoint import AWQ_ORDER, pack_int32, save_quantized, unpack_int32
from alignlab.quant.gptq import gptq, hessian, output_error
from alignlab.quant.int8 import absmax_rows, llm_int8_matmul
from alignlab.quant.intq import dequantize_groups, pack4, rtn, unpack4


def correlated_inputs(n=2048, d=256, rank=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)


def test_rtn_grid_by_hand():
    w = torch.tensor([[-1.0, 0.0, 0.5, 1.0]])
    q, s, z, g = rtn(w, bits=2, group_size=-1, sym=False)  # lo -1, hi 1: s = 2/3, z = round(1.5) = 2
    assert torch.allclose(s, torch.tensor([[2 / 3]])) and z.item() == 2
    assert q.tolist() == [[0, 2, 3, 3]]  # 0.5 / (2/3) = 0.75 -> 1 (+2 = 3); 1.0 -> 1.5 -> 2 (+2 = 4, clamped to 3)
    assert g.tolist() == [0, 0, 0, 0]
    q, s, z, _ = rtn(w, bits=4, group_size=-1, sym=True)  # s = 2 * 1 / 15, z = 8
    assert z.item() == 8 and torch.allclose(dequantize_groups(q, s, z, _), w, atol=s.item() / 2 + 1e-6)


def test_rtn_error_is_at_most_half_a_step_per_group():
    w = torch.randn(16, 256)
    q, s, z, g = rtn(w, bits=4, group_size=64, sym=False)
    err = (dequantize_groups(q, s, z, g) - w).abs()
    step = s[:, g.long()]
    assert (err <= step / 2 + 1e-5).all() and s.shape == (16, 4)


def test_packing_round_trips():
    q = torch.randint(0, 16, (6, 64), dtype=torch.uint8)
    assert torch.equal(unpack4(pack4(q)), q)
    for bits in (4, 8):
        c = torch.randint(0, 2**bits, (24, 64), dtype=torch.uint8)
        for dim in (0, 1):
            assert torch.equal(unpack_int32(pack_int32(c, bits, dim), bits, dim), c)
    c = torch.randint(0, 16, (3, 16), dtype=torch.uint8)
    assert torch.equal(unpack_int32(pack_int32(c, 4, 1, AWQ_ORDER), 4, 1, AWQ_ORDER), c)
    # AutoGPTQ's symmetric 4-bit zero 8 is stored as 8 - 1 = 7 in every nibble: 0x77777777
    assert pack_int32(torch.full((1, 8), 7), 4, 1).item() == 0x77777777
    # the word's first code sits in the lowest bits; AWQ's order puts code 1 of the 8 in nibble 4
    assert pack_int32(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]]), 4, 1).item() == 1
    assert pack_int32(torch.tensor([[0, 1, 0, 0, 0, 0, 0, 0]]), 4, 1, AWQ_ORDER).item() == 1 << 16


def test_gptq_equals_rtn_when_inputs_are_uncorrelated():
    """With H diagonal no column's error can be moved onto another: GPTQ must round exactly as RTN does."""
    w = torch.randn(32, 128)
    H = torch.diag(torch.rand(128) + 0.5).double()
    got = gptq(w, H, bits=4, group_size=64)
    want = rtn(w, bits=4, group_size=64)
    assert torch.equal(got[0], want[0]) and torch.allclose(got[1], want[1])


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(act_order):
    w = torch.randn(64, 256)
    H = hessian(correlated_inputs())
    q, s, z, g = gptq(w, H, bits=4, group_size=128, act_order=act_order)
    e_gptq = output_error(w, dequantize_groups(q, s, z, g), H)
    e_rtn = output_error(w, dequantize_groups(*rtn(w, 4, 128)), H)
    assert e_gptq < 0.2 * e_rtn
    assert sorted(torch.bincount(g.long()).tolist()) == [128, 128]  # every group has 128 columns
    if not act_order:
        assert torch.equal(g.long(), torch.arange(256) // 128)


def test_llm_int8_decomposition_rescues_outlier_features():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.05
    x = torch.randn(32, 128)
    x[:, 7] = 60.0  # one outlier feature, as in large models' hidden states
    w_i8, c = absmax_rows(w)
    exact = x @ (w_i8.float() * c[:, None] / 127).t()  # what the int8 weight stands for
    plain = (llm_int8_matmul(x, w_i8, c, threshold=0.0) - exact).abs().mean()
    mixed = (llm_int8_matmul(x, w_i8, c, threshold=6.0) - exact).abs().mean()
    assert mixed < plain / 10
    layer = Int8Linear.from_linear(torch.nn.Linear(128, 64))
    y = layer(torch.randn(20, 128))
    assert y.shape == (20, 64) and layer.weight.dtype == torch.int8


def test_awq_fold_keeps_the_function_and_search_never_loses_to_rtn():
    torch.manual_seed(0)
    norm_w, lin = torch.rand(128) + 0.5, torch.nn.Linear(128, 64, bias=False)
    x = torch.randn(300, 128)
    x[:, :4] *= 20  # salient channels
    before = (x * norm_w) @ lin.weight.t()
    s, first, best = search_scale(x * norm_w, [lin.weight.detach()], bits=4, group_size=64)
    assert best <= first
    nw, w = norm_w.clone(), lin.weight.detach().clone()
    fold(s, nw, None, [w])
    assert torch.allclose((x * nw) @ w.t(), before, atol=1e-4)


def tiny(seed=0, dim=64, vocab=96):
    torch.manual_seed(seed)
    return CausalLM(preset("llama", vocab_size=vocab, dim=dim, n_layers=2, n_heads=2, hidden_dim=128,
                           max_seq_len=64))


def batches(vocab=96, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4, 32), generator=g) for _ in range(n)]


@pytest.mark.parametrize("method,bits", [("int8", 8), ("nf4", 4), ("rtn", 4), ("rtn", 8), ("gptq", 4),
                                         ("gptq", 8), ("awq", 4)])
def test_quantised_checkpoint_loads_back_to_the_same_logits(tmp_path, method, bits):
    model = tiny().requires_grad_(False)  # inference: Int8Linear takes its int8 product
    x = batches(n=1, seed=5)[0]
    ref = model(x)
    cfg = QuantConfig(method, bits=bits, group_size=64, act_order=method == "gptq")
    summary = quantize_post_training(model, cfg, batches())
    assert summary["layers"] == 14
    kinds = {type(m) for m in model.model.layers.modules()} & {Int8Linear, Linear4bit, QuantLinear}
    assert len(kinds) == 1 and type(model.lm_head) is not QuantLinear
    got = model(x)
    assert (got - ref).abs().max() < 0.5 and not torch.equal(got, ref)
    save_quantized(model, tmp_path / "q", cfg)
    hf = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert hf["quant_method"] == {"int8": "bitsandbytes", "nf4": "bitsandbytes", "awq": "awq"}.get(method, "gptq")
    back = load_quantized(tmp_path / "q")
    torch.testing.assert_close(back(x), got, atol=1e-5, rtol=1e-5)


def test_gptq_model_error_is_below_rtn_on_every_layer():
    model = tiny()
    summary = quantize_post_training(model, QuantConfig("gptq", bits=4, group_size=64), batches(n=8))
    errs = summary["errors"]
    assert len(errs) == 14 and all(e["gptq"] <= e["rtn"] * 1.0001 for e in errs.values())
    assert sum(e["gptq"] for e in errs.values()) < 0.9 * sum(e["rtn"] for e in errs.values())


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="method"):
        QuantConfig("fp8")
    with pytest.raises(ValueError, match="awq is 4-bit"):
        QuantConfig("awq", bits=8)
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_post_training(tiny(), QuantConfig("rtn", group_size=48))
    with pytest.raises(ValueError, match="calibration"):
        quantize_post_training(tiny(), QuantConfig("gptq", group_size=64))


def test_quantize_cli(tmp_path, base, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(f"{i} + {i + 1} = {2 * i + 1}. The sum of {i} and {i + 1}." for i in range(400)))
    out = tmp_path / "gptq"
    assert main(["quantize", "--model", str(base), "--method", "gptq", "--group-size", "32", "--out", str(out),
                 "--calibration", str(text), "--n-samples", "16", "--seq-len", "32", "--eval"]) == 0
    printed = capsys.readouterr().out
    assert "round-to-nearest" in printed and "held-out perplexity" in printed
    assert main(["generate", "--model", str(out), "--prompt", "1 + 2 =", "--max-new-tokens", "4"]) == 0
    from alignlab.errors import CheckpointError
    from alignlab.eval.backends import LocalModel
    from alignlab.model.hf import load_model

    assert type(LocalModel(str(out)).model.model.layers[0].mlp.up_proj) is QuantLinear
    with pytest.raises(CheckpointError, match="quantised checkpoint"):
        load_model(out)
    assert main(["quantize", "--model", str(base), "--method", "rtn", "--group-size", "48",
                 "--out", str(tmp_path / "x")]) == 2
    assert "group_size" in capsys.readouterr().err
