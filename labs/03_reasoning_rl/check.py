"""Lab 03's checks (labs/03_reasoning_rl/exercises.py), and the summary of RL runs for exercise 8.

    alignlab lab check 3                                       # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 3 2                                     # one of them
    python labs/03_reasoning_rl/check.py 1 4 [--module my.py]  # the same, without the CLI
    python labs/03_reasoning_rl/check.py --runs runs/grpo_tinyworld runs/drgrpo_tinyworld    # exercise 8's runs

Each check compares the learner's function with alignlab's on seeded random inputs, or runs it through alignlab's
own machinery. Exercise 8 is a training run with no automatic check: --runs prints what to compare.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from alignlab.lab import assert_close as close
from alignlab.objectives.rl import ClipConfig, gae, group_advantages, grpo_loss, kl_k3, rloo_advantages
from alignlab.rewards import RewardRunner
from alignlab.rl.monitor import ALARMS, check_alarms

# ----------------------------------------------------------------------------------------------------------------
# The checks, one per exercise


def check_1(ex) -> str:
    g = torch.Generator().manual_seed(1)
    r = torch.randint(0, 3, (6, 8), generator=g).double()
    r[0] = 1.0  # a zero-variance group
    r[1, [2, 5]] = math.nan  # unscored completions
    r[2, 1:] = math.nan  # a single scored completion
    r[3] = math.nan  # nothing scored
    r[4] = torch.rand(8, generator=g, dtype=torch.float64)  # continuous rewards
    for scale in ("group", "batch", "none"):
        close(ex.group_advantages_by_hand(r.clone(), scale), group_advantages(r, scale=scale),
              f"group_advantages_by_hand(rewards [6, 8] with NaN, scale={scale!r})")
    return "group, batch and none, with NaN, zero-variance and single-completion groups"


def check_2(ex) -> str:
    g = torch.Generator().manual_seed(2)
    N, T = 6, 9
    for loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"):
        for eps_high in (0.2, 0.28):
            base = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
            old = base + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.3  # ratios inside and outside
            adv = torch.randn(N, generator=g, dtype=torch.float64)
            lengths = torch.randint(1, T + 1, (N,), generator=g)
            mask = (torch.arange(T)[None] < lengths[:, None]).double()
            mine, ref = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
            got = ex.grpo_loss_by_hand(mine, old, adv, mask, loss_type, 0.2, eps_high, max_completion_length=T)
            clip = ClipConfig(loss_type, 0.2, eps_high, max_completion_length=T)
            want, _ = grpo_loss(ref, old, None, adv, mask, clip)
            what = f"grpo_loss_by_hand([{N}, {T}], loss_type={loss_type!r}, epsilon_high={eps_high})"
            close(got.detach(), want.detach(), f"{what}: loss")
            got.backward()
            want.backward()
            if mine.grad is None:
                raise AssertionError(f"{what}: no gradient reached logps")
            close(mine.grad * mask, ref.grad * mask, f"{what}: gradient")
    return "grpo, bnpo, dapo, dr_grpo x symmetric and clip-higher: values and gradients"


def check_3(ex) -> str:
    g = torch.Generator().manual_seed(3)
    for G in (2, 4, 8):
        r = torch.randn(5, G, generator=g, dtype=torch.float64)
        close(ex.rloo_by_hand(r.clone()), rloo_advantages(r), f"rloo_by_hand(rewards [5, {G}])")
        want = G / (G - 1) * (r - r.mean(1, keepdim=True))
        close(ex.rloo_by_hand(r.clone()), want, f"rloo_by_hand(rewards [5, {G}]) against G/(G-1) (r - mean)")
    return "G = 2, 4, 8; equal to G/(G-1) (r - mean)"


def check_4(ex) -> str:
    g = torch.Generator().manual_seed(4)
    a, b = -torch.rand(7, 5, generator=g, dtype=torch.float64) * 4, -torch.rand(7, 5, generator=g, dtype=torch.float64)
    close(ex.k3_by_hand(a, b), kl_k3(a, b), "k3_by_hand on random log-probs [7, 5]")
    # Monte Carlo: tokens sampled from p, scored under p and q; both estimators average to KL(p || q)
    p = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64) * 0.5 + p.log(), 0)
    n = 200_000
    tokens = torch.multinomial(p, n, replacement=True, generator=g)
    logp, ref = p.log()[tokens], q.log()[tokens]
    k1, k3 = logp - ref, torch.as_tensor(ex.k3_by_hand(logp, ref), dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    if (k3 < 0).any():
        raise AssertionError("k3_by_hand is negative somewhere; k3 never is (e^x >= 1 + x)")
    for name, est in (("k1", k1), ("k3", k3)):
        if abs(float(est.mean()) - kl) > 4 * float(est.std()) / math.sqrt(n):
            raise AssertionError(f"mean {name} = {float(est.mean()):.5f}, KL = {kl:.5f}: biased")
    return (f"KL(p||q) = {kl:.5f}; over {n:,} samples: mean k1 = {float(k1.mean()):.5f} (variance "
            f"{float(k1.var()):.5f}, {float((k1 < 0).float().mean()):.1%} negative), mean k3 = {float(k3.mean()):.5f} "
            f"(variance {float(k3.var()):.5f})")


def check_5(ex) -> str:
    g = torch.Generator().manual_seed(5)
    N, T = 5, 8
    lengths = torch.tensor([8, 5, 1, 3, 7])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    for gamma, lam in ((1.0, 0.95), (0.99, 1.0), (1.0, 0.0), (0.9, 0.5)):
        rewards = torch.randn(N, T, generator=g, dtype=torch.float64)  # garbage past each row's end, on purpose
        values = torch.randn(N, T, generator=g, dtype=torch.float64)
        got_a, got_r = ex.gae_by_hand(rewards.clone(), values.clone(), mask, gamma, lam)
        want_a, want_r = gae(rewards, values, mask, gamma, lam)
        close(got_a, want_a, f"gae_by_hand([{N}, {T}], gamma={gamma}, lam={lam}): advantages")
        close(got_r, want_r, f"gae_by_hand([{N}, {T}], gamma={gamma}, lam={lam}): returns")
    return "four (gamma, lambda) pairs, rows of unequal length with garbage in the padding"


BOXED_CASES = [  # (completion, gold, expected)
    ("So she makes \\boxed{18} dollars.", "Janet sells 9 eggs.\n#### 18", 1.0),
    ("First \\boxed{16}, no wait: \\boxed{18}", "18", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{ 72 }.", "#### 72", 1.0),
    ([{"role": "assistant", "content": "\\boxed{72}"}], "72", 1.0),
    ("The answer is 72.", "72", 0.0),
    ("\\boxed{71}", "72", 0.0),
    ("\\boxed{72", "72", 0.0),
    ("\\boxed{}", "72", 0.0),
    ("\\boxed{72}", None, None),
    ("\\boxed{72}", "", None),
    ("\\boxed{72}", "####", None),
]


def check_6(ex) -> str:
    completions, golds, expected = zip(*BOXED_CASES)
    got = ex.boxed_correctness(None, list(completions), answer=list(golds))
    if len(got) != len(completions):
        raise AssertionError(f"boxed_correctness: {len(got)} rewards for {len(completions)} completions")
    for c, gold, want, value in zip(completions, golds, expected, got):
        if value != want:
            raise AssertionError(f"boxed_correctness: completion {c!r}, gold {gold!r}: got {value!r}, "
                                 f"expected {want!r}")
    # what a policy might write: it must never raise or hang
    g = torch.Generator().manual_seed(6)
    alphabet = list("0123456789{}\\$,./-+ x") + ["\\boxed{", "\\frac{", "</think>", "<think>", "}}", "####"]
    fuzz = ["".join(alphabet[i] for i in torch.randint(0, len(alphabet), (int(n),), generator=g))
            for n in torch.randint(0, 60, (300,), generator=g)]
    fuzz += ["", "\\boxed{" * 50, "}" * 50, "\\boxed{9" + "9" * 400 + "}", [], [{"role": "assistant", "content": None}],
             [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{72}"}]}]]
    runner = RewardRunner([ex.boxed_correctness], timeout_s=10, warn=lambda message: None)
    values = list(runner(None, fuzz, answer=["72"] * len(fuzz)).values())[0]
    stats = runner.stats[runner.names[0]]
    if stats.errors or stats.timeouts:
        raise AssertionError(f"boxed_correctness, run by RewardRunner on {len(fuzz)} malformed completions: "
                             f"{stats.last_error or 'it timed out'}")
    if any(v not in (0.0, 1.0) for v in values):
        raise AssertionError(f"boxed_correctness gave malformed completions rewards other than 0 or 1: "
                             f"{sorted(set(values), key=str)}")
    return f"{len(BOXED_CASES)} cases right; {len(fuzz)} malformed completions, no error, no hang"


def check_7(ex) -> str:
    for alarm in ALARMS:
        history, evals = ex.alarm_history(alarm)
        raised = set(check_alarms(history, evals))
        if raised != {alarm}:
            raise AssertionError(f"alarm_history({alarm!r}) raises {sorted(raised) or 'nothing'}, expected exactly "
                                 f"[{alarm!r}]")
    return "each of " + ", ".join(ALARMS) + " alone"


def check_9(ex) -> str:
    import random

    from alignlab.eval.rerank import expected_vote
    from alignlab.tasks.tinyworld import step_labels

    g = random.Random(9)
    for _ in range(500):
        steps = []
        for _ in range(g.randint(0, 4)):
            a, b, op = g.randint(0, 99), g.randint(0, 99), g.choice("+-*")
            c = {"+": a + b, "-": a - b, "*": a * b}[op] + (0 if g.random() < 0.7 else g.choice((-10, -1, 1, 10)))
            steps.append(f"{a} {op} {b} = {c}")
        reply = "<think>" + "\n".join(steps) + f"</think>\nAnswer: {g.randint(0, 99)}"
        if list(ex.first_error_labels(reply)) != step_labels(reply):
            raise AssertionError(f"first_error_labels({reply!r}): got {ex.first_error_labels(reply)}, expected "
                                 f"{step_labels(reply)}")
    for _ in range(300):
        answers = [g.choice(("12", "13", "14", None)) for _ in range(8)]
        n = g.randint(1, 8)
        want, got = expected_vote(answers, "12", n), ex.expected_majority(answers, "12", n)
        if abs(got - want) > 1e-9:
            raise AssertionError(f"expected_majority({answers}, '12', {n}): got {got}, expected {want}")
    return "500 random worked solutions against tinyworld.step_labels; 300 vote sets against rerank.expected_vote"


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7, 9: check_9}

# ----------------------------------------------------------------------------------------------------------------
# Exercise 8: summaries of run directories


def _ends(values: list[float], k: int = 10) -> str:
    if not values:
        return "-"
    k = max(1, min(k, len(values) // 2))
    return f"{sum(values[:k]) / k:.3g} -> {sum(values[-k:]) / k:.3g}"


def summarise(run: Path) -> dict[str, str]:
    """A run's held-out accuracy at the start and the end, its minutes and alarms (result.json), and the first
    and last ten logged values of the RL monitors (metrics.jsonl)."""
    row = {"run": str(run)}
    result_path, metrics_path = run / "result.json", run / "metrics.jsonl"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        start = result.get("start", {})
        acc0, acc1 = start.get("val/accuracy"), result.get("val/accuracy")
        row["val/accuracy"] = (f"{acc0:.1%} -> {acc1:.1%}" if acc0 is not None and acc1 is not None else "-")
        fmt = result.get("val/format_rate")
        row["val/format_rate"] = f"{fmt:.1%}" if fmt is not None else "-"
        row["minutes"] = f"{result.get('train_seconds', math.nan) / 60:.1f}"
        row["alarms"] = ", ".join(result.get("alarms", {})) or "none"
    if metrics_path.exists():
        lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        for key in ("reward", "completions/mean_length", "entropy", "kl", "frac_reward_zero_std"):
            row[key] = _ends([r[key] for r in lines if isinstance(r.get(key), (int, float))])
    if len(row) == 1:
        row["error"] = "no result.json or metrics.jsonl here"
    return row


def print_runs(runs: list[str]) -> None:
    rows = [summarise(Path(r)) for r in runs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for r in rows:
        print("\n".join(f"{k:24s} {r.get(k, '-')}" for k in keys))
        print()


# ----------------------------------------------------------------------------------------------------------------


if __name__ == "__main__":
    if "--runs" in sys.argv:
        runs = sys.argv[sys.argv.index("--runs") + 1:]
        if not runs:
            sys.exit("usage: check.py --runs DIR [DIR ...]")
        print_runs(runs)
        sys.exit(0)
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
