"""Verifier losses: a reward model that says how likely a solution (or each of its steps) is right.

A verifier is a reward model (model/reward.py: backbone + scalar head) read as a classifier: its score s at a
position is a logit, sigma(s) the probability that what came before is right. Two kinds, one loss:

    outcome reward model (ORM)   one label a solution, at its last token: is the final answer right?
                                 (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems",
                                 arXiv:2110.14168; Uesato et al. 2022, arXiv:2211.14275)
    process reward model (PRM)   one label a step, at the token that ends the step: is every step so far
                                 right? (Uesato et al. 2022; Lightman et al. 2023, "Let's Verify Step by Step",
                                 arXiv:2305.20050, with human labels, PRM800K; Wang et al. 2023, Math-Shepherd,
                                 arXiv:2312.08935, with automatic ones)

Both fit the labels y in {0, 1} by binary cross-entropy over the labelled positions S:

    L = -1/N  sum_{(b, t) in S}  y_bt log sigma(s_bt) + (1 - y_bt) log sigma(-s_bt)        N = |S| by default

An ORM has one position in S a row, a PRM one a step. The score of a whole solution under a PRM combines its
steps' probabilities: their minimum (Lightman et al.: a solution is as good as its worst step) or their
product (the probability that every step is right, if the steps were independent); see eval/rerank.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.objectives.lm import IGNORE_INDEX  # a position without a label


def verifier_loss(scores: torch.Tensor, labels: torch.Tensor, num_labels: float | None = None) -> torch.Tensor:
    """Binary cross-entropy of scores (logits) against 0/1 labels, summed over labelled positions / num_labels.

    scores [B, T] (a head at every position) or [B] (one a row), labels of the same shape: 0 or 1, IGNORE_INDEX
    where there is no label. num_labels: the divisor N (default: the labelled positions here; a recipe passes the
    global count, so accumulated micro-batches give the mean over the whole batch). Computed in fp32."""
    mask = labels != IGNORE_INDEX  # [B, T]
    y = labels.masked_fill(~mask, 0).float()
    # -[y log sigma(s) + (1 - y) log sigma(-s)], in its stable form: max(s, 0) - s y + log(1 + exp(-|s|))
    per = F.binary_cross_entropy_with_logits(scores.float(), y, reduction="none")  # [B, T]
    n = mask.sum() if num_labels is None else num_labels
    return (per * mask).sum() / max(float(n), 1.0)


@torch.no_grad()
def verifier_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy (sigma(s) > 1/2 agrees with the label), positive_rate (share of labels 1), mean_prob, over the
    labelled positions."""
    mask = labels != IGNORE_INDEX
    s, y = scores.float()[mask], labels[mask].float()
    if s.numel() == 0:
        return {}
    return {"accuracy": ((s > 0).float() == y).float().mean().item(), "positive_rate": y.mean().item(),
            "mean_prob": torch.sigmoid(s).mean().item()}
