"""A reference solution of the mha drill: multi-head causal self-attention, written out (as nanoGPT's
CausalSelfAttention does when it has no flash attention)."""

import math

import torch


def causal_self_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x [B, T, D], w_qkv [3D, D], w_o [D, D] -> out [B, T, D]."""
    B, T, D = x.shape
    hs = D // n_heads
    q, k, v = (x @ w_qkv.T).split(D, dim=-1)  # each (B, T, D)
    # (B, T, D) -> (B, T, H, hs) -> (B, H, T, hs): head h owns dims h*hs .. (h+1)*hs - 1
    q = q.view(B, T, n_heads, hs).transpose(1, 2)
    k = k.view(B, T, n_heads, hs).transpose(1, 2)
    v = v.view(B, T, n_heads, hs).transpose(1, 2)
    att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)  # s > t
    att = att.masked_fill(future, float("-inf"))
    att = att.softmax(dim=-1)  # each row sums to 1 over s <= t
    y = att @ v  # (B, H, T, hs)
    y = y.transpose(1, 2).reshape(B, T, D)  # heads side by side again: (B, T, D)
    return y @ w_o.T
