"""NF4 quantisation and the 4-bit Linear (QLoRA, arXiv:2305.14314): codebooks, layout, errors, memory, model."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alignlab.infer import Engine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.model.linear import Linear
from alignlab.quant import (
    DYNAMIC,
    NF4,
    Linear4bit,
    dequantize_nf4,
    dynamic_map,
    nf4_codebook,
    quant_stats,
    quantize_model,
    quantize_nf4,
)
from alignlab.quant.nf4 import NF4_OFFSET, nearest_code

# The table bitsandbytes hard-codes (functional.get_4bit_type("nf4"), backends/utils.py _NF4_QUANT_TABLE);
# the QLoRA paper's appendix lists the same values to 7 digits.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


# --- codebooks ------------------------------------------------------------------------------------------

def test_nf4_codebook_matches_published_table():
    built = nf4_codebook()
    table = torch.tensor(PUBLISHED_NF4)
    assert built.dtype == torch.float32 and built.shape == (16,)
    assert torch.allclose(built.double(), table.double(), atol=1e-6, rtol=0)
    assert torch.equal(built, table)  # the construction reproduces the table bit for bit
    assert torch.equal(NF4, table)


def test_nf4_codebook_is_asymmetric_normal_quantiles():
    # 7 negative levels, an exact zero, 8 positive levels, normalised to [-1, 1]
    assert NF4[7] == 0 and (NF4[:7] < 0).all() and (NF4[8:] > 0).all()
    assert NF4[0] == -1 and NF4[-1] == 1 and (NF4.diff() > 0).all()
    # undo the normalisation: Phi(level * Phi^-1(delta)) are evenly spaced probabilities from 0.5 to delta
    z = NF4.double() * torch.special.ndtri(torch.tensor(NF4_OFFSET, dtype=torch.float64))
    p = torch.special.ndtr(z)
    assert torch.allclose(p[7:], torch.linspace(0.5, NF4_OFFSET, 9, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(1 - p[:8], torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64), atol=1e-6)


def test_dynamic_map():
    code = dynamic_map()
    assert torch.equal(code, DYNAMIC)
    assert code.shape == (256,) and (code.diff() > 0).all()  # sorted, 256 distinct values
    assert code[-1] == 1.0 and (code == 0).sum() == 1 and code.min() > -1
    # the most negative value is the midpoint of the top decade's last bin
    assert code.min() == -code[-2] and code.min().item() == pytest.approx(-(1 - 0.9 / 128))
    # decade 10^-e holds 2^(6-e) evenly spaced levels per sign
    pos = code[code > 0][:-1]  # without the 1.0
    for e in range(7):
        lev = pos[(pos > 0.1 * 10.0 ** -e) & (pos < 10.0 ** -e)]
        assert lev.numel() == 2 ** (6 - e)
        if lev.numel() > 1:
            assert torch.allclose(lev.diff(), torch.full_like(lev.diff(), 0.9 / 2 ** (6 - e) * 10.0 ** -e), rtol=1e-4)


def test_nearest_code_is_argmin():
    x = torch.rand(10_000) * 2.2 - 1.1
    brute = (x[:, None] - NF4[None]).abs().argmin(dim=1)
    assert torch.equal(nearest_code(x, NF4), brute)
    y = torch.rand(10_000) * 2 - 1
    assert torch.equal(nearest_code(y, DYNAMIC), (y[:, None] - DYNAMIC[None]).abs().argmin(dim=1))


# --- layout ---------------------------------------------------------------------------------------------

def test_layout_hand_packed():
    # block of 4, no double quant: 6 values -> 2 blocks (the second padded with two zeros)
    w = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.2, -0.2]])
    q = quantize_nf4(w, block=4, double_quant=False)
    # block 0 = [1, -1, 0, 0.5], absmax 1: codes 15, 0, 7, 12 (0.5 is nearer 0.4407 than 0.5626)
    # block 1 = [0.2, -0.2, 0, 0], absmax 0.2: codes 15, 0, 7, 7
    # byte j = code[2j] << 4 | code[2j + 1]
    assert q.data.tolist() == [0xF0, 0x7C, 0xF0, 0x77]
    assert q.data.dtype == torch.uint8 and q.absmax.dtype == torch.float32
    assert q.absmax.tolist() == pytest.approx([1.0, 0.2])
    assert q.codes().tolist() == [15, 0, 7, 12, 15, 0, 7, 7]
    assert q.shape == (2, 3) and q.block == 4 and not q.double_quant
    expected = torch.tensor([[1.0, -1.0, 0.0], [PUBLISHED_NF4[12], 0.2, -0.2]])
    assert torch.allclose(dequantize_nf4(q), expected)


def test_layout_double_quant_state():
    torch.manual_seed(0)
    w = torch.randn(3 * 256 * 64 + 10)  # 769 blocks of 64 (the last one partial) -> 4 scales of 256 constants
    q = quantize_nf4(w)
    assert q.double_quant and q.block == 64 and q.dq_block == 256
    assert q.data.shape == (769 * 32,) and q.absmax.shape == (769,) and q.absmax.dtype == torch.uint8
    assert q.absmax_scale.shape == (4,) and q.absmax_offset.shape == ()
    # decoded constants: DYNAMIC[q] * scale[b // 256] + mean, close to the exact absmax
    exact = quantize_nf4(w, double_quant=False).absmax
    assert q.absmax_offset.item() == pytest.approx(exact.mean().item(), rel=1e-6)
    decoded = DYNAMIC[q.absmax.long()] * q.absmax_scale.repeat_interleave(256)[:769] + q.absmax_offset
    assert torch.equal(decoded, q.block_absmax())
    assert ((decoded - exact).abs() / exact).max() < 0.01


@pytest.mark.parametrize("shape", [(5,), (3, 5, 7), (100, 33), (64, 64)])
def test_padding_and_shape(shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    for dq in (False, True):
        q = quantize_nf4(w, double_quant=dq)
        n_blocks = -(-w.numel() // 64)
        assert q.data.numel() == n_blocks * 32 and q.absmax.numel() == n_blocks
        assert (q.codes()[w.numel():] == 7).all()  # the padding is stored as the exact zero
        d = dequantize_nf4(q)
        assert d.shape == w.shape and d.dtype == torch.float32
        assert (d - w).abs().max() < 0.15 * w.abs().max()


def test_zeros_stay_exact():
    w = torch.zeros(3, 100)
    w[1, 10:20] = torch.linspace(-1, 1, 10)
    for dq in (False, True):
        d = dequantize_nf4(quantize_nf4(w, double_quant=dq))
        assert torch.equal(d[w == 0], torch.zeros(int((w == 0).sum())))
    assert torch.equal(dequantize_nf4(quantize_nf4(torch.zeros(300))), torch.zeros(300))


def test_bad_inputs():
    with pytest.raises(TypeError):
        quantize_nf4(torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError):
        quantize_nf4(torch.ones(8), block=3)


# --- errors and memory ----------------------------------------------------------------------------------

def test_gaussian_round_trip_error():
    torch.manual_seed(0)
    std = 0.02
    w = torch.randn(256, 1024) * std
    plain, dq = quantize_nf4(w, double_quant=False), quantize_nf4(w)
    for q in (plain, dq):
        err = dequantize_nf4(q) - w
        rel_mae = err.abs().mean().item() / std  # measured 0.0728 for both
        assert 0.06 < rel_mae < 0.08
        assert err.norm() / w.norm() < 0.1  # measured 0.092
    # without double quant, every error is at most half the widest NF4 gap (-1 -> -0.6962) times the block absmax
    err = (dequantize_nf4(plain) - w).abs().view(-1, 64)
    assert (err <= NF4.diff().max() / 2 * plain.absmax[:, None] + 1e-7).all()
    # double quant costs almost nothing in accuracy
    mae = [(dequantize_nf4(q) - w).abs().mean().item() for q in (plain, dq)]
    assert mae[1] < 1.01 * mae[0]


def test_bytes_per_param():
    lin = nn.Linear(1024, 1024, bias=False)
    n = 1024 * 1024
    dq = Linear4bit.from_linear(lin)
    plain = Linear4bit.from_linear(lin, double_quant=False)
    # packed codes + uint8 absmax + fp32 scale per 256 constants + the fp32 mean
    assert dq.nbytes() == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4
    assert dq.bytes_per_param() <= 0.57
    assert dq.bytes_per_param() == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), abs=1e-5)  # 0.51587
    assert plain.bytes_per_param() == 0.5 + 4 / 64  # 0.5625 exactly
    small = Linear4bit.from_linear(nn.Linear(64, 64))  # one scale block and the mean still fit under 0.57
    assert small.bytes_per_param() <= 0.57


# --- Linear4bit -----------------------------------------------------------------------------------------

def test_linear4bit_forward_backward():
    torch.manual_seed(0)
    lin = Linear(96, 40, bias=True)  # alignlab's Linear is an nn.Linear
    layer = Linear4bit.from_linear(lin)
    assert (layer.in_features, layer.out_features) == (96, 40)
    assert [n for n, _ in layer.named_parameters()] == ["bias"] and layer.bias.dtype == torch.float32
    assert all(not b.requires_grad for b in layer.buffers())
    w = layer.dequantize()
    assert w.shape == (40, 96) and w.dtype == torch.float32
    assert torch.equal(w, dequantize_nf4(quantize_nf4(lin.weight)))

    x = torch.randn(2, 5, 96, requires_grad=True)
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref, w, layer.bias.detach())
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert torch.allclose(layer.bias.grad, g.sum((0, 1)), atol=1e-5)

    with torch.inference_mode():
        xb = torch.randn(3, 96, dtype=torch.bfloat16)
        assert layer(xb).dtype == torch.bfloat16


def test_linear4bit_state_dict_round_trip():
    torch.manual_seed(0)
    for dq in (True, False):
        layer = Linear4bit.from_linear(nn.Linear(70, 30, bias=False), double_quant=dq)
        fresh = Linear4bit(70, 30, bias=False, double_quant=dq)
        fresh.load_state_dict(layer.state_dict())
        assert torch.equal(fresh.dequantize(), layer.dequantize())


# --- a quantised model ----------------------------------------------------------------------------------

def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = preset("llama", vocab_size=100, dim=64, n_layers=2, n_heads=4, max_seq_len=64, **kw)
    return CausalLM(cfg).eval()


def test_quantize_model_logits_and_generation():
    model = tiny_model()
    qmodel = quantize_model(copy.deepcopy(model))
    layers = [m for m in qmodel.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert type(qmodel.lm_head) is Linear and isinstance(qmodel.model.embed_tokens, nn.Embedding)
    stats = quant_stats(qmodel)
    assert stats["n_linear4bit"] == 14 and stats["params_4bit"] == 2 * (4 * 64 * 64 + 3 * 64 * 192)
    assert stats["params_4bit"] + stats["params_float"] == model.num_params()
    assert stats["bytes_fp32"] == 4 * model.num_params()
    assert stats["bytes_per_param_4bit"] < 0.52 and stats["bytes_total"] < 0.25 * stats["bytes_fp32"]

    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(ids), qmodel(ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.12  # measured 0.064 on this random-init model (weights ~N(0, 0.02^2))

    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    (completion,) = Engine(qmodel).generate([[1, 2, 3]], params)
    assert len(completion.token_ids) == 8 and all(0 <= t < 100 for t in completion.token_ids)


def test_quantize_model_skips_tied_head_and_names():
    model = tiny_model(tie_embeddings=True)
    quantize_model(model, skip=())  # the head shares the embedding matrix, so it stays as it is
    assert type(model.lm_head) is Linear and model.lm_head.weight is model.model.embed_tokens.weight
    model = quantize_model(tiny_model(), skip=("lm_head", "mlp", "layers.0.self_attn.q_proj"))
    assert type(model.model.layers[0].mlp.up_proj) is Linear
    assert type(model.model.layers[0].self_attn.q_proj) is Linear
    assert isinstance(model.model.layers[1].self_attn.q_proj, Linear4bit)
    # LoRA's adapter matrices stay in float; the base they wrap is quantised
    wrapper = nn.Module()
    wrapper.base, wrapper.lora_A, wrapper.lora_B = nn.Linear(64, 64), nn.Linear(64, 4), nn.Linear(4, 64)
    quantize_model(wrapper)
    assert isinstance(wrapper.base, Linear4bit) and type(wrapper.lora_A) is type(wrapper.lora_B) is nn.Linear
