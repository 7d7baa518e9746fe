"""8-bit matrix multiplication with outlier decomposition: LLM.int8().

Dettmers, Lewis, Belkada, Zettlemoyer 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
(arXiv:2208.07339), sections 3.1-3.2. Vector-wise absmax quantisation gives every output row of W and every
row (token) of X its own scale:

    W_i8 = round(127 W / c_w),  c_w = max_k |W_{o,k}|   (one per output row, kept in fp32: "SCB")
    X_i8 = round(127 X / c_x),  c_x = max_k |X_{t,k}|   (one per token, at run time)
    X W^T ~= (X_i8 W_i8^T) * (c_x c_w^T) / 127^2        (an int8 x int8 -> int32 product)

A few hidden features carry values far larger than the rest (|x| >= 6 in the paper's threshold, from about
6.7B parameters on); one of them in a token row makes c_x large and rounds that token's other features to 0.
The mixed-precision decomposition takes those feature columns out of the int8 product:

    O = { k : max_t |X_{t,k}| >= threshold }
    X W^T ~= int8 product over the columns not in O  +  X[:, O] W^[:, O]^T in floating point

where W^ is the dequantised weight (bitsandbytes keeps only the int8 weight too). threshold = 0 turns the
decomposition off (plain vector-wise int8). Weight memory: 1 byte per parameter plus 4 bytes per row.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def absmax_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax int8: returns (q int8 [rows, cols], c fp32 [rows]) with w ~= q c / 127."""
    w = w.float()
    c = w.abs().amax(dim=-1)
    q = torch.round(w * (127 / torch.where(c > 0, c, 1.0))[..., None])
    return q.clamp(-127, 127).to(torch.int8), c


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] int8 times b [N, K]^T int8 -> int32 [M, N]; torch._int_mm where its shape rules allow."""
    M, K = a.shape
    if M > 16 and K % 8 == 0 and b.shape[0] % 8 == 0:
        return torch._int_mm(a, b.t())
    return (a.float() @ b.float().t()).to(torch.int32)  # exact: |sum| < 127^2 K < 2^24 for K < 1040


def llm_int8_matmul(x: torch.Tensor, w_i8: torch.Tensor, c_w: torch.Tensor, threshold: float = 6.0):
    """X W^T by LLM.int8(): x [..., in] float, w_i8 [out, in] int8, c_w [out] fp32. Returns x's dtype."""
    shape, dtype = x.shape, x.dtype
    x = x.reshape(-1, shape[-1]).float()
    outliers = (x.abs() >= threshold).any(dim=0)  # [in]: the feature columns kept in float
    if threshold <= 0:
        outliers = torch.zeros_like(outliers)
    regular = x.masked_fill(outliers, 0.0)
    x_i8, c_x = absmax_rows(regular)
    y = int8_matmul(x_i8, w_i8).float() * (c_x[:, None] * c_w[None, :] / 127**2)
    if bool(outliers.any()):
        w_out = w_i8[:, outliers].float() * (c_w[:, None] / 127)  # the weight's outlier columns, dequantised
        y = y + x[:, outliers] @ w_out.t()
    return y.reshape(*shape[:-1], -1).to(dtype)


class Int8Linear(nn.Module):
    """y = LLM.int8(x, W) + b with W stored as int8 [out, in] and its row absmax `SCB` [out] (bitsandbytes' name).
    threshold: the outlier threshold (6.0, bitsandbytes' llm_int8_threshold); 0 = vector-wise int8 only."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, threshold: float = 6.0):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, threshold
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("SCB", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Module, threshold: float = 6.0) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, threshold)
        q, c = absmax_rows(linear.weight.detach())
        layer.weight.copy_(q)
        layer.SCB.copy_(c)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in]: W_i8 c_w / 127."""
        return self.weight.float() * (self.SCB[:, None] / 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # training through it: a float product, same weight
            y = F.linear(x, self.dequantize().to(x.dtype))
        else:
            y = llm_int8_matmul(x, self.weight, self.SCB, self.threshold)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def nbytes(self) -> int:
        return self.weight.numel() + self.SCB.numel() * 4

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, "
                f"bias={self.bias is not None}")
