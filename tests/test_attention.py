"""The three attention forms (naive, tiled online-softmax, SDPA) compute the same thing; so do the training
paths with hand-written backwards (attention, RoPE, RMSNorm) and their formulas."""

import pytest
import torch

from alignlab.model import attention
from alignlab.model.attention import ATTENTION, causal_attention_train, naive_attention, tiled_attention
from alignlab.model.rope import apply_rope, rotate_half
from alignlab.model.transformer import RMSNorm

CASES = [  # (Hq, Hkv, Tq, Tk, q_offset)
    (4, 4, 37, 37, 0),  # causal prefill, multi-head
    (8, 2, 37, 37, 0),  # grouped-query attention
    (4, 2, 1, 50, 49),  # one-token decode with a KV-cache offset
    (4, 2, 7, 90, 83),  # chunked prefill / speculative block: bottom-right aligned
    (4, 1, 130, 130, 0),  # several tiles in both directions, multi-query
]


def qkv(B, Hq, Hkv, Tq, Tk, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, Tq, d, generator=g), torch.randn(B, Hkv, Tk, d, generator=g),
            torch.randn(B, Hkv, Tk, d, generator=g))


@pytest.mark.parametrize("Hq,Hkv,Tq,Tk,off", CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_three_forms_agree(Hq, Hkv, Tq, Tk, off, padded):
    q, k, v = qkv(3, Hq, Hkv, Tq, Tk)
    key_valid = None
    if padded:  # left padding of 0, 5 and 11 slots
        key_valid = torch.ones(3, Tk, dtype=torch.bool)
        key_valid[1, :5] = False
        key_valid[2, :11] = False
    outs = {name: fn(q, k, v, off, key_valid, None) for name, fn in ATTENTION.items()}
    # padded query rows are ignored by the model; compare the rows of real tokens
    rows = torch.ones(3, Tq, dtype=torch.bool) if key_valid is None else key_valid[:, off:off + Tq]
    for name in ("tiled", "sdpa"):
        diff = (outs[name] - outs["naive"]).abs().amax(dim=(1, 3))[rows].max()
        assert diff <= 1e-5, f"{name} differs from naive by {diff}"


def test_sliding_window_agrees():
    q, k, v = qkv(2, 4, 2, 70, 70)
    a = naive_attention(q, k, v, 0, None, 16)
    for name in ("tiled", "sdpa"):
        assert (ATTENTION[name](q, k, v, 0, None, 16) - a).abs().max() <= 1e-5


def test_naive_matches_the_formula_by_hand():
    q, k, v = qkv(1, 1, 1, 3, 3, d=4)
    s = (q[0, 0] @ k[0, 0].T) / 2.0
    s = s.masked_fill(torch.triu(torch.ones(3, 3, dtype=torch.bool), 1), float("-inf"))
    assert torch.allclose(naive_attention(q, k, v)[0, 0], torch.softmax(s, -1) @ v[0, 0], atol=1e-6)


def test_tiled_never_builds_the_full_score_matrix(monkeypatch):
    """Every matmul inside tiled attention has at most `block` key columns."""
    q, k, v = qkv(1, 2, 2, 200, 200)
    seen = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    tiled_attention(q, k, v, block=32)
    assert seen and all(s[-2] <= 32 and s[-1] <= 32 for s in seen), max(seen)


@pytest.mark.parametrize("Hq,Hkv,T,block", [(4, 4, 37, 16), (8, 2, 130, 64), (4, 1, 64, 64), (2, 2, 5, 64)])
def test_training_path_matches_naive_in_value_and_gradients(Hq, Hkv, T, block):
    """sdpa's CPU training path (causal_attention_train, hand-written backward) against the formula."""
    q, k, v = (t.requires_grad_() for t in qkv(2, Hq, Hkv, T, T))
    dout = torch.randn(2, Hq, T, 16, generator=torch.Generator().manual_seed(1))
    want = naive_attention(q, k, v)
    want_grads = torch.autograd.grad(want, (q, k, v), dout)
    for got in (causal_attention_train(q, k, v, block=block), ATTENTION["sdpa"](q, k, v)):
        assert (got - want).abs().max() <= 1e-5
        for a, b in zip(torch.autograd.grad(got, (q, k, v), dout), want_grads):
            assert (a - b).abs().max() <= 1e-5


def test_training_path_is_taken_only_when_it_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "causal_attention_train", lambda *a: calls.append(1) or naive_attention(*a))
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 2, 20, 20))
    attention.sdpa_attention(q, k, v)
    assert calls == [1]
    with torch.no_grad():  # inference: torch's kernel
        attention.sdpa_attention(q, k, v)
    attention.sdpa_attention(q, k, v, 0, torch.ones(1, 20, dtype=torch.bool).index_fill_(1, torch.tensor([0]), False))
    monkeypatch.setattr(attention, "TRAIN_ATTENTION_MAX_LEN", 16)  # long sequences: O(T) memory
    attention.sdpa_attention(q, k, v)
    assert calls == [1]


def test_rope_and_rmsnorm_training_paths_match_autograd_of_the_formula():
    """RoPE and RMSNorm have hand-written backwards in training; check them against the formulas."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 3, 16, generator=g).transpose(1, 2).requires_grad_()  # [B, H, T, d], strided
    angles = torch.randn(2, 5, 8, generator=g)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    grad = torch.randn(2, 3, 5, 16, generator=g)
    want = x * cos[:, None] + rotate_half(x) * sin[:, None]
    got = apply_rope(x, cos, sin)
    assert (got - want).abs().max() <= 1e-6
    assert (torch.autograd.grad(got, x, grad)[0] - torch.autograd.grad(want, x, grad)[0]).abs().max() <= 1e-6

    norm = RMSNorm(16, eps=1e-5)
    norm.weight.data = torch.randn(16, generator=g)
    want = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    got = norm(x)
    assert (got - want).abs().max() <= 1e-5
    params = (x, norm.weight)
    for a, b in zip(torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad)):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("Tq", [1, 5])
@pytest.mark.parametrize("window", [None, 6])
def test_rows_at_different_offsets_match_each_row_alone(Hq, Hkv, Tq, window):
    """Per-row offsets [B] (rows of a batch holding different cache lengths): each form gives every row what it
    gives that row alone, with one int offset and only the keys up to its last query. A row's slots past its
    last query hold other values (stale, finite) that must not count."""
    offsets = torch.tensor([3, 100, 17, 0])
    Tk = int(offsets.max()) + Tq
    q, k, v = qkv(4, Hq, Hkv, Tq, Tk)
    for b, off in enumerate(offsets.tolist()):
        k[b, :, off + Tq:], v[b, :, off + Tq:] = 1e4, -1e4
    key_valid = torch.ones(4, Tk, dtype=torch.bool)
    key_valid[1, :5] = False  # left padding in row 1
    for name, fn in ATTENTION.items():
        out = fn(q, k, v, offsets, key_valid, window)
        for b, off in enumerate(offsets.tolist()):
            end = off + Tq
            alone = naive_attention(q[b:b + 1], k[b:b + 1, :, :end], v[b:b + 1, :, :end], off,
                                    key_valid[b:b + 1, :end], window)
            assert (out[b:b + 1] - alone).abs().max() <= 1e-5, (name, b)
