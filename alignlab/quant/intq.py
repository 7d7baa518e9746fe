"""Integer weight quantisation on a uniform grid, per group of input columns: the grid that round-to-nearest
(RTN), GPTQ and AWQ all quantise to, and the Linear layer that runs the result.

A group is `group_size` consecutive input columns of one output row (the whole row when group_size = -1). Each
(row, group) has a scale s and an integer zero point z on the grid {0, ..., 2^bits - 1}:

    asymmetric:  lo = min(min w, 0),  hi = max(max w, 0),  s = (hi - lo) / (2^bits - 1),  z = round(-lo / s)
    symmetric:   m = max |w|,  s = 2m / (2^bits - 1),  z = 2^(bits-1)
    quantise:    q = clamp(round(w / s) + z, 0, 2^bits - 1)
    dequantise:  w^ = s (q - z)

Round-to-nearest is exactly this, column by column; GPTQ chooses the same grid but changes the columns not yet
quantised to absorb each column's rounding error (alignlab/quant/gptq.py), and AWQ rescales input channels
before rounding (alignlab/quant/awq.py). With act-order GPTQ quantises columns out of order, so the group of
column c is looked up in g_idx[c] instead of being c // group_size.

`QuantLinear` stores q (two 4-bit codes per byte, or one 8-bit code), the scales and zeros, and dequantises
the weight in every forward: memory shrinks 4-8x; speed does not improve on a CPU (the integer kernels that make
4-bit fast, such as Marlin or ExLlama, are GPU code).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def grid(w: torch.Tensor, bits: int, sym: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of w [rows, cols] (one group per row). Returns fp32 [rows], fp32 [rows]
    (the zero is an integer held as a float)."""
    maxq = 2**bits - 1
    w = w.float()
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    span = hi - lo
    scale = torch.where(span > 0, span / maxq, torch.ones_like(span))  # an all-zero row: any scale works
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """q = clamp(round(w / s) + z, 0, 2^bits - 1), s and z broadcast against w. Returns the codes as fp32."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """w^ = s (q - z)."""
    return scale * (q - zero)


def group_index(in_features: int, group_size: int) -> torch.Tensor:
    """g_idx of the natural order: column c belongs to group c // group_size (all to group 0 for -1)."""
    g = in_features if group_size == -1 else group_size
    return torch.arange(in_features, dtype=torch.int32) // g  # on the CPU; QuantLinear.to() moves it


def rtn(w: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = True):
    """Round-to-nearest: quantise each group of w [out, in] on its own min-max grid.

    Returns (q uint8 [out, in], scales fp32 [out, n_groups], zeros fp32 [out, n_groups], g_idx int32 [in])."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    if in_f % g:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {g}")
    groups = w.float().reshape(out_f * in_f // g, g)  # every (row, group) is a row here
    scale, zero = grid(groups, bits, sym)
    q = quantize(groups, scale[:, None], zero[:, None], bits).reshape(out_f, in_f)
    return q.to(torch.uint8), scale.view(out_f, -1), zero.view(out_f, -1), group_index(in_f, group_size).to(w.device)


def rtn_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest and back to floats: the fp32 weight a `rtn` quantisation of w stands for."""
    return dequantize_groups(*rtn(w, bits, group_size, sym))


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor):
    """The fp32 weight [out, in] from codes q [out, in] and per-group scales and zeros [out, n_groups]:
    w^[:, c] = scales[:, g_idx[c]] (q[:, c] - zeros[:, g_idx[c]])."""
    g = g_idx.long()
    return dequantize(q.float(), scales.float()[:, g], zeros.float()[:, g])


def pack4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dimension: byte j = q[2j] | q[2j+1] << 4."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack4(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)


def _natural(in_features: int, n_groups: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(in_features, dtype=torch.int32, device=like.device) // (in_features // n_groups)


class QuantLinear(nn.Module):
    """y = x W^T + b with W stored as `bits`-bit integer codes and per-group scales and zeros.

    Buffers: qweight uint8 [out, in / 2] (4 bits, pack4) or [out, in] (8 bits); scales fp16 [out, n_groups] (as
    the GPTQ and AWQ checkpoint formats store them);
    qzeros uint8 [out, n_groups]; g_idx int32 [in]. The bias stays in fp32.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int = 128,
                 bias: bool = False, sym: bool = True):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"QuantLinear takes 4 or 8 bits, got {bits}")
        if in_features % 2 and bits == 4:
            raise ValueError(f"4-bit packing needs an even in_features, got {in_features}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size, self.sym = group_size, sym
        n_groups = 1 if group_size == -1 else -(-in_features // group_size)
        cols = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.float16))
        self.register_buffer("qzeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.register_buffer("g_idx", group_index(in_features, group_size))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_codes(cls, q, scales, zeros, g_idx, bits: int, group_size: int, bias=None, sym: bool = True):
        """The layer holding codes q [out, in] (and the rest, as `rtn` and `gptq` return them)."""
        layer = cls(q.shape[1], q.shape[0], bits, group_size, bias is not None, sym).to(q.device)
        layer.qweight.copy_(pack4(q) if bits == 4 else q.to(torch.uint8))
        layer.scales.copy_(scales)
        layer.qzeros.copy_(zeros.to(torch.uint8))
        layer.g_idx.copy_(g_idx)
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    def codes(self) -> torch.Tensor:
        """The integer codes q [out, in] (uint8)."""
        return unpack4(self.qweight) if self.bits == 4 else self.qweight

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in]. In the natural column order (no act-order) each group is a contiguous run of
        columns, so the codes are viewed as [out, groups, group_size] and scaled without gathering per column."""
        q = self.codes()
        n_groups = self.scales.shape[1]
        if self.in_features % n_groups == 0 and torch.equal(self.g_idx, _natural(self.in_features, n_groups, q)):
            zeros, scales = self.qzeros.float()[..., None], self.scales.float()[..., None]
            return ((q.view(self.out_features, n_groups, -1).float() - zeros) * scales).view(q.shape)
        return dequantize_groups(q, self.scales, self.qzeros, self.g_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.dequantize().to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def nbytes(self) -> int:
        """Bytes of the stored weight: codes, scales, zeros and g_idx (bias excluded)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.qzeros, self.g_idx))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, sym={self.sym}, bias={self.bias is not None}")
