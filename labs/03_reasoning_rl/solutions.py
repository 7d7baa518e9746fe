"""Lab 03's reference solutions: one way to write each exercise, straight from the formulas in exercises.py and the
lab's README. Read them after your own attempt (`alignlab lab solution 3 N` prints one); exercise 8 is a training
run and has none.
"""

from __future__ import annotations

import itertools
import re

import torch

from alignlab.rewards import gold_answer, parse_number


def group_advantages_by_hand(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """Exercise 1. GRPO's group-relative advantages."""
    scored = ~rewards.isnan()  # [B, G]
    r = rewards.nan_to_num(0.0)  # NaN rewards count as 0 in the sums, and the counts leave them out

    def std(x: torch.Tensor, keep: torch.Tensor, dim) -> torch.Tensor:
        # unbiased std over the scored entries; NaN when fewer than two (then every advantage becomes 0 below)
        n = keep.sum(dim, keepdim=True)
        mean = (x * keep).sum(dim, keepdim=True) / n
        var = (((x - mean) * keep) ** 2).sum(dim, keepdim=True) / (n - 1)
        return torch.where(n > 1, var.sqrt(), torch.nan)

    mean = (r * scored).sum(1, keepdim=True) / scored.sum(1, keepdim=True)  # [B, 1], per group
    advantages = r - mean
    if scale == "group":
        advantages = advantages / (std(r, scored, 1) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (std(r, scored, (0, 1)) + 1e-4)  # the mean per group, the std over the batch
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}")
    return torch.where(scored, advantages, 0.0).nan_to_num(0.0)  # unscored and single-completion groups: 0


def grpo_loss_by_hand(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      loss_type: str, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                      max_completion_length: int | None = None) -> torch.Tensor:
    """Exercise 2. GRPO's clipped surrogate, token-level ratios, beta = 0, one micro-batch (no accumulation)."""
    A = advantages[:, None]  # [N, 1]: every token of a completion gets its advantage
    ratio = torch.exp(logps - old_logps)  # [N, T]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * A, clipped * A)  # [N, T]; the clipped side has no gradient
    masked = per_token * mask
    if loss_type == "grpo":  # token mean per sequence, then the mean over sequences
        return (masked.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):  # one token mean over the micro-batch
        return masked.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":  # a constant denominator: no length bias
        return masked.sum() / (logps.shape[0] * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def rloo_by_hand(rewards: torch.Tensor) -> torch.Tensor:
    """Exercise 3. RLOO's leave-one-out advantages."""
    G = rewards.shape[1]
    others = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)  # [B, G]: the mean of the other G - 1 rewards
    return rewards - others


def k3_by_hand(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Exercise 4. The k3 estimate of KL(pi || pi_ref) at each sampled token."""
    d = ref_logps - logps  # log(pi_ref / pi)
    return torch.exp(d) - d - 1  # >= 0, since e^d >= 1 + d


def gae_by_hand(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 5. Generalised Advantage Estimation over right-padded rows."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # the padding's garbage becomes 0, so V = 0 past the end
    N, T = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(N, dtype=values.dtype)
    next_advantage = torch.zeros(N, dtype=values.dtype)
    for t in reversed(range(T)):  # right to left
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _last_boxed(text: str) -> str | None:
    r"""The content of the last complete \boxed{...} of the text (braces inside it balanced), or None."""
    starts = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]
    for start in reversed(starts):  # the last one that closes
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def boxed_correctness(prompts=None, completions=(), answer=None, **kwargs) -> list[float | None]:
    r"""Exercise 6. A reward function in trl's convention for answers written as \boxed{...}."""
    rewards = []
    for completion, gold in zip(completions, answer or [None] * len(completions)):
        try:
            if not isinstance(completion, str):  # a conversation: the last message's content
                content = completion[-1].get("content") if completion else ""
                if isinstance(content, list):  # [{"type": "text", "text": ...}]
                    content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
                completion = content or ""
            want = gold_answer(gold)  # "... #### 72" -> "72"; None when there is nothing to compare with
            if want is None:
                rewards.append(None)  # not 0.0: an unreadable gold answer says nothing about the completion
                continue
            boxed = _last_boxed(completion)
            got = None if boxed is None else parse_number(boxed)  # "1,000" -> 1000, "\frac{1}{2}" -> 1/2
            rewards.append(1.0 if got is not None and got == parse_number(want) else 0.0)
        except Exception:  # whatever the model wrote, a reward function must not crash the run
            rewards.append(0.0)
    return rewards


def alarm_history(alarm: str) -> tuple[list[dict], list[dict]]:
    """Exercise 7. (history, evals) on which check_alarms raises exactly this one alarm and no other."""
    # 20 quiet steps (two windows of 10), flat held-out accuracy; then change one metric in the last window
    history = [{"step": s, "reward": 1.0, "reward_std": 0.4, "completions/mean_length": 40.0, "kl": 0.01,
                "entropy": 0.5, "frac_reward_zero_std": 0.2} for s in range(1, 21)]
    evals = [{"step": 0, "val/accuracy": 0.5}, {"step": 20, "val/accuracy": 0.5}]
    last = history[10:]
    if alarm == "reward_hacking":  # the reward rises 0.5 (> 0.5 reward stds of 0.4) while accuracy stays flat
        for h in last:
            h["reward"] = 1.5
    elif alarm == "length_growth":  # twice as long (>= 1.5x), no accuracy gained
        for h in last:
            h["completions/mean_length"] = 80.0
    elif alarm == "kl_blowup":  # the latest KL above kl_max = 1 nat
        history[-1]["kl"] = 2.0
    elif alarm == "entropy_collapse":  # below 0.1 of the first window's entropy
        for h in last:
            h["entropy"] = 0.01
    elif alarm == "zero_variance":  # every group of the latest step had equal rewards
        history[-1]["frac_reward_zero_std"] = 1.0
    else:
        raise ValueError(f"unknown alarm {alarm!r}")
    return history, evals


def first_error_labels(reply: str) -> list[int]:
    """Exercise 9a. One label per worked step "a op b = c": 1 until the first wrong step, 0 from there on."""
    labels, ok = [], True
    for a, op, b, c in re.findall(r"(?<![\d-])(\d+) ([-+*]) (\d+) = (-?\d+)", reply):
        a, b, c = int(a), int(b), int(c)
        ok = ok and c == {"+": a + b, "-": a - b, "*": a * b}[op]  # once wrong, wrong for good
        labels.append(int(ok))
    return labels


def expected_majority(answers: list[str | None], gold: str, n: int) -> float:
    """Exercise 9b. The probability that a majority vote over n of the samples picks `gold`."""
    subsets = list(itertools.combinations(answers, n))
    total = 0.0
    for subset in subsets:
        counts: dict[str, int] = {}
        for a in subset:
            if a is not None:  # no answer parsed: no vote
                counts[a] = counts.get(a, 0) + 1
        if counts:
            top = max(counts.values())
            winners = [a for a, k in counts.items() if k == top]
            total += winners.count(gold) / len(winners)  # a tie is broken uniformly at random
    return total / len(subsets)

