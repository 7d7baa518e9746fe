"""The three attention forms (naive, tiled online-softmax, SDPA) compute the same thing."""

import pytest
import torch

from alignlab.model.attention import ATTENTION, naive_attention, tiled_attention

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
