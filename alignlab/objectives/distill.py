"""Knowledge distillation: a student's next-token distributions pulled toward a teacher's, token by token.

    loss = distill_loss(student_logits, teacher_logits, labels, beta=0.5, temperature=1.0)

With p_T = softmax(teacher / tau) and p_S = softmax(student / tau) at each position whose label is not -100,

    beta = 0     forward KL(p_T || p_S) = sum_v p_T log(p_T / p_S)        the classic soft-target loss (Hinton et al.
                                                                          2015): the student covers every mode
    beta = 1     reverse KL(p_S || p_T) = sum_v p_S log(p_S / p_T)        mode-seeking (MiniLLM, Gu et al. 2023)
    0 < beta < 1 generalized JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M),   M = beta p_T + (1 - beta) p_S
                                                                          (GKD, Agarwal et al. 2023, arXiv:2306.13649)

averaged over the kept positions. These are trl's GKD conventions (`GKDTrainer.generalized_jsd_loss`), and the
values equal trl's on the same logits. Temperature softens both distributions alike; Hinton's tau^2 factor, which
keeps gradient sizes comparable across temperatures, is the caller's to apply. On-policy distillation (GKD's
lambda) changes only where the sequences come from: the student's own samples instead of the teacher's or the data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alignlab.objectives.lm import IGNORE_INDEX


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                     temperature: float = 1.0) -> torch.Tensor:
    """[..., V] logits -> [...] the divergence of the module docstring at each position (in fp32)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0.0:
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if beta == 1.0:
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                 beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """The mean of `token_divergence` over positions whose label is not -100 (all positions without labels)."""
    d = token_divergence(student_logits, teacher_logits, beta, temperature)
    if labels is None:
        return d.mean()
    keep = labels != IGNORE_INDEX
    return d[keep].sum() / keep.sum().clamp_min(1)


def forward_kl(student_logits, teacher_logits, labels=None, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_T || p_S), averaged over the kept positions."""
    return distill_loss(student_logits, teacher_logits, labels, 0.0, temperature)


def reverse_kl(student_logits, teacher_logits, labels=None, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_S || p_T), averaged over the kept positions."""
    return distill_loss(student_logits, teacher_logits, labels, 1.0, temperature)
