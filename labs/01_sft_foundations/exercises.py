"""Lab 01 exercises: SFT's labels, LoRA, NF4 and depth pruning, each written from its formula.

Fill in each function, then grade your work:

    alignlab lab check 1          # every exercise: PASS, FAIL (with what differs) or TODO
    alignlab lab check 1 2        # exercise 2 only
    alignlab lab solution 1 2     # the reference solution of exercise 2, once you have tried

(`python labs/01_sft_foundations/check.py [N ...]` grades the same way.) The checker runs your functions on
seeded inputs and compares them with alignlab's own code: values, and gradients where they matter. Write each one
from its docstring, not by calling the alignlab function it is checked against: that would pass and teach nothing.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # the label F.cross_entropy(..., ignore_index=-100) skips


def sft_labels(ids: list[int], trained: list[int]) -> list[int]:
    """Exercise 1. The labels of one SFT example, from its token ids and its loss mask.

    ids: the example's token ids; trained[t] = 1 where token t is one the model must learn to produce (an assistant
    reply and the end-of-turn token after it), 0 elsewhere (system prompt, user turns, the template's markup).
    The output at position t predicts token t + 1, so the labels are the ids shifted left by one, masked:

        labels[t] = ids[t + 1]  if trained[t + 1]  else  -100        for t < len(ids) - 1
        labels[len(ids) - 1] = -100                                   (nothing follows the last token)

    Returns a list of ints as long as ids.
    """
    raise NotImplementedError


def lora_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                 alpha: float, r: int, rslora: bool = False) -> torch.Tensor:
    """Exercise 2a. A LoRA layer's forward pass, with PEFT's shapes.

    LoRA (Hu et al. 2021) on x [..., in]; the frozen W [out, in] and bias b [out] (or None); the adapter A [r, in]
    and B [out, r]:

        y = x W^T + b + s (x A^T) B^T          s = alpha / r,  or alpha / sqrt(r) with rslora (Kalajdzievski 2023)

    Returns y [..., out]. The checker backpropagates through your y: A, B and x must get their gradients.
    """
    raise NotImplementedError


def lora_merge(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int,
               rslora: bool = False) -> torch.Tensor:
    """Exercise 2b. The merged weight that serves a LoRA layer without the adapter's extra matmuls.

    W [out, in], A [r, in], B [out, r]:   W' = W + s B A      (s as in exercise 2a)

    so that x W'^T + b equals lora_forward(x, ...). Returns W' [out, in], a new tensor (leave W as it is).
    """
    raise NotImplementedError


def lora_params(shapes: list[tuple[int, int]], r: int, use_dora: bool = False) -> int:
    """Exercise 3. The number of trainable parameters LoRA adds to a model.

    shapes: (out_features, in_features) of every adapted Linear (its weight's shape). Each one trains A [r, in] and
    B [out, r], r (in + out) numbers; DoRA (Liu et al. 2024) also trains one magnitude per output row, out more.
    Everything else stays frozen (biases too). Returns the total.
    """
    raise NotImplementedError


NF4_LEVELS = [  # the 16 NF4 levels (QLoRA, Dettmers et al. 2023), sorted, as float32; index k is code k
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def nf4_quantize(w: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 4a. Blockwise NF4 quantisation, without double quantisation.

    QLoRA's 4-bit NormalFloat (Dettmers et al. 2023). w: a 1-D float32 tensor of n weights, cut into blocks of
    `block` consecutive weights (the last block may be shorter). For block j and each weight w_i in it:

        absmax_j = max_i |w_i|                                 (one float32 scale per block)
        x_i      = w_i / absmax_j                              (in [-1, 1]; x_i = 0 when absmax_j = 0)
        code_i   = the index of the level of NF4_LEVELS nearest to x_i

    Nearest, exactly: with the 15 midpoints m_k = (NF4_LEVELS[k] + NF4_LEVELS[k + 1]) / 2 computed in float32,
    code_i is the number of midpoints strictly below x_i, so a value exactly halfway takes the lower level.
    (Comparing |x - level| distances instead gets some of those ties wrong: the two distances round differently.)

    Returns (codes, absmax): integer codes 0..15 [n] (any integer dtype), absmax float32 [number of blocks].
    """
    raise NotImplementedError


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Exercise 4b. The weights that NF4 codes stand for: w_i ~= NF4_LEVELS[code_i] * absmax[i // block].

    codes [n] (integers 0..15), absmax float32 [number of blocks]. Returns float32 [n].
    """
    raise NotImplementedError


def block_influence(entering: list[torch.Tensor], leaving: list[torch.Tensor]) -> float:
    """Exercise 5a. ShortGPT's block influence of one transformer block.

    entering[j], leaving[j]: the hidden states [B, T, dim] entering and leaving the block on batch j (the residual
    stream before the block and after it). With cos(a, b) = a . b / (|a| |b|) taken per token over the dim axis,

        BI = 1 - (sum over every token of every batch of cos(entering, leaving)) / (number of tokens)

    0 for a block that leaves the stream's direction unchanged; depth pruning removes the blocks of least BI.
    Returns a float.
    """
    raise NotImplementedError


def keep_blocks_state(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """Exercise 5b. The state dict of a model cut to the blocks `keep` (block indices, in any order).

    Block i's tensors are named "model.layers.{i}.<rest>". Keep only the blocks in `keep`, renumbered in their
    order in the model: the j-th smallest index in `keep` becomes block j ("model.layers.{j}.<rest>"). Every tensor
    outside the blocks (embeddings, the final norm, the head) stays under its name. Returns a new dict; a CausalLM
    with len(keep) layers must load it with strict=True.
    """
    raise NotImplementedError
