"""AWQ: activation-aware weight quantisation, by scaling the input channels that matter before rounding.

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han 2023, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (arXiv:2306.00978), section 3. A weight's rounding error matters in proportion to
the activations that multiply it, and a few input channels carry much larger activations than the rest.
Multiplying input channel k of W by s_k > 1 and dividing the activation by s_k leaves the product unchanged,

    y = W x = (W diag(s)) (diag(s)^-1 x)

but the scaled column's relative rounding error shrinks (the group's scale hardly moves while the column grows).
AWQ picks s from the mean activation magnitude per channel, s = mean_t |x_k|^alpha, with alpha from a grid
search on the output error of the quantised layers:

    alpha* = argmin_alpha || W x - Q(W diag(s_alpha)) diag(s_alpha)^-1 x ||^2      (alpha in {0, 0.05, ..., 0.95})

and folds diag(s)^-1 into the operation that produces x, so nothing is added at run time: an RMSNorm's weight
(for q/k/v and gate/up), v_proj's rows (for o_proj, when they have the same width), up_proj's rows (for
down_proj). Layers that share an input share one s and are searched together. No gradients and no
reconstruction, so it fits the calibration data less than GPTQ does. Left out here: AWQ's second search, which
clips each group's weight range.
"""

from __future__ import annotations

import torch

from alignlab.quant.intq import rtn_weight

GRID = 20  # alpha in {0, 1/20, ..., 19/20}


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], bits: int = 4, group_size: int = 128,
                 sym: bool = False, grid: int = GRID) -> tuple[torch.Tensor, float, float]:
    """The per-channel scale s [in] for layers `weights` (each [out_i, in]) that read the same input x [N, in].

    s = mean_t |x|^alpha, normalised to sqrt(max s * min s) = 1 (AutoAWQ's normalisation), for the alpha of
    the grid with the least output error summed over the layers. Returns (s, error at alpha = 0, best error);
    alpha = 0 (s = 1) is plain round-to-nearest, so best <= the first."""
    x = x.float()
    mean_abs = x.abs().mean(dim=0).clamp(min=1e-8)  # [in]
    W = torch.cat([w.float() for w in weights])  # the layers side by side: one output error
    y = x @ W.t()
    best, best_s, first = float("inf"), torch.ones_like(mean_abs), None
    for i in range(grid):
        s = mean_abs.pow(i / grid)
        s = s / (s.max() * s.min()).sqrt()
        w_q = rtn_weight(W * s, bits, group_size, sym) / s  # Q(W diag(s)) diag(s)^-1
        err = float((x @ w_q.t() - y).pow(2).mean())
        first = err if first is None else first
        if err < best:
            best, best_s = err, s
    return best_s, first, best


def fold(scale: torch.Tensor, producer: torch.Tensor, producer_bias: torch.Tensor | None,
         consumers: list[torch.Tensor]) -> None:
    """Apply s in place: every consumer's input columns times s, the producer's outputs divided by s.
    producer: a norm's weight [in] or a Linear's weight [in, *] (its output rows); consumers: weights [*, in]."""
    view = scale if producer.dim() == 1 else scale[:, None]
    producer.div_(view.to(producer.dtype))
    if producer_bias is not None:
        producer_bias.div_(scale.to(producer_bias.dtype))
    for w in consumers:
        w.mul_(scale.to(w.dtype))
