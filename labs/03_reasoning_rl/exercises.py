"""Lab 03 exercises: fill in each function, then grade your work with

    alignlab lab check 3            # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 3 2          # only exercise 2
    alignlab lab solution 3 2       # the reference solution of exercise 2, once you have tried

The checker compares your functions with alignlab's on random inputs (values and gradients) or runs them
through alignlab's own machinery (RewardRunner, check_alarms). Write each one from the formulas in the lab's
README, not by calling the alignlab function it is checked against: that would pass and teach nothing.
Exercise 8 is a training run; `python labs/03_reasoning_rl/check.py --runs DIR ...` summarises run directories for it.
"""

from __future__ import annotations

import torch


def group_advantages_by_hand(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """Exercise 1. GRPO's group-relative advantages.

    rewards [B, G]: G completions of each of B prompts; NaN marks a completion no reward function could score.
    scale "group": A = (r - mean of its group) / (unbiased std of its group + 1e-4)
          "batch": the mean still per group, the std over all rewards of the batch
          "none":  A = r - mean of its group (Dr. GRPO)
    NaN rewards take no part in any mean or std, and get advantage 0. A std over fewer than two rewards is NaN,
    so a group with a single scored completion gets 0 everywhere. Returns [B, G].
    """
    raise NotImplementedError


def grpo_loss_by_hand(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      loss_type: str, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                      max_completion_length: int | None = None) -> torch.Tensor:
    """Exercise 2. GRPO's clipped surrogate, token-level ratios, beta = 0, one micro-batch (no accumulation).

    logps, old_logps [N, T]: per-token log-probs under pi_theta (with gradient) and pi_old; advantages [N];
    mask [N, T] (1 on completion tokens). Per token:
        rho = exp(logp - old_logp);  l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
    and the normalisation of loss_type: "grpo" (token mean per sequence, then mean over sequences), "bnpo" and
    "dapo" (sum over all tokens / number of tokens; the same on one micro-batch), "dr_grpo" (sum over all tokens /
    (N * max_completion_length)). Returns the scalar loss; the checker compares its value and its gradient.
    """
    raise NotImplementedError


def rloo_by_hand(rewards: torch.Tensor) -> torch.Tensor:
    """Exercise 3. RLOO's leave-one-out advantages, rewards [B, G] (no NaN), G >= 2:
        A_i = r_i - mean of the other G - 1 rewards of its group.   Returns [B, G]."""
    raise NotImplementedError


def k3_by_hand(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Exercise 4. The k3 estimate of KL(pi || pi_ref) at each sampled token (same shape as the inputs):
        k3 = exp(ref - logp) - (ref - logp) - 1"""
    raise NotImplementedError


def gae_by_hand(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 5. Generalised Advantage Estimation over right-padded rows; returns (advantages, returns), [N, T].

        delta_t = r_t + gamma V_{t+1} - V_t       (V = 0 after a row's last unmasked token)
        A_t     = delta_t + gamma lam A_{t+1}     (right to left)
        R_t     = A_t + V_t
    Both are 0 where mask = 0; rewards and values there must not leak into the unmasked positions.
    """
    raise NotImplementedError


def boxed_correctness(prompts=None, completions=(), answer=None, **kwargs) -> list[float | None]:
    r"""Exercise 6. A reward function in trl's convention for answers written as \boxed{...}.

    completions: strings, or lists of messages ([{"role": "assistant", "content": ...}]: score the last one).
    answer: the gold column, one per completion, GSM8K style ("... #### 72") or plain ("72", "0.5").
    1.0 if the content of the completion's LAST \boxed{...} equals the gold answer as a number ("1,000" ==
    "1000", "\frac{1}{2}" == "0.5"), 0.0 if it does not or there is no complete \boxed{...}, None if the gold
    answer cannot be read (None, "", "####" with nothing after it). It must never raise, whatever the model
    wrote. You may use alignlab.rewards' helpers (extract_answer, gold_answer, answers_equal, completion_text).
    """
    raise NotImplementedError


def alarm_history(alarm: str) -> tuple[list[dict], list[dict]]:
    """Exercise 7. (history, evals) on which alignlab.rl.monitor.check_alarms, with the default AlarmConfig(),
    raises exactly this one alarm and no other. alarm: reward_hacking, length_growth, kl_blowup,
    entropy_collapse or zero_variance.

    history: per-step metrics, oldest first, e.g. {"step": 1, "reward": 1.0, "reward_std": 0.4,
    "completions/mean_length": 40.0, "kl": 0.01, "entropy": 0.5, "frac_reward_zero_std": 0.2};
    evals: held-out evaluations, oldest first, e.g. {"step": 0, "val/accuracy": 0.5}.
    """
    raise NotImplementedError


def first_error_labels(reply: str) -> list[int]:
    """Exercise 9a. One label per worked step "a op b = c" of a reply (a, b, c whole numbers, c may be negative;
    op one of + - *), in order: 1 while every step so far has c equal to a op b, 0 from the first wrong step on
    (PRM800K's first-error convention)."""
    raise NotImplementedError


def expected_majority(answers: list[str | None], gold: str, n: int) -> float:
    """Exercise 9b. The probability that a majority vote over n of the samples, drawn without replacement from
    `answers` (None: no answer parsed, no vote), picks `gold`: the mean over every n-subset, where a tie between
    the most-voted answers is broken uniformly at random and a subset without any answer picks nothing."""
    raise NotImplementedError
