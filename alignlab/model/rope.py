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


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `rotate` takes, from cos, sin [B, T, d]: cos [B, 1, T, d] (broadcast over heads) and sin with the
    signs of rotate_half folded in, [-sin, sin] by halves. The model makes them once per forward."""
    half = sin.shape[-1] // 2
    return cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, d]; cos, sin: [B, T, d] as rope_cos_sin gives them. See `rotate`."""
    return rotate(x, *rope_tables(cos, sin))


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """rope(x) for x [B, heads, T, d] and the tables of `rope_tables`. rotate_half(x) * sin is the halves of x
    swapped, times [-sin, sin]:

        rope(x) = x * cos + roll(x, d/2) * signed_sin

    the formula's products and sum, so fp32 and bf16 give transformers' values, in fewer passes than its cat and
    negation. Computed in the wider of x's and cos's dtypes, returned in x's. When x needs a gradient, through
    `_Rotate`, whose backward is the inverse rotation."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotate.apply(x, cos, signed_sin)
    return _rotate(x, cos, signed_sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin).to(x.dtype)


class _Rotate(torch.autograd.Function):
    """RoPE rotates each channel pair by an angle; the gradient goes back through the opposite angle."""

    @staticmethod
    def forward(ctx, x, cos, signed_sin):
        ctx.save_for_backward(cos, signed_sin)
        return _rotate(x, cos, signed_sin)

    @staticmethod
    def backward(ctx, grad):
        cos, signed_sin = ctx.saved_tensors
        return _rotate(grad, cos, -signed_sin), None, None
