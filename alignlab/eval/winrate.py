"""Win rate of model A over model B from pairwise judgements, with a bootstrap confidence interval.

    result, rows = compare_models(TinyWorldJudge(world.secret), prompts, records, replies_a, replies_b)
    print(result)   # WinRate(win_rate=0.62, wins=..., ci_low=0.55, ci_high=0.69, agreement=0.97, ...)

Each item scores 1 if A wins, 0.5 for a tie, 0 if B wins (AlpacaEval's and MT-Bench's convention);
the win rate is the mean. The 95% interval is the percentile bootstrap (`stats.bootstrap_ci`): resample the
n item scores with replacement `n_boot` times (a seeded generator, so the interval is reproducible), take
the mean of each resample, and report the 2.5th and 97.5th percentiles. It narrows like 1/sqrt(n). Every pair is
judged in both orders (see `judge.judge_pairs`); `agreement` is the fraction of pairs whose two
verdicts agreed, the judge's position consistency.

References: MT-Bench (Zheng et al. 2023, arXiv:2306.05685) for the position swap; Chatbot Arena
(Chiang et al. 2024, arXiv:2403.04132) and lm-eval for bootstrap intervals; "Adding Error Bars to
Evals" (Miller 2024, arXiv:2411.00640) for reporting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from alignlab.eval.judge import Judge, PairResult, Prompt, judge_pairs, question_text
from alignlab.eval.stats import bootstrap_ci

SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}


@dataclass(frozen=True)
class WinRate:
    """A's win rate over B: (wins + ties / 2) / n, with a bootstrap 95% interval [ci_low, ci_high].
    agreement: the fraction of pairs whose two orders agreed (None if the outcomes carry no such flag)."""

    win_rate: float
    wins: int
    losses: int
    ties: int
    n: int
    ci_low: float
    ci_high: float
    agreement: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        agree = "" if self.agreement is None else f", agreement {self.agreement:.0%}"
        return (f"win rate {self.win_rate:.1%} [{self.ci_low:.1%}, {self.ci_high:.1%}] "
                f"({self.wins} wins, {self.losses} losses, {self.ties} ties of {self.n}{agree})")


def win_rate(outcomes: Sequence[str | PairResult], n_boot: int = 1000, seed: int = 0) -> WinRate:
    """Win rate of A from outcomes "A" / "B" / "tie" (or PairResults from judge_pairs); ties count half."""
    verdicts = [o.outcome if isinstance(o, PairResult) else o for o in outcomes]
    unknown = set(verdicts) - set(SCORE)
    if unknown:
        raise ValueError(f"outcomes must be 'A', 'B' or 'tie', got {sorted(unknown)}")
    scores = [SCORE[v] for v in verdicts]
    n = len(scores)
    low, high = bootstrap_ci(scores, n_boot, seed)
    pairs = [o for o in outcomes if isinstance(o, PairResult)]
    agreement = sum(p.agreed for p in pairs) / len(pairs) if pairs else None
    return WinRate(
        win_rate=sum(scores) / n if n else float("nan"),
        wins=verdicts.count("A"),
        losses=verdicts.count("B"),
        ties=verdicts.count("tie"),
        n=n,
        ci_low=low,
        ci_high=high,
        agreement=agreement,
    )


def compare_models(judge: Judge, prompts: Sequence[Prompt], records: Sequence[dict | None] | None,
                   answers_a: Sequence[str], answers_b: Sequence[str], swap: bool = True, n_boot: int = 1000,
                   seed: int = 0) -> tuple[WinRate, list[dict]]:
    """Judge A's answer against B's for every prompt (both orders unless swap=False) and return the
    win rate of A plus one row per item for reports: id, question, both answers, outcome, agreed and
    the two verdicts (the second mapped back to a/b)."""
    records = list(records) if records is not None else [None] * len(prompts)
    n = len(prompts)
    if not (len(records) == len(answers_a) == len(answers_b) == n):
        raise ValueError(f"lengths differ: {n} prompts, {len(records)} records, {len(answers_a)} and "
                         f"{len(answers_b)} answers")
    results = judge_pairs(judge, list(zip(prompts, answers_a, answers_b, records)), swap=swap)
    rows = []
    for i, (p, r, a, b, res) in enumerate(zip(prompts, records, answers_a, answers_b, results)):
        rows.append({"id": (r or {}).get("id", i), "question": question_text(p), "answer_a": a, "answer_b": b,
                     "outcome": res.outcome, "agreed": res.agreed, "first": res.first, "second": res.second})
    return win_rate(results, n_boot, seed), rows
