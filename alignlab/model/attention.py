"""Causal self-attention in three forms that compute the same thing.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V          (Vaswani et al. 2017)

`naive`  writes the formula out: the full [Tq, Tk] score matrix, a mask, a softmax. Read this first.
`tiled`  is the FlashAttention algorithm (Dao et al. 2022, arXiv:2205.14135) in plain PyTorch: walk over
         blocks of keys, keep a running max m and running sum l of exp(scores - m) per query, rescale the
         partial output when m grows. The [Tq, Tk] matrix never exists; memory is O(T), not O(T^2).
`sdpa`   hands the same problem to torch's fused `scaled_dot_product_attention` (the default). When
         training on the CPU with a plain causal mask it takes `causal_attention_train` instead, whose
         hand-written backward is faster than torch's CPU flash-attention backward (see there).

Which keys a query sees. Query i of row b sits at cache slot `q_offset[b] + i` (`q_offset` is one int for
every row, or a [B] tensor when rows hold different lengths: each row is then bottom-right aligned on its own
slots, and the keys past its last query are masked). Query at slot s sees key slot j when
    j <= s                          (causal)
    and key_valid[b, j]             (not padding)
    and s - j < window              (sliding window, if any)
    and doc[b, j] == doc[b, s]      (packed rows: only keys of the query's own document)
A query always sees its own slot, so a padding row is never empty (its output is ignored anyway).

Packed rows ("padding-free" training): several documents laid side by side in one row, positions
restarting at 0 for each. Attention is then block-diagonal causal: each document attends to itself alone,
exactly as if it were run by itself. `documents(position_ids)` reads the boundaries off the positions;
`naive` and `tiled` add doc[b, j] == doc[b, s] to their mask, `sdpa` runs each document on its own
(`per_document`), so a packed row costs sum(len_i^2) instead of T^2 and takes the CPU training path too.

Shapes: q [B, Hq, Tq, d]; k, v [B, Hkv, Tk, d] with Hq a multiple of Hkv (grouped-query attention:
query head h reads kv head h // (Hq / Hkv)).

Precision. In bf16 (bf16 weights, or fp32 weights under torch.autocast) the matmuls run in bf16 and the
probabilities are kept in bf16; the softmax, `tiled`'s running max and sum, and the backward's row sums
D accumulate in fp32, and so do the gradients of K and V summed over query blocks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Documents(NamedTuple):
    """The documents of packed rows. For a row holding documents of 3, 2 and 1 tokens:
    ids [[0, 0, 0, 1, 1, 2]] and spans [[(0, 3), (3, 5), (5, 6)]]."""

    ids: torch.Tensor  # [B, T] the document of each token, numbered within its row
    spans: list[list[tuple[int, int]]]  # per row, the [start, end) of each document


def documents(position_ids: torch.Tensor) -> Documents | None:
    """Document boundaries of packed rows, read off position_ids [B, T]: a new document starts wherever the
    position does not go up by one (it restarts at 0), as transformers reads packed position_ids. None when
    every row is a single document, so unpacked inputs keep the ordinary path."""
    new = position_ids[:, 1:] != position_ids[:, :-1] + 1  # [B, T - 1]: a document starts at t + 1
    if not bool(new.any()):
        return None
    ids = F.pad(new.long().cumsum(-1), (1, 0))
    T, spans = position_ids.shape[1], []
    for row in new:
        starts = [0] + (row.nonzero().flatten() + 1).tolist() + [T]
        spans.append(list(zip(starts[:-1], starts[1:])))
    return Documents(ids, spans)


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's matmuls run in: autocast's where autocast is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def query_slots(q_offset: int | torch.Tensor, Tq: int, device) -> torch.Tensor:
    """The cache slot of every query: [1, Tq] for one offset, [B, Tq] for per-row offsets [B]."""
    if isinstance(q_offset, int):
        return torch.arange(q_offset, q_offset + Tq, device=device)[None]
    return q_offset[:, None] + torch.arange(Tq, device=device)


def visible(q_slots: torch.Tensor, k_slots: torch.Tensor, key_valid: torch.Tensor | None,
            window: int | None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask [B or 1, 1, Tq, Tk]: True where a query may attend to a key. q_slots [B or 1, Tq], k_slots [Tk]."""
    s, j = q_slots[:, :, None], k_slots  # [B or 1, Tq, 1], [Tk]
    allowed = j <= s
    if window is not None:
        allowed = allowed & (s - j < window)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    if doc_ids is not None:  # packed rows: the query's own document only
        q_doc = doc_ids.gather(1, q_slots.expand(doc_ids.shape[0], -1))
        allowed = allowed & (q_doc[:, :, None] == doc_ids[:, None, k_slots])
    return (allowed | (s == j))[:, None]


