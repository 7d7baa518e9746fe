"""A Linear layer with a faster CPU path for the few-row products of decoding."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Linear):
    """nn.Linear with a CPU fast path for a few input rows (decoding: one row per sequence).

    With few rows, BLAS computes x W^T on fewer cores than it has, and decoding is bound by how fast the
    weight streams from memory. Splitting W's output rows into one block per thread and multiplying the
    blocks as a batch (torch.bmm) gives every core its own block to stream:

        y^T = [W_1 x^T; W_2 x^T; ...; W_n x^T]

    Same result up to float summation order. Training and prefill (many rows) take F.linear, and so does bf16
    (bf16 weights, or autocast, which casts the weight once and caches it): oneDNN's bf16 kernels already
    stream the weight on every core, and the split made decode-shaped bf16 products 1-3x slower (2 cores,
    AVX512-BF16: [1 or 16, 512] x [512, 2048] and [16, 512] x [512, 8192]).
    """

    max_split_rows = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, w = torch.get_num_threads(), self.weight
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 0 < rows <= self.max_split_rows or n < 2 or self.out_features % n or x.device.type != "cpu" \
                or not w.is_contiguous() or w.dtype != torch.float32 or x.dtype != torch.float32 \
                or torch.is_autocast_enabled("cpu"):
            return F.linear(x, w, self.bias)
        blocks = w.view(n, self.out_features // n, self.in_features)
        y = torch.bmm(blocks, x.reshape(rows, -1).t().expand(n, -1, -1))  # [n, out / n, rows]
        y = y.view(self.out_features, rows).t().contiguous().view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias
