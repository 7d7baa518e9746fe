"""Best-of-n with verifiers: pick one of n sampled solutions by a process reward model, an outcome reward model or a
vote, and see how often the pick is right as n grows.

    run_rerank(policy, prm, orm, "tinyworld:rl:3-4:test@0", n=8)   # samples, scores, rerank.json, rerank.png
    rerank_curves(picks, correct, answers, ns=(1, 2, 4, 8))         # the same from scores already computed

The pickers (Lightman et al. 2023, arXiv:2305.20050, sec. 3-4; Uesato et al. 2022, arXiv:2211.14275):

    prm_min     the solution whose worst step is most likely right: score = min_k sigma(s_k)
    prm_prod    the solution most likely right in every step: score = prod_k sigma(s_k)
    orm         the solution whose final answer is most likely right: score = sigma(s_last)
    majority    the answer most solutions reach (self-consistency, Wang et al. 2022, arXiv:2203.11171); a
                tie between answers is broken at random, so a tied right answer counts 1 / (answers tied)
    prm_vote    the same vote with each solution weighing its prm_min score (Uesato et al.'s weighted vote)
    oracle      pass@n: right if any of the n is (the ceiling every picker sits under)

A solution without worked steps gets a PRM score of 0: it shows no work to check. Unparsable answers do not vote.

Accuracy at n is exact, not a resample: the expectation over every n-subset of a prompt's N samples.
eval/overoptimization.expected_best gives it in closed form for the score pickers; the votes enumerate the
C(N, n) subsets (70 at most for N = 8); pass@n is the unbiased estimator (eval/stats.pass_at_k). Each point's
95% interval is the percentile bootstrap over prompts (eval/stats.bootstrap_ci).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

from alignlab.eval.overoptimization import expected_best, sample_replies
from alignlab.eval.stats import bootstrap_ci, paired_bootstrap_ci, pass_at_k

SCORE_PICKERS = ("prm_min", "prm_prod", "orm")
PICKERS = SCORE_PICKERS + ("majority", "prm_vote", "oracle")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def solution_score(step_probs: Sequence[float], how: str = "min") -> float:
    """A PRM's score of a whole solution from its steps' probabilities: min or prod; 0 with no steps."""
    if not step_probs:
        return 0.0
    if how == "min":
        return min(step_probs)
    if how == "prod":
        return math.prod(step_probs)
    raise ValueError(f"how must be min or prod, got {how!r}")


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> list[str]:
    """The answers with the most votes (all of them when tied); [] when no answer parses. Weighted: a solution's vote
    counts its weight."""
    totals: dict[str, float] = {}
    for j, a in enumerate(answers):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else weights[j])
    if not totals:
        return []
    top = max(totals.values())
    return [a for a, t in totals.items() if math.isclose(t, top, rel_tol=1e-9, abs_tol=1e-12)]


def expected_vote(answers: Sequence[str | None], gold: str, n: int, weights: Sequence[float] | None = None) -> float:
    """E[the vote of a random n-subset is right]: every subset enumerated, a tie broken uniformly at random."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), n))
    for sub in subsets:
        winners = vote([answers[j] for j in sub], None if weights is None else [weights[j] for j in sub])
        total += winners.count(gold) / len(winners) if winners else 0.0
    return total / len(subsets)


def prompt_accuracy(picker: str, n: int, correct: Sequence[float], answers: Sequence[str | None], gold: str,
                    scores: dict[str, Sequence[float]]) -> float:
    """One prompt's expected accuracy at n for one picker (module docstring)."""
    if picker in SCORE_PICKERS:
        return expected_best(list(scores[picker]), list(correct), n)
    if picker == "majority":
        return expected_vote(answers, gold, n)
    if picker == "prm_vote":
        return expected_vote(answers, gold, n, scores["prm_min"])
    if picker == "oracle":
        return pass_at_k(len(correct), int(sum(correct)), n)
    raise ValueError(f"unknown picker {picker!r}; one of {', '.join(PICKERS)}")


