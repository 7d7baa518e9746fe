"""Multi-head causal self-attention from scratch: x [B, T, D] -> out [B, T, D].

Write `causal_self_attention(x, w_qkv, w_o, n_heads)`: the attention sublayer of a GPT block, without biases.

    q, k, v = x @ w_qkv.T, split in three along the last dim     each [B, T, D]: rows 0..D-1 of w_qkv [3D, D] give
                                                                 q, rows D..2D-1 give k, rows 2D..3D-1 give v
    q, k, v -> [B, H, T, hs]                                     H = n_heads heads of hs = D / H dims each; head h
                                                                 is dims h*hs .. (h+1)*hs - 1
    att = softmax(q k^T / sqrt(hs) + M)                          [B, H, T, T], M[t, s] = 0 if s <= t else -inf:
                                                                 position t attends only to positions s <= t
    y = att v                                                    [B, H, T, hs], heads put back side by side in
                                                                 the same order -> [B, T, D]
    out = y @ w_o.T                                              w_o [D, D]

It must work for any B >= 1, T >= 1 and any n_heads dividing D, and be differentiable: the check compares the
output and the gradients with respect to x, w_qkv and w_o with a reference built on torch's
F.scaled_dot_product_attention. Write the softmax attention out yourself: calling F.scaled_dot_product_attention
or nn.MultiheadAttention fails the drill.

Target: 15 minutes.

Rules: no alignlab imports; torch and the standard library only. Grade it with `alignlab lab drill mha --check`
(it prints the time since you started); `alignlab lab drill mha --solution` shows a reference solution.
"""

import torch


def causal_self_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x [B, T, D], w_qkv [3D, D], w_o [D, D] -> out [B, T, D]."""
    raise NotImplementedError
