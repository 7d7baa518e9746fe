"""Causal self-attention in three forms that compute the same thing.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V          (Vaswani et al. 2017)

`naive`  writes the formula out: the full [Tq, Tk] score matrix, a mask, a softmax. Read this first.
`tiled`  is the FlashAttention algorithm (Dao et al. 2022, arXiv:2205.14135) in plain PyTorch: walk over
         blocks of keys, keep a running max m and running sum l of exp(scores - m) per query, rescale the
         partial output when m grows. The [Tq, Tk] matrix never exists; memory is O(T), not O(T^2).
`sdpa`   hands the same problem to torch's fused `scaled_dot_product_attention` (the default).

Which keys a query sees. Query i sits at cache slot `q_offset + i` (bottom-right alignment: during decode
the new tokens are the last rows of the causal mask). Query at slot s sees key slot j when
    j <= s                          (causal)
    and key_valid[b, j]             (not padding)
    and s - j < window              (sliding window, if any)
A query always sees its own slot, so a padding row is never empty (its output is ignored anyway).

Shapes: q [B, Hq, Tq, d]; k, v [B, Hkv, Tk, d] with Hq a multiple of Hkv (grouped-query attention:
query head h reads kv head h // (Hq / Hkv)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def visible(q_slots: torch.Tensor, k_slots: torch.Tensor, key_valid: torch.Tensor | None,
            window: int | None) -> torch.Tensor:
    """Boolean mask [B or 1, 1, Tq, Tk]: True where a query may attend to a key."""
    s, j = q_slots[:, None], k_slots[None, :]
    allowed = j <= s
    if window is not None:
        allowed = allowed & (s - j < window)
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    return allowed | (s == j)[None, None]


def naive_attention(q, k, v, q_offset: int = 0, key_valid=None, window=None) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
    q_slots = torch.arange(q_offset, q_offset + q.shape[2], device=q.device)
    mask = visible(q_slots, torch.arange(k.shape[2], device=q.device), key_valid, window)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def tiled_attention(q, k, v, q_offset: int = 0, key_valid=None, window=None, block: int = 64):
    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    # group query heads by the kv head they read: [B, Hkv, n_rep * Tq, d] rows share one K, V
    n_rep = Hq // Hkv
    qg = (q * (1.0 / math.sqrt(d))).reshape(B, Hkv, n_rep * Tq, d)
    q_slots = torch.arange(q_offset, q_offset + Tq, device=q.device).repeat(n_rep)
    out = torch.empty_like(qg)
    for qs in range(0, n_rep * Tq, block):
        qb, slots = qg[:, :, qs:qs + block], q_slots[qs:qs + block]
        m = torch.full(qb.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(score - m)
        acc = torch.zeros_like(qb)  # running sum of exp(score - m) * v
        last_key = int(slots.max()) + 1  # causal: keys after the last query slot are never seen
        for ks in range(0, min(Tk, last_key), block):
            kb, vb = k[:, :, ks:ks + block], v[:, :, ks:ks + block]
            s = qb @ kb.transpose(-2, -1)
            kv_slots = torch.arange(ks, ks + kb.shape[2], device=q.device)
            kvalid = None if key_valid is None else key_valid[:, ks:ks + block]
            s = s.masked_fill(~visible(slots, kv_slots, kvalid, window), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # all-masked so far
            p = torch.exp(s - m_safe[..., None])
            scale = torch.exp(m - m_safe)  # shrink what was accumulated under the old max
            l = l * scale + p.sum(dim=-1)
            acc = acc * scale[..., None] + p @ vb
            m = m_new
        out[:, :, qs:qs + block] = acc / l[..., None]
    return out.reshape(B, Hq, Tq, d)


def sdpa_attention(q, k, v, q_offset: int = 0, key_valid=None, window=None) -> torch.Tensor:
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    plain = key_valid is None and (window is None or Tk <= window)
    if plain and Tq == 1:  # one new token at the end sees every cached key
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if plain and q_offset == 0 and Tq == Tk:  # ordinary causal prefill
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    q_slots = torch.arange(q_offset, q_offset + Tq, device=q.device)
    mask = visible(q_slots, torch.arange(Tk, device=q.device), key_valid, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


ATTENTION = {"naive": naive_attention, "tiled": tiled_attention, "sdpa": sdpa_attention}