def rerank_curves(scores: list[dict[str, list[float]]], correct: list[list[float]], answers: list[list[str | None]],
                  golds: list[str], ns: Sequence[int] = (1, 2, 4, 8), pickers: Sequence[str] = PICKERS) -> dict:
    """{picker: [{"n", "accuracy", "ci"}]} over prompts, and at the largest n the paired differences
    {"prm_min - orm", "prm_min - majority", "orm - majority"}: (mean, low, high), prompts resampled together.
    scores[i][picker][j]: prompt i, sample j; correct[i][j] in {0, 1}; answers[i][j] the extracted answer."""
    per: dict[str, dict[int, list[float]]] = {p: {} for p in pickers}
    for p in pickers:
        for n in ns:
            per[p][n] = [prompt_accuracy(p, n, c, a, g, s) for s, c, a, g in zip(scores, correct, answers, golds)]
    curves = {p: [{"n": n, "accuracy": sum(v) / len(v), "ci": list(bootstrap_ci(v))} for n, v in per[p].items()]
              for p in pickers}
    top = max(ns)
    pairs = [("prm_min", "orm"), ("prm_min", "majority"), ("orm", "majority"), ("prm_vote", "majority")]
    diffs = {f"{a} - {b}": list(paired_bootstrap_ci(per[b][top], per[a][top]))
             for a, b in pairs if a in per and b in per}
    return {"curves": curves, "differences_at_n": top, "differences": diffs}


