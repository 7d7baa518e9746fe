"""GPTQ: quantise a weight column by column, moving each column's rounding error onto the columns still to come.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (arXiv:2210.17323), Algorithm 1. For one Linear with inputs X [in, N] (calibration tokens as
columns), find the quantised W^ that minimises the output error ||W X - W^ X||^2. Its Hessian in each row of W is

    H = 2 X X^T  [in, in]                                    (the same for every output row)

Optimal Brain Quantisation quantises one column j at a time and updates the not-yet-quantised columns F by

    err = (w_j - q_j) / [H_F^-1]_jj,        w_F <- w_F - err [H_F^-1]_{j, F}

GPTQ's three ideas make that fast and stable for big matrices:
  1. every row uses the same column order, so H_F^-1 is shared and all rows update at once;
  2. the rows [H_F^-1]_{j, F} of the shrinking inverses are the rows of the upper Cholesky factor of H^-1,
     computed once (after dampening H += lambda I with lambda = damp * mean(diag H));
  3. lazy batch updates: within a block of B columns (128) only the block is updated column by column; the
     columns after it get the block's accumulated error in one matrix product, Err [out, B] x Hinv[B, rest].

With group_size g the grid (scale, zero: alignlab/quant/intq.py) is chosen anew every g columns, from the
columns' values as updated so far. act-order (desc_act) quantises the columns with the largest diag(H) first,
while the most columns remain to absorb their error; g_idx then records each original column's group.
"""

from __future__ import annotations

import torch

from alignlab.quant.intq import grid, quantize


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2/N X^T X of inputs x [N, in] (the 1/N keeps H's size independent of the token count). The product
    runs in fp32 (fp64 matmul is many times slower on a CPU); the result is fp64, as GPTQ's inversion wants."""
    x = x.reshape(-1, x.shape[-1]).float()
    return ((2.0 / x.shape[0]) * (x.t() @ x)).double()


@torch.no_grad()
def gptq(w: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = True,
         act_order: bool = False, block_size: int = 128, damp: float = 0.01):
    """Quantise w [out, in] given its input Hessian H [in, in]. Returns the same four tensors as `intq.rtn`:
    (q uint8 [out, in], scales fp32 [out, n_groups], zeros fp32 [out, n_groups], g_idx int32 [in])."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    if in_f % g:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {g}")
    W = w.detach().double().clone()
    H = H.detach().to(W.device, torch.float64).clone()
    dead = torch.diag(H) == 0  # inputs that are always 0: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    n_groups = in_f // g
    scales, zeros = (torch.zeros(out_f, n_groups, dtype=W.dtype, device=W.device) for _ in range(2))
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            j = i1 + i  # position in the (permuted) column order
            if j % g == 0:  # a new group: its grid from the current values of its g columns
                upcoming = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                s, z = grid(upcoming, bits, sym)
                scales[:, j // g], zeros[:, j // g] = s.double(), z.double()
            s, z = scales[:, j // g], zeros[:, j // g]
            col = W1[:, i]
            q = quantize(col.float(), s.float(), z.float(), bits).double()  # rounded in fp32, as RTN rounds
            Q[:, j] = q
            err = (col - s * (q - z)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # OBQ's update, within the block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the lazy update of every later column at once

    inv = torch.argsort(perm)  # back to the original column order
    # original column c was quantised at position inv[c], in group inv[c] // g
    g_idx = (torch.arange(in_f, device=W.device) // g)[inv].to(torch.int32)
    return Q[:, inv].to(torch.uint8), scales.float(), zeros.float(), g_idx


def output_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """The objective GPTQ minimises, per calibration token: tr((W - W^) H (W - W^)^T) / 2 = ||(W - W^) X||^2 / N."""
    d = (w.double() - w_hat.double())
    return float(0.5 * torch.einsum("oi,ij,oj->", d, H.double(), d))