def naive_attention(q, k, v, q_offset: int | torch.Tensor = 0, key_valid=None, window=None, docs=None):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
    q_slots = query_slots(q_offset, q.shape[2], q.device)
    doc_ids = None if docs is None else docs.ids
    mask = visible(q_slots, torch.arange(k.shape[2], device=q.device), key_valid, window, doc_ids)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def tiled_attention(q, k, v, q_offset: int | torch.Tensor = 0, key_valid=None, window=None, docs=None,
                    block: int = 64):
    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    # group query heads by the kv head they read: [B, Hkv, n_rep * Tq, d] rows share one K, V
    n_rep = Hq // Hkv
    qg = (q * (1.0 / math.sqrt(d))).reshape(B, Hkv, n_rep * Tq, d)
    q_slots = query_slots(q_offset, Tq, q.device).repeat(1, n_rep)  # [B or 1, n_rep * Tq]
    out = torch.empty_like(qg, dtype=matmul_dtype(q))  # bf16 under autocast, as the other forms give
    acc_dtype = torch.promote_types(q.dtype, torch.float32)  # the running statistics: fp32 at least
    for qs in range(0, n_rep * Tq, block):
        qb, slots = qg[:, :, qs:qs + block], q_slots[:, qs:qs + block]
        m = torch.full(qb.shape[:-1], float("-inf"), dtype=acc_dtype, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(score - m)
        acc = torch.zeros_like(qb, dtype=acc_dtype)  # running sum of exp(score - m) * v
        last_key = int(slots.max()) + 1  # causal: keys after the last query slot are never seen
        for ks in range(0, min(Tk, last_key), block):
            kb, vb = k[:, :, ks:ks + block], v[:, :, ks:ks + block]
            s = (qb @ kb.transpose(-2, -1)).to(acc_dtype)
            kv_slots = torch.arange(ks, ks + kb.shape[2], device=q.device)
            kvalid = None if key_valid is None else key_valid[:, ks:ks + block]
            mask = visible(slots, kv_slots, kvalid, window, None if docs is None else docs.ids)
            s = s.masked_fill(~mask, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # all-masked so far
            p = torch.exp(s - m_safe[..., None])
            scale = torch.exp(m - m_safe)  # shrink what was accumulated under the old max
            l = l * scale + p.sum(dim=-1)
            acc = acc * scale[..., None] + p.to(vb.dtype) @ vb  # the product in v's dtype (bf16: the speed)
            m = m_new
        out[:, :, qs:qs + block] = acc / l[..., None]
    return out.reshape(B, Hq, Tq, d)


# Longest sequence that takes `causal_attention_train`: it keeps the probabilities for backward, B * Hq *
# T^2 / 2 floats per layer, about as much as the rest of a layer's saved activations at T = 1024 (head_dim
# 64). Longer sequences go to torch's flash kernel, which keeps O(T).
TRAIN_ATTENTION_MAX_LEN = 1024


def sdpa_attention(q, k, v, q_offset: int | torch.Tensor = 0, key_valid=None, window=None, docs=None):
    if docs is not None:  # packed rows: each document alone, through the paths below
        return per_document(sdpa_attention, q, k, v, docs, window)
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    # one offset for every row, no padding, no window cutting: the mask is plain causal
    plain = isinstance(q_offset, int) and key_valid is None and (window is None or Tk <= window)
    if plain and Tq == 1:  # one new token at the end sees every cached key
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if plain and q_offset == 0 and Tq == Tk:  # ordinary causal prefill
        if torch.is_grad_enabled() and q.requires_grad and q.device.type == "cpu" and Tq <= TRAIN_ATTENTION_MAX_LEN:
            return causal_attention_train(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = visible(query_slots(q_offset, Tq, q.device), torch.arange(Tk, device=q.device), key_valid, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def per_document(attn, q, k, v, docs: Documents, window=None) -> torch.Tensor:
    """Attention over packed rows (no cache, no padding), one document at a time: each [start, end) slice
    of q, k, v is an ordinary causal problem, so `attn` takes its fast unpacked path on it. Work is
    sum(len_i^2) rather than T^2, and no [T, T] mask is ever built."""
    rows = []
    for b, spans in enumerate(docs.spans):
        outs = [attn(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e], 0, None, window) for s, e in spans]
        rows.append(torch.cat([o.transpose(1, 2) for o in outs], dim=1))  # [1, T, H, d]
    # laid out [B, T, H, d] in memory, like the projections: the caller's transpose back is free
    return torch.cat(rows).transpose(1, 2)


def causal_attention_train(q, k, v, block: int = 64) -> torch.Tensor:
    """Causal attention (Tq == Tk, no padding) with a hand-written backward, for training on the CPU.

    Queries go in blocks of `block`; block [s, e) multiplies only by keys [0, e), the ones causality lets
    it see, so about half of Q K^T and of P V is never computed. Forward, per block (scale c = 1/sqrt(d)):

        S = c Q K^T (future keys -inf),   P = softmax(S),   O = P V          P is kept for backward

    Backward (FlashAttention's, Dao et al. 2022, with D = rowsum(dO * O), which equals rowsum(dP * P)):

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ = c dS K,   dK = c dS^T Q

    Why not torch's fused kernel: on the CPU its flash-attention backward recomputes P block by block
    in small pieces and takes about as long as this whole forward + backward does with large batched
    matmuls over a kept P (measured: 1.3-1.5x faster forward + backward for T = 256..1024). The price is
    memory for P, hence TRAIN_ATTENTION_MAX_LEN. Grouped-query heads are handled by viewing q as
    [B, Hkv, n_rep, T, d], so the n_rep query heads that read one kv head multiply by it together.

    In bf16 (see the module docstring) S, P, dP, dS and the products are bf16, the softmax runs in fp32 inside
    its kernel, D is summed in fp32 and dK, dV accumulate over the query blocks in fp32.
    """
    return _CausalAttentionTrain.apply(q, k, v, block)


class _CausalAttentionTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, block):
        B, Hq, T, d = q.shape
        Hkv = k.shape[1]
        r, c = Hq // Hkv, 1.0 / math.sqrt(d)
        dtype = matmul_dtype(q)  # under autocast bf16, as autocast would make q K^T and P V
        q5 = q.to(dtype).reshape(B, Hkv, r, T, d)
        k, v = k.to(dtype).contiguous(), v.to(dtype).contiguous()  # else every block's matmul copies its slice
        # laid out [B, T, heads, d] in memory, like the projections: the caller's transpose back is free
        out = q5.new_empty(B, T, Hkv, r, d).permute(0, 2, 3, 1, 4)
        probs = []
        for s in range(0, T, block):
            e = min(T, s + block)
            qb = q5[:, :, :, s:e].reshape(B, Hkv, r * (e - s), d)
            scores = torch.matmul(qb, k[:, :, :e].transpose(-2, -1)).mul_(c)  # [B, Hkv, r * rows, e]
            future = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).triu(1)
            scores.view(B, Hkv, r, e - s, e)[..., s:].masked_fill_(future, float("-inf"))
            p = torch.softmax(scores, dim=-1)
            out[:, :, :, s:e] = torch.matmul(p, v[:, :, :e]).view(B, Hkv, r, e - s, d)
            probs.append(p)
        ctx.save_for_backward(q5, k, v, out, *probs)
        ctx.block = block
        return out.reshape(B, Hq, T, d)

    @staticmethod
    def backward(ctx, dout):
        q5, k, v, out, *probs = ctx.saved_tensors
        B, Hkv, r, T, d = q5.shape
        c = 1.0 / math.sqrt(d)
        acc = torch.promote_types(q5.dtype, torch.float32)  # what sums run in: fp32 at least
        do5 = dout.to(q5.dtype).reshape(B, Hkv, r, T, d)
        # [B, Hkv, r, T, 1], summed in fp32; then in dP's dtype, as dP - D is (mixed dtypes are slow in place)
        D = (do5 * out).sum(-1, keepdim=True, dtype=acc).to(q5.dtype)
        dq = q5.new_empty(B, T, Hkv, r, d).permute(0, 2, 3, 1, 4)
        dk = k.new_zeros(B, T, Hkv, d, dtype=acc).transpose(1, 2)
        dv = v.new_zeros(B, T, Hkv, d, dtype=acc).transpose(1, 2)
        for p, s in zip(probs, range(0, T, ctx.block)):
            e = min(T, s + ctx.block)
            rows = r * (e - s)
            qb = q5[:, :, :, s:e].reshape(B, Hkv, rows, d)
            dob = do5[:, :, :, s:e].reshape(B, Hkv, rows, d)
            dv[:, :, :e] += (p.transpose(-2, -1) @ dob).to(acc)
            ds = (dob @ v[:, :, :e].transpose(-2, -1)).sub_(D[:, :, :, s:e].reshape(B, Hkv, rows, 1))
            ds.mul_(p).mul_(c)
            dq[:, :, :, s:e] = (ds @ k[:, :, :e]).view(B, Hkv, r, e - s, d)
            dk[:, :, :e] += (ds.transpose(-2, -1) @ qb).to(acc)
        return dq.reshape(B, Hkv * r, T, d), dk.to(k.dtype), dv.to(v.dtype), None


ATTENTION = {"naive": naive_attention, "tiled": tiled_attention, "sdpa": sdpa_attention}
