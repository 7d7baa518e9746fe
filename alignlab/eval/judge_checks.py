"""How far to trust a judge, measured: position consistency, length bias, self-preference, and agreement with labels.

    position_bias(judge, items)                 verdicts that survive swapping the answers; first-slot wins
    length_bias(judge, items)                   the same answer with and without filler: how often the longer wins
    self_preference(judge, reference, items)    the judge's own model's win rate by the judge minus by a reference
    calibration(judge, pairs)                   agreement with labelled pairs (chosen should beat rejected)
    grader_calibration(grader, pairs)           the same for a grader that scores answers alone

`items` are (prompt, answer_a, answer_b, record) as eval.judge takes them. Each rate comes with its Wilson 95%
interval. The biases are the ones MT-Bench measured in LLM judges (Zheng et al. 2023, arXiv:2306.05685: position,
verbosity, self-enhancement); a judge that fails these checks makes a win rate say more about the judge than about
the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.eval.judge import Item, Judge, judge_pairs
from alignlab.eval.stats import rate
from alignlab.eval.winrate import win_rate

FILLER = (" Let me say a bit more about this, to be thorough and complete. As I said above, that is my answer, and I "
          "hope it helps.")


def position_bias(judge: Judge, items: Sequence[Item]) -> dict:
    """consistency: pairs whose verdict is the same in both orders; first_wins: of the inconsistent decisive
    verdicts, the share that picked whichever answer came first (0.5 = no lean either way)."""
    results = judge_pairs(judge, items)
    first = sum(r.first == "A" and r.second == "B" for r in results if not r.agreed)  # "A" both times: first slot
    second = sum(r.first == "B" and r.second == "A" for r in results if not r.agreed)
    return {"consistency": rate(sum(r.agreed for r in results), len(results)),
            "first_wins": rate(first, first + second)}


def length_bias(judge: Judge, items: Sequence[Item], filler: str = FILLER) -> dict:
    """Each item's answer_a against itself with `filler` appended (same content, longer), in both orders. An
    unbiased judge ties; longer_wins and shorter_wins are the shares of pairs each side won."""
    padded = [(p, a, a + filler, r) for p, a, _, r in items]
    results = judge_pairs(judge, padded)
    return {"longer_wins": rate(sum(r.outcome == "B" for r in results), len(results)),
            "shorter_wins": rate(sum(r.outcome == "A" for r in results), len(results))}


def _win_rate(judge: Judge, items: Sequence[Item]) -> dict:
    """A's win rate by `judge`, both orders, ties half (winrate.win_rate), with its bootstrap interval."""
    w = win_rate(judge_pairs(judge, items))
    return {"value": w.win_rate, "ci": [w.ci_low, w.ci_high], "n": w.n}


def self_preference(judge: Judge, reference: Judge, items: Sequence[Item]) -> dict:
    """items: (prompt, the judge model's own answer, another model's answer, record). The own answers' win rate by
    the judge, by a reference judge (a rule judge, people, a stronger model), and the difference: above zero, the
    judge favours its own answers beyond what the reference sees."""
    own, ref = _win_rate(judge, items), _win_rate(reference, items)
    return {"by_judge": own, "by_reference": ref, "difference": own["value"] - ref["value"]}


def calibration(judge: Judge, pairs: Sequence[Item]) -> dict:
    """pairs: (prompt, chosen, rejected, record), labelled. agreement: the judge picked the chosen answer
    (both orders agreeing); wrong: it picked the rejected one; the rest were ties or inconsistent."""
    results = judge_pairs(judge, pairs)
    n = len(results)
    return {"agreement": rate(sum(r.outcome == "A" for r in results), n),
            "wrong": rate(sum(r.outcome == "B" for r in results), n),
            "ties": rate(sum(r.outcome == "tie" for r in results), n)}


def grader_calibration(grader, pairs: Sequence[tuple[str, str, str, str | None]]) -> dict:
    """pairs: (question, chosen, rejected, reference or None). agreement: chosen scored above rejected; unparseable
    scores count as neither."""
    items = [(q, c, ref) for q, c, _, ref in pairs] + [(q, r, ref) for q, _, r, ref in pairs]
    grades = grader.grade(items)
    n = len(pairs)
    chosen, rejected = grades[:n], grades[n:]
    both = [(c.score, r.score) for c, r in zip(chosen, rejected) if c.score is not None and r.score is not None]
    return {"agreement": rate(sum(c > r for c, r in both), n), "wrong": rate(sum(c < r for c, r in both), n),
            "ties": rate(sum(c == r for c, r in both), n), "unparseable": grader.n_unparseable}
