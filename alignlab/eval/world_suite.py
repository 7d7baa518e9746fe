"""Evaluate a model on TinyWorld's held-out prompts: generate greedy replies, then score them.

    metrics, rows = evaluate_on_world(model, tokenizer, TinyWorld(seed=0), per_level=50)

Tasks (all from the world's test split, which no training data contains):
    math     levels 1-4 (`rl_prompts("test")`): format_rate, accuracy (strict: right answer in the
             right format) per level and over all, accuracy_lenient (the right number anywhere), and
             step_errors: the worked steps wrong by kind, {kind: [wrong, total]} (tinyworld.step_errors)
    safety   attacks and benign look-alikes (`safety_prompts("test")`): attack_refusal_rate,
             over_refusal_rate, leak_rate, attack_success_rate

`rows` holds every prompt, reply and score, for reports and for reading what the model did.

    alignlab eval-world --model DIR [--seed 0] [--levels 1,2,3,4] [--per-level 50] [--safety 40] [--out replies.jsonl]
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isnan

import torch

from alignlab.data.world import MATH_LEVELS
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.tasks import tinyworld as tw


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 128,
                     batch_size: int = 64, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Replies to chat prompts (lists of messages), rendered with the tokenizer's chat template: greedy,
    or sampled at `temperature` with prompt i drawing from its own generator seeded seed + i (so a reply
    does not depend on the batch it was in). It computes in the model's dtype, under the caller's autocast if any
    (a training run's evaluation runs under the Trainer's)."""
    was_training = model.training
    model.eval()
    engine = Engine(model, tokenizer)
    replies = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in chunk]
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i + j)
                  for j in range(len(chunk))]
        replies += [c.text for c in engine.generate(ids, params)]
    model.train(was_training)
    return replies


def user_text(prompt: list[dict]) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def evaluate_on_world(model, tokenizer, world, per_level: int | None = None, safety: int | None = None,
                      max_new_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
                      levels: Sequence[int] = MATH_LEVELS) -> tuple[dict, list[dict]]:
    """Scores and scored rows. `per_level` and `safety` cap how many prompts of each kind are used
    (None = all of the test split); `levels` picks the math levels. Greedy replies unless `temperature` > 0
    (then seeded by `seed`)."""
    levels = check_levels(levels)
    math = [r for level in levels for r in world.rl_prompts("test", level=level)[:per_level]]
    safe = world.safety_prompts("test")
    if safety is not None:  # keep both labels: the first `safety` attacks and as many look-alikes
        safe = [r for label in ("attack", "benign") for r in [r for r in safe if r["label"] == label][:safety]]
    replies = generate_replies(model, tokenizer, [r["prompt"] for r in math + safe], max_new_tokens,
                               temperature=temperature, seed=seed)
    math_out, safe_out = replies[:len(math)], replies[len(math):]

    rows, metrics = [], {}
    for r, out in zip(math, math_out, strict=True):
        rows.append({"task": "math", "level": r["level"], "id": r["id"], "prompt": user_text(r["prompt"]),
                     "reply": out, "answer": r["answer"], "format_ok": tw.format_ok(out),
                     "correct": tw.is_correct(out, r["answer"]),
                     "correct_lenient": tw.is_correct(out, r["answer"], strict=False)})
    math_rows = [r for r in rows if r["task"] == "math"]
    metrics["format_rate"] = _mean(r["format_ok"] for r in math_rows)
    metrics["accuracy"] = _mean(r["correct"] for r in math_rows)
    metrics["accuracy_lenient"] = _mean(r["correct_lenient"] for r in math_rows)
    for level in levels:
        metrics[f"accuracy_L{level}"] = _mean(r["correct"] for r in math_rows if r["level"] == level)
        metrics[f"n_L{level}"] = sum(r["level"] == level for r in math_rows)
    metrics["step_errors"] = tw.step_errors([r["reply"] for r in math_rows])

    for r, out in zip(safe, safe_out, strict=True):
        rows.append({"task": "safety", "label": r["label"], "category": r["category"], "id": r["id"],
                     "prompt": user_text(r["prompt"]), "reply": out, "refused": tw.is_refusal(out),
                     "leaked": tw.leaks_secret(out, world.secret)})
    scores = tw.safety_scores(safe_out, safe, world.secret)
    metrics.update({k: v for k, v in scores.items() if not k.startswith("n_")})
    metrics["n_math"], metrics["n_attacks"], metrics["n_benign"] = len(math), scores["n_attacks"], scores["n_benign"]
    return metrics, rows


@torch.no_grad()
def pass_rates(model, tokenizer, world, levels: Sequence[int], per_level: int | None = None, k: int = 8,
               max_new_tokens: int = 128, seed: int = 0) -> tuple[dict, list[dict]]:
    """How often a model solves held-out problems greedily, and how often one of k samples (temperature 1) does:

        pass@1 (greedy)   the share of prompts answered right by the greedy reply (what the accuracy table reports)
        pass@1 (sampled)  the mean share of right answers among k samples: c / k averaged over prompts
        pass@k            the share of prompts with at least one right sample (Chen et al. 2021, arXiv:2107.03374,
                          with n = k samples, where the unbiased estimator 1 - C(n - c, k) / C(n, k) is [c > 0])

    RL with a verifiable reward turns what a model sometimes does into what it usually does: it can raise pass@1
    toward pass@k, not beyond what the samples ever reach, so pass@k well above pass@1 is the headroom it has.
    Returns the three rates and a row per prompt ({"id", "level", "greedy": bool, "right": c}), for paired
    comparisons of two models on the same prompts."""
    records = [r for level in check_levels(levels) for r in world.rl_prompts("test", level=level)[:per_level]]
    prompts = [r["prompt"] for r in records]
    greedy = generate_replies(model, tokenizer, prompts, max_new_tokens, seed=seed)
    sampled = generate_replies(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens,
                               temperature=1.0, seed=seed)
    rows = []
    for i, r in enumerate(records):
        right = sum(tw.is_correct(out, r["answer"]) for out in sampled[i * k:(i + 1) * k])
        rows.append({"id": r["id"], "level": r["level"], "greedy": tw.is_correct(greedy[i], r["answer"]),
                     "right": right})
    rates = {"pass1_greedy": _mean(r["greedy"] for r in rows), "pass1_sampled": _mean(r["right"] / k for r in rows),
             f"pass{k}": _mean(r["right"] > 0 for r in rows), "k": k, "prompts": len(rows)}
    return rates, rows


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def check_levels(levels: Sequence[int]) -> list[int]:
    """The math levels asked for, each once and in order; a clear error for none or an unknown one."""
    unknown = sorted(set(levels) - set(MATH_LEVELS))
    if unknown or not levels:
        problem = f"unknown math level(s) {unknown}" if unknown else "no math level given"
        raise ConfigError(f"{problem}; TinyWorld's math levels are {', '.join(map(str, MATH_LEVELS))}")
    return list(dict.fromkeys(levels))


def metric_lines(metrics: dict) -> list[str]:
    """The metrics as `alignlab eval-world` prints them: one a line, rates as percentages, worked steps wrong / all
    by kind, and n/a for a rate of no prompts."""
    lines = []
    for k, v in metrics.items():
        if k == "step_errors":
            v = ", ".join(f"{kind} {tw.step_error_text(*wn)}" for kind, wn in v.items()) or "no worked steps"
        if isinstance(v, float) and isnan(v):
            v = "n/a (no such prompts asked)"
        lines.append(f"{k:<22} {v:.1%}" if isinstance(v, float) else f"{k:<22} {v}")
    return lines
