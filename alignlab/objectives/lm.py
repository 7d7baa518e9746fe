"""Next-token cross-entropy, normalised by the number of target tokens.

    L = -(1 / N) * sum_{t : y_t != ignore} log softmax(z_t)[y_t]

z_t are the logits at position t and y_t the token that follows it (labels are the inputs shifted left by
one; positions that should not be learned, such as prompts and padding, carry IGNORE_INDEX).

N matters with gradient accumulation. Averaging each micro-batch's mean and then averaging those gives
every micro-batch the same weight, so a token in a short micro-batch counts more than one in a long one.
Passing N = the number of target tokens in the whole accumulated batch to every micro-batch makes the
summed gradients exactly those of one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (already aligned: labels[:, t] is the target of logits[:, t]).

    num_tokens: the normaliser N; default = the target tokens in this call (a plain mean).
    """
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    if num_tokens is None:
        num_tokens = (labels != IGNORE_INDEX).sum()
    return total / num_tokens
