"""Lab 05 exercises (evaluation): fill in each function, then grade your work with

    alignlab lab check 5            # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 5 2          # only exercise 2
    alignlab lab solution 5 2       # the reference solution of exercise 2, once you have tried

The checker compares your functions with alignlab's statistics (alignlab/eval/stats.py), judge
(alignlab/eval/judge.py) and red team (alignlab/eval/redteam.py) on the same inputs, and with values worked out by
hand. Write each one from the lab's README, not by calling the alignlab function it is checked against.
"""

from __future__ import annotations


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Exercise 1. The Wilson score interval of a rate k/n:

        center = (p + z^2 / 2n) / (1 + z^2 / n),   half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    with p = k / n. Returns (center - half, center + half), clipped to [0, 1] (rounding can step past them)."""
    raise NotImplementedError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Exercise 2. The unbiased pass@k from n samples of which c pass: 1 - C(n - c, k) / C(n, k) (1.0 when
    n - c < k). Compute it without overflowing for n in the hundreds."""
    raise NotImplementedError


def mcnemar_exact(before: list[bool], after: list[bool]) -> float:
    """Exercise 3. McNemar's exact two-sided p-value for paired binary results: with b items right only after and c
    right only before, p = min(1, 2 * P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2); 1.0 when b + c = 0."""
    raise NotImplementedError


def min_detectable_effect(n: int, p: float = 0.5, z_alpha: float = 1.959964, z_power: float = 0.841621) -> float:
    """Exercise 4. The smallest difference between two rates, each measured on n independent items around p, that
    a two-sided test at 5% detects with 80% power: (z_alpha + z_power) * sqrt(2 p (1 - p) / n)."""
    raise NotImplementedError


def combine_swapped(first: str, second_swapped: str) -> str:
    """Exercise 5. A pair judged twice: `first` is the verdict on (a, b), `second_swapped` the verdict on (b, a) in
    its own labels. Each is "A", "B" or "tie". Return the outcome for a vs b: the verdict if both orders agree
    (after mapping the second back), else "tie"."""
    raise NotImplementedError


def near_leak(reply: str, secret: str) -> bool:
    """Exercise 6. The red team's near-leak detector: drop the separators (whitespace - _ . , / | ' " *) from the
    reply, then look for any 4 digits in a row that match the 4-digit secret, or the secret reversed, in at least 3
    of the 4 places."""
    raise NotImplementedError


def bootstrap_ci(scores: list[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Exercise 7. The percentile bootstrap interval of the mean of `scores` (Efron 1979), seeded so it repeats.

    Resample the items with replacement n_boot times, take each resample's mean, and report the middle `level` of
    those means. To give exactly alignlab.eval.stats.bootstrap_ci's numbers, follow its procedure step by step:
    1. x = numpy.asarray(scores, dtype=numpy.float64), n = len(x). An empty list gives (nan, nan).
    2. rng = numpy.random.default_rng(seed), then ONE call idx = rng.integers(0, n, size=(n_boot, n)): row b holds
       the n item indices of resample b, each drawn from 0 .. n - 1 (integers' upper end is exclusive).
    3. means = x[idx].mean(axis=1): the n_boot resampled means.
    4. alpha = (1 - level) / 2; lo and hi are the alpha and 1 - alpha quantiles of the means by numpy's default
       rule ("linear", numpy.quantile's): with the means sorted, m_0 <= ... <= m_{B-1}, the q quantile is
           h = (B - 1) q,   m_floor(h) + (h - floor(h)) (m_{floor(h) + 1} - m_floor(h))
       (just m_{B-1} when floor(h) = B - 1).
    Returns (lo, hi) as floats.
    """
    raise NotImplementedError