def plot_rerank(curves: dict, path: str | Path, title: str = "best-of-n by verifier") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for picker, rows in curves.items():
        ns = [r["n"] for r in rows]
        ax.plot(ns, [r["accuracy"] for r in rows], marker="o", label=picker,
                linestyle="--" if picker == "oracle" else "-")
        ax.fill_between(ns, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("n (samples a prompt)")
    ax.set_ylabel("accuracy of the pick")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def classifier_accuracy(probs: Sequence[float], labels: Sequence[int]) -> dict:
    """How often sigma > 1/2 agrees with the label, beside the share of positive labels (the accuracy of always
    saying "right" or always "wrong" is max(rate, 1 - rate): the bar a verifier has to clear)."""
    hits = [float((p > 0.5) == bool(y)) for p, y in zip(probs, labels)]
    if not hits:
        return {"accuracy": math.nan, "ci": [math.nan, math.nan], "positive_rate": math.nan, "n": 0}
    pos = sum(labels) / len(labels)
    return {"accuracy": sum(hits) / len(hits), "ci": list(bootstrap_ci(hits)), "positive_rate": pos,
            "majority_baseline": max(pos, 1 - pos), "n": len(hits)}


def run_rerank(policy: str, prm: str, orm: str, source: str, n: int = 8, limit: int = 0, temperature: float = 1.0,
               max_tokens: int = 96, seed: int = 0, out: str | Path = "runs/prm_bon",
               ns: Sequence[int] = (1, 2, 4, 8)) -> dict:
    """n samples a prompt of `source` from `policy`, scored by the PRM (each step) and the ORM (the last token);
    the pickers' accuracy at each of `ns`, the PRM's step accuracy and the ORM's answer accuracy on these held-out
    solutions. Writes rerank.json, samples.jsonl and rerank.png under `out`."""
    import torch

    from alignlab.model.reward import load_reward_model, score, score_positions
    from alignlab.tasks import load_source
    from alignlab.tasks.tinyworld import extract_answer, step_ends, step_labels
    from alignlab.text import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task, records = load_source(source, limit)
    replies = sample_replies(policy, records, n, temperature, max_tokens, seed)
    prompts = [r["prompt"] for r in records for _ in range(n)]
    ends = [step_ends(text) for text in replies]
    prm_model, prm_tok = load_reward_model(prm, dtype=torch.float32), load_tokenizer(prm)
    step_probs = [[sigmoid(x) for x in row] for row in score_positions(prm_model, prm_tok, prompts, replies, ends)]
    orm_model, orm_tok = load_reward_model(orm, dtype=torch.float32), load_tokenizer(orm)
    orm_probs = [sigmoid(x) for x in score(orm_model, orm_tok, prompts, replies)]
    correct = [float(task.correct(text, records[k // n])) for k, text in enumerate(replies)]
    labels = [step_labels(text) for text in replies]

    rows = [{"prompt": k // n, "reply": text, "correct": correct[k], "step_labels": labels[k],
             "step_probs": step_probs[k], "orm_prob": orm_probs[k]} for k, text in enumerate(replies)]
    by = [rows[i * n:(i + 1) * n] for i in range(len(records))]
    scores = [{"prm_min": [solution_score(r["step_probs"], "min") for r in g],
               "prm_prod": [solution_score(r["step_probs"], "prod") for r in g],
               "orm": [r["orm_prob"] for r in g]} for g in by]
    answers = [[extract_answer(r["reply"]) for r in g] for g in by]
    golds = [str(r["answer"]) for r in records]
    result = {"policy": policy, "prm": prm, "orm": orm, "source": source, "prompts": len(records),
              "samples_per_prompt": n, "temperature": temperature,
              **rerank_curves(scores, [[r["correct"] for r in g] for g in by], answers, golds,
                              tuple(k for k in ns if k <= n)),
              "prm_step_accuracy": classifier_accuracy([p for r in rows for p in r["step_probs"]],
                                                       [y for r in rows for y in r["step_labels"]]),
              "prm_answer_accuracy": classifier_accuracy([s for g in scores for s in g["prm_min"]], correct),
              "orm_answer_accuracy": classifier_accuracy(orm_probs, correct),
              "prm_step_accuracy_by_kind": step_accuracy_by_kind(rows),
              "solutions": solution_kinds(rows)}
    (out / "rerank.json").write_text(json.dumps(result, indent=1))
    with open(out / "samples.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    plot_rerank(result["curves"], out / "rerank.png")
    return result


def solution_kinds(rows: list[dict]) -> dict[str, int]:
    """What the solutions are, by answer and steps: which errors a step label can see and which it cannot.

    right            answer right, every step right
    right_by_luck    answer right, a step wrong (two slips that cancel, or an answer not taken from the steps)
    step_error       answer wrong, a step wrong: what a PRM is trained to find
    no_step_error    answer wrong, every step's arithmetic right: a wrong number copied from the question, a
                     step left out, or an answer not taken from the last step; a PRM of arithmetic cannot see it
    """
    kinds = {"right": 0, "right_by_luck": 0, "step_error": 0, "no_step_error": 0}
    for r in rows:
        steps_ok = all(r["step_labels"])
        key = ("right" if steps_ok else "right_by_luck") if r["correct"] else (
            "no_step_error" if steps_ok else "step_error")
        kinds[key] += 1
    return kinds


def step_accuracy_by_kind(rows: list[dict]) -> dict[str, dict]:
    """The PRM's step accuracy by what the step asks (tasks/tinyworld.step_kind: a carry, a borrow, ...), over the
    steps whose label is their own arithmetic: every step up to and including the first wrong one (after it a label
    is 0 whatever the step says). "wrong_caught": the share of wrong steps the PRM scores at most 1/2;
    "right_flagged": the share of right steps it scores so (a verifier that flags every carry catches every wrong
    carry too)."""
    from alignlab.tasks.tinyworld import STEP_KINDS, step_kind, worked_steps

    hits: dict[str, list[float]] = {k: [] for k in STEP_KINDS}
    caught: dict[str, list[float]] = {k: [] for k in STEP_KINDS}
    flagged: dict[str, list[float]] = {k: [] for k in STEP_KINDS}
    for r in rows:
        for s, p in zip(worked_steps(r["reply"]), r["step_probs"]):
            kind = step_kind(s.a, s.op, s.b)
            hits[kind].append(float((p > 0.5) == s.right))
            (flagged if s.right else caught)[kind].append(float(p <= 0.5))
            if not s.right:
                break

    def share(xs):
        return sum(xs) / len(xs) if xs else math.nan

    return {k: {"accuracy": share(h), "steps": len(h), "wrong": len(caught[k]), "wrong_caught": share(caught[k]),
                "right_flagged": share(flagged[k])} for k, h in hits.items() if h}
