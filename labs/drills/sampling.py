"""Sampling the next token: temperature, top-k and top-p (nucleus) filtering, then one draw per row.

Write two functions; every parameter is one number for the whole batch.

filter_logits(logits [B, V], temperature, top_k, top_p) -> [B, V]: the logits the draw uses, in this order
(Hugging Face's order):
    1. temperature   l = logits / temperature                                   (temperature > 0 here)
    2. top-k         keep, in each row, the top_k largest logits and every logit equal to the top_k-th largest
                     (ties are kept); top_k = 0 or top_k >= V keeps everything
    3. top-p         sort the survivors of step 2 by probability pi = softmax(l) (removed tokens have pi = 0),
                     pi_(1) >= pi_(2) >= ..., and keep token (i) iff  sum_{j < i} pi_(j) < top_p : the smallest
                     set of most likely tokens whose mass reaches top_p (the most likely token always stays);
                     top_p = 1.0 keeps everything                         (Holtzman et al. 2019, arXiv:1904.09751)
    A removed token's logit becomes -inf; a kept token keeps its value from step 1.

sample_next(logits [B, V], temperature, top_k, top_p, generator) -> tokens [B] (int64):
    temperature == 0 means greedy decoding: the argmax of each row, whatever top_k and top_p say. Otherwise draw
    one token per row from softmax(filter_logits(logits, temperature, top_k, top_p)), taking all randomness from
    `generator` (a torch.Generator), so the same seed gives the same tokens.

The check compares filter_logits with alignlab's processors exactly (the kept set and the values), asks for the
argmax where the answer is deterministic, and draws a few thousand tokens to compare their frequencies with the
filtered distribution (a seeded draw, a tolerance of 0.03 per token).

Target: 20 minutes.

Rules: no alignlab imports; torch and the standard library only. Grade it with `alignlab lab drill sampling
--check` (it prints the time since you started); `alignlab lab drill sampling --solution` shows a reference solution.
"""

import torch


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> [B, V]: temperature, then top-k, then top-p; removed tokens at -inf."""
    raise NotImplementedError


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> tokens [B]: argmax when temperature == 0, else a draw from the filtered distribution."""
    raise NotImplementedError
