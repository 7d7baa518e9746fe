"""Lab 02's reference solutions: sequence log-probs, DPO, IPO, SimPO, the win rate and the reward model's loss,
written straight from the formulas.

Try each exercise first (labs/02_preference_alignment/exercises.py); `alignlab lab solution 2 N` prints one of these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 1. The summed log-probability of each sequence's labelled tokens, and how many there are."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = labels != IGNORE_INDEX  # (B, T)
    safe = labels.masked_fill(~mask, 0)  # -100 is no index: gather at 0 there, and mask it out below
    token_logps = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T): log p of each label
    token_logps = token_logps * mask  # prompt and padding positions count for nothing
    return token_logps.sum(-1), mask.sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 2. The DPO loss, with conservative DPO's label smoothing."""
    chosen_logratios = policy_chosen - ref_chosen  # c_w
    rejected_logratios = policy_rejected - ref_rejected  # c_l
    z = beta * (chosen_logratios - rejected_logratios)  # beta h
    eps = label_smoothing
    # with probability eps the label is flipped: the flipped pair's loss is -log sigma(-beta h)
    losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 3a. IPO's squared loss on length-averaged log-ratios."""
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    h_avg = chosen_logratios / chosen_len.clamp(min=1) - rejected_logratios / rejected_len.clamp(min=1)
    losses = (h_avg - 1 / (2 * beta)) ** 2  # regress the margin onto 1/(2 beta) instead of pushing it to infinity
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_len: torch.Tensor,
               rejected_len: torch.Tensor, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 3b. SimPO: no reference model, length-normalised rewards and a target margin gamma."""
    chosen_rewards = beta * policy_chosen / chosen_len.clamp(min=1)  # beta * average log-prob
    rejected_rewards = beta * policy_rejected / rejected_len.clamp(min=1)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)  # win by at least gamma reward units
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def win_rate(outcomes: list[str]) -> float:
    """Exercise 4. Model A's win rate over model B from pairwise verdicts, ties counted as half a win."""
    if not outcomes:
        return math.nan
    score = {"A": 1.0, "tie": 0.5, "B": 0.0}
    return sum(score[o] for o in outcomes) / len(outcomes)


def reward_model_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                      margin: torch.Tensor | None = None, center_coefficient: float | None = None) -> torch.Tensor:
    """Exercise 5. The Bradley-Terry loss of a reward model, with an optional margin and centring term."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin  # the chosen answer must win by at least m
    losses = -F.logsigmoid(diff)
    if center_coefficient is not None:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses.mean()
