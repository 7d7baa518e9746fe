"""Two ways to add many LoRA adapters' updates to one batch, token by token.

Each token t of a batch names an adapter slot i_t (-1: the base model, no update). With the slots' weights
stacked, A: [S, r_max, in], B: [S, out, r_max] (adapter i's A_i [r_i, in] and B_i [out, r_i] in the first r_i
rows/columns, zeros past them) and its scale s_i (α/r, or α/√r for rsLoRA), both kernels compute

    delta[t] = s_{i_t} · B_{i_t} A_{i_t} x[t]          (0 where i_t = -1)

so that base(x) + delta equals each adapter's own merged layer, W + s_i B_i A_i, on its tokens.

`lora_bmm` is the gather form of Punica's BGMV (Chen et al. 2023, arXiv:2310.18547): one batched product over
every token, each with its own gathered A and B. `lora_sgmv` is Punica's SGMV: tokens sorted into segments that
share an adapter, one pair of dense products per segment at that adapter's own rank. S-LoRA (Sheng et al. 2023,
arXiv:2311.03285) serves thousands of adapters with kernels of this kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def lora_bmm(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
             index: torch.Tensor) -> torch.Tensor:
    """delta[t] = s_{i_t} · B_{i_t} (A_{i_t} x[t]) for every token at once, by gathering each token's A and B.

        a = A[i]                 [N, r_max, in]     (i = index, -1 read as slot 0 and scaled by 0)
        h = a @ x[:, :, None]    [N, r_max, 1]      shrink
        y = B[i] @ h             [N, out, 1]        expand
        delta = s[i] · y         [N, out]

    x: [N, in]; A: [S, r_max, in]; B: [S, out, r_max]; scaling: [S]; index: [N] long, -1 for the base.

    Rank padding costs: every token multiplies by r_max rows of A and columns of B, whatever its adapter's own
    rank, so one rank-64 adapter in the pool makes the rank-8 tokens do 8x their work (and gathers
    N · r_max · (in + out) numbers). The zeros past r_i add nothing to the result, only to the time; this is why
    vLLM advises a max_lora_rank no larger than the adapters need. In exchange it is two calls whatever the mix.
    """
    base = index < 0
    i = index.clamp(min=0)  # [N]
    h = torch.bmm(A[i], x[:, :, None])  # [N, r_max, 1]
    y = torch.bmm(B[i], h)[:, :, 0]  # [N, out]
    s = scaling[i].masked_fill(base, 0.0)  # [N]
    return y * s[:, None].to(y.dtype)


@dataclass
class Segments:
    """Tokens grouped by slot: `order` lists the token ids sorted by slot, and tokens order[start:end] all use
    `slot`, for each (slot, start, end) in `runs` (base tokens, slot -1, included). Computed once per batch shape
    and shared by every layer of a forward."""

    order: torch.Tensor  # [N] long
    runs: list[tuple[int, int, int]]


def segments(index: torch.Tensor) -> Segments:
    """Sort the tokens by slot (stable) and cut the sorted list where the slot changes."""
    order = torch.argsort(index, stable=True)  # [N]
    slots, counts = torch.unique_consecutive(index[order], return_counts=True)
    runs, start = [], 0
    for slot, n in zip(slots.tolist(), counts.tolist()):
        runs.append((slot, start, start + n))
        start += n
    return Segments(order, runs)


def lora_sgmv(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: list[float], ranks: list[int],
              segs: Segments) -> torch.Tensor:
    """delta by segments (Punica's SGMV): sort the tokens by slot, then for each contiguous run of slot i, at the
    adapter's own rank r_i,

        xs = x[order]                                           [N, in]    sorted by slot
        ys[run of i] = s_i · (xs[run of i] A_iᵀ) B_iᵀ            [n_i, r_i] -> [n_i, out]
        delta[order] = ys                                       scattered back to the tokens' places

    with 0 for base tokens (slot -1) and for slots without weights in this layer (rank 0: the adapter does not
    target it). Each segment is a plain matrix product at its true rank, so no work is spent on padding; the
    cost is one pair of products per distinct adapter in the batch, plus the sort (shared by all layers).

    x: [N, in]; A: [S, r_max, in]; B: [S, out, r_max]; scaling, ranks: per slot (host numbers); segs:
    `segments(index)`.
    """
    xs = x[segs.order]  # [N, in]
    ys = x.new_zeros(x.shape[0], B.shape[1])  # [N, out]
    for slot, start, end in segs.runs:
        r = ranks[slot] if slot >= 0 else 0
        if r == 0:
            continue
        h = xs[start:end] @ A[slot, :r].T  # [n_i, r_i]   shrink
        ys[start:end] = (h @ B[slot, :, :r].T) * scaling[slot]  # [n_i, out]   expand
    delta = torch.empty_like(ys)
    delta[segs.order] = ys
    return delta
