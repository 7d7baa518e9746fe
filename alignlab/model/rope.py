"""Rotary position embeddings (RoPE). Su et al. 2021, "RoFormer", arXiv:2104.09864.

Each pair of channels (i, i + d/2) of a query or key is rotated by the angle  pos * inv_freq[i],
with inv_freq[i] = theta ** (-2i / d). The dot product q.k then depends only on the distance between
the two positions. We use the "rotate half" layout of the Llama/HF checkpoints:

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]
"""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/d), optionally rescaled for longer contexts."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":  # position interpolation: positions / factor
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_scaling(inv_freq, scaling)
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")


def _llama3_scaling(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate smoothly between.

    wavelength w = 2*pi / inv_freq;  w < L/high  -> unchanged;  w > L/low -> inv_freq / factor;
    otherwise mix with  a = (L / w - low) / (high - low):  (1 - a) * inv_freq / factor + a * inv_freq,
    where L is original_max_position_embeddings.
    """
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    a = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - a) * scaled / factor + a * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos and sin of shape [*positions.shape, head_dim], computed in fp32."""
    angles = positions.float()[..., None] * inv_freq  # [..., d/2]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, d]; cos, sin: [B, T, d] (broadcast over heads). Returns x's dtype, computed in the
    wider of x's and cos's (the model passes cos and sin in q's dtype: bf16 under autocast, as with bf16 weights).

    Computed by `rotate`: the same values in fewer passes over q and k than the formula's cat, neg, two
    products and a sum; when x needs a gradient, through `_Rotate`, whose backward is the inverse rotation.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotate.apply(x, cos, sin)
    return rotate(x, cos, sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin without building rotate_half(x): with x = [x1, x2] and the two halves
    of cos (and of sin) equal, the result is [x1 cos - x2 sin, x2 cos + x1 sin]. sign=-1 rotates back.
    Computed in the wider of the two dtypes, returned in x's."""
    half = x.shape[-1] // 2
    x1, x2, s = x[..., :half], x[..., half:], sin[..., :half]
    out = x * cos
    out[..., :half].addcmul_(x2, s, value=-sign)
    out[..., half:].addcmul_(x1, s, value=sign)
    return out.to(x.dtype)


class _Rotate(torch.autograd.Function):
    """RoPE rotates each channel pair by an angle; the gradient goes back through the opposite angle."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return rotate(grad, cos, sin, sign=-1.0), None, None
