"""Two ways to add many LoRA adapters' updates to one batch, token by token.

Each token t of a batch names an adapter slot i_t (-1: the base model, no update). With the slots' weights
stacked, A: [S, r_max, in], B: [S, out, r_max] (adapter i's A_i [r_i, in] and B_i [out, r_i] in the first r_i
rows/columns, zeros past them) and its scale s_i (α/r, or α/√r for rsLoRA), both kernels compute

    delta[t] = s_{i_t} · B_{i_t} A_{i_t} x[t]          (0 where i_t = -1)

so that base(x) + delta equals each adapter's own merged layer, W + s_i B_i A_i, on its tokens.

`lora_bmm` is the gather form of Punica's BGMV (Chen et al. 2023, arXiv:2310.18547): one batched product over
every token, each with its own gathered A and B. `lora_sgmv` is Punica's SGMV: tokens sorted into segments that
share an adapter, one pair of dense products per segment at that adapter's own rank. `lora_grouped` is the same
sorted segments in one grouped product per side (torch's `grouped_mm`: every segment in one call, as Punica's
SGMV kernel takes them in one launch): every segment at r_max, but two calls whatever the mix instead of two per
adapter. S-LoRA (Sheng et al. 2023,
arXiv:2311.03285) serves thousands of adapters with kernels of this kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    n_base: int = 0  # tokens of slot -1: the first n_base of `order`
    slot: torch.Tensor | None = None  # [N - n_base] the slot of each sorted adapter token
    ends: torch.Tensor | None = None  # [S] int32: where each slot's segment ends among the adapter tokens
    sorted: bool = False  # the tokens came in slot order already (order = 0, 1, ..., N - 1)


def segments(index: torch.Tensor, n_slots: int | None = None) -> Segments:
    """Sort the tokens by slot (stable) and cut the sorted list where the slot changes. With n_slots, also the
    segment ends of every slot 0..n_slots-1 (empty ones included) that `lora_grouped` takes."""
    order = torch.argsort(index, stable=True)  # [N]
    sorted_index = index[order]
    slots, counts = torch.unique_consecutive(sorted_index, return_counts=True)
    runs, start = [], 0
    for slot, n in zip(slots.tolist(), counts.tolist()):
        runs.append((slot, start, start + n))
        start += n
    n_base = next((end for slot, _, end in runs if slot == -1), 0)
    segs = Segments(order, runs, n_base, sorted_index[n_base:],
                    sorted=bool((order == torch.arange(len(order), device=order.device)).all()))
    if n_slots is not None:
        counts = torch.bincount(segs.slot, minlength=n_slots)
        segs.ends = counts.cumsum(0).to(torch.int32)
    return segs


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


def lora_grouped(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
                 segs: Segments) -> torch.Tensor:
    """delta by sorted segments, as `lora_sgmv`, in one grouped product per side:

        xs = x[order][n_base:]                           [n, in]      the adapter tokens, sorted by slot
        h  = grouped_mm(xs, Aᵀ, ends) · s[slot]           [n, r_max]   segment i times A_iᵀ (shrink)
        ys = grouped_mm(h, Bᵀ, ends)                      [n, out]     segment i times B_iᵀ (expand)
        delta[order[n_base:]] = ys, 0 for base tokens

    `grouped_mm(a, b, offs=ends)` multiplies rows ends[i-1]:ends[i] of a by b[i], every group in one call.
    The zeros past r_i are multiplied too (as lora_bmm does, without gathering weights per token); what it saves
    over lora_sgmv is the two calls per adapter, which dominate at small ranks and batches. When the tokens come
    sorted (an engine that orders its rows by adapter), the gather and the scatter are skipped.

    x: [N, in]; A: [S, r_max, in]; B: [S, out, r_max]; scaling: [S]; segs: `segments(index, S)`. grouped_mm wants
    16-byte strides: r_max a multiple of 4 in fp32, of 8 in bf16 (MultiLoraLinear pads it to a multiple of 8).
    """
    xs = x if segs.sorted else x.index_select(0, segs.order)
    xs = xs[segs.n_base:]
    h = F.grouped_mm(xs, A.transpose(1, 2), offs=segs.ends)  # [n, r_max]
    h.mul_(scaling.index_select(0, segs.slot)[:, None])
    ys = F.grouped_mm(h, B.transpose(1, 2), offs=segs.ends)  # [n, out]
    if segs.sorted and segs.n_base == 0:
        return ys
    return ys.new_zeros(x.shape[0], ys.shape[1]).index_copy_(0, segs.order[segs.n_base:], ys)
