"""Lab 01's reference solutions: SFT's labels, LoRA, NF4 and depth pruning, written straight from the formulas.

Try each exercise first (labs/01_sft_foundations/exercises.py); `alignlab lab solution 1 N` prints one of these.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100

NF4_LEVELS = [  # the 16 NF4 levels, sorted, as float32; index k is code k
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def sft_labels(ids: list[int], trained: list[int]) -> list[int]:
    """Exercise 1. The labels of one SFT example, from its token ids and its loss mask."""
    labels = []
    for t in range(len(ids) - 1):
        # the output at t predicts token t + 1: a target only if that token is one the model must produce
        labels.append(ids[t + 1] if trained[t + 1] else IGNORE_INDEX)
    return labels + [IGNORE_INDEX]  # nothing follows the last token


def _lora_scale(alpha: float, r: int, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def lora_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                 alpha: float, r: int, rslora: bool = False) -> torch.Tensor:
    """Exercise 2a. A LoRA layer's forward pass, with PEFT's shapes."""
    y = x @ W.T  # (..., out): the frozen layer
    if b is not None:
        y = y + b
    # the update goes through the rank-r bottleneck: x A^T is (..., r), then B^T brings it to (..., out)
    return y + _lora_scale(alpha, r, rslora) * ((x @ A.T) @ B.T)


def lora_merge(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int,
               rslora: bool = False) -> torch.Tensor:
    """Exercise 2b. The merged weight that serves a LoRA layer without the adapter's extra matmuls."""
    return W + _lora_scale(alpha, r, rslora) * (B @ A)  # (out, r) @ (r, in) = (out, in), W's shape


def lora_params(shapes: list[tuple[int, int]], r: int, use_dora: bool = False) -> int:
    """Exercise 3. The number of trainable parameters LoRA adds to a model."""
    total = 0
    for out_features, in_features in shapes:
        total += r * in_features + out_features * r  # A [r, in] and B [out, r]
        if use_dora:
            total += out_features  # DoRA's magnitude: one per output row
    return total


def nf4_quantize(w: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 4a. Blockwise NF4 quantisation, without double quantisation."""
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
    mids = (levels[:-1] + levels[1:]) / 2  # the 15 boundaries between neighbouring levels
    codes, absmax = [], []
    for start in range(0, w.numel(), block):
        chunk = w[start:start + block].float()
        scale = chunk.abs().max()  # this block's absmax
        x = chunk / scale if scale > 0 else torch.zeros_like(chunk)  # an all-zero block stays 0
        # the nearest level: how many boundaries lie strictly below x (a tie at a boundary takes the lower level)
        codes.append((x[:, None] > mids[None, :]).sum(dim=1))
        absmax.append(scale)
    return torch.cat(codes), torch.stack(absmax)


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Exercise 4b. The weights that NF4 codes stand for."""
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
    block_of = torch.arange(codes.numel()) // block  # which block each weight belongs to
    return levels[codes.long()] * absmax[block_of]


def block_influence(entering: list[torch.Tensor], leaving: list[torch.Tensor]) -> float:
    """Exercise 5a. ShortGPT's block influence: 1 - the mean cosine between a block's input and output."""
    total, tokens = 0.0, 0
    for a, b in zip(entering, leaving):
        cos = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))  # one value per token
        total += cos.sum().item()
        tokens += cos.numel()
    return 1.0 - total / tokens


def keep_blocks_state(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """Exercise 5b. The blocks `keep`, renumbered 0, 1, ... in their order; everything else as it is."""
    order = sorted(keep)
    out = {}
    for name, value in state.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            if int(i) not in order:
                continue  # a removed block
            name = f"model.layers.{order.index(int(i))}.{rest}"
        out[name] = value
    return out
