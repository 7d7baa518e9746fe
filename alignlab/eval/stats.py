"""The statistics every evaluation number needs: its interval, and whether a difference is more than noise.

    mean_se(scores)                        mean and standard error, SE = s / sqrt(n)
    clustered_se(scores, clusters)         the SE when items come in correlated groups (prompts from one template)
    wilson_interval(k, n)                  a rate's interval that stays inside [0, 1] and works at 0/n and n/n
    rate(k, n)                             a rate as reports keep it: {"value", "ci" (Wilson), "k", "n"}
    bootstrap_ci(scores)                   the percentile bootstrap interval of a mean
    paired_difference(before, after)       the change in a rate on the same items, with its paired interval
    paired_bootstrap_ci(a, b)              the same for scores: resample items, not models
    mcnemar(before, after)                 p-value of "the two rates are equal" on paired binary items
    sign_test(wins, losses)                p-value of "neither side is preferred" from a judge's wins and losses
    permutation_test(a, b)                 p-value of "the mean difference is zero" on paired scores
    min_detectable_effect(n)               the smallest difference of two rates n items can show
    pass_at_k(n, c, k)                     the unbiased pass@k from n samples of which c pass
    length_controlled_win_rate(...)        a win rate with a judge's taste for length taken out

References: "Adding Error Bars to Evals" (Miller 2024, arXiv:2411.00640) for SEs, clustering and paired tests;
Wilson (1927) for the score interval; Efron (1979) for the bootstrap; McNemar (1947); Chen et al. 2021
(arXiv:2107.03374, Codex) for the unbiased pass@k estimator.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist

import numpy as np


def _z(level: float) -> float:
    """The two-sided normal quantile: 1.96 for level 0.95."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def mean_se(scores: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean): SE = s / sqrt(n), s the sample standard deviation (n - 1 below)."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("a standard error needs at least 2 scores")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def clustered_se(scores: Sequence[float], clusters: Sequence[Hashable]) -> tuple[float, float]:
    """(mean, cluster-robust SE) for items that come in groups whose errors correlate (several phrasings of one
    question, the prompts of one red-team template):

        SE^2 = G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2 / n^2          (G groups, n items)

    the CR1 estimator of a regression on a constant (statsmodels' cov_type="cluster"). With one item per group it
    is the ordinary SE; correlated groups make it larger, and treating them as independent would understate it."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) != len(clusters):
        raise ValueError(f"{len(x)} scores but {len(clusters)} cluster labels")
    groups: dict = {}
    for value, g in zip(x - x.mean(), clusters):
        groups[g] = groups.get(g, 0.0) + value
    G = len(groups)
    if G < 2:
        raise ValueError("a clustered standard error needs at least 2 clusters")
    return float(x.mean()), math.sqrt(G / (G - 1) * sum(s * s for s in groups.values())) / len(x)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a rate k / n:

        (p + z^2 / 2n  +-  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at 0/n or n/n (40 of 40 attacks
    refused still leaves 91.2%-100% at 95%)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z, p = _z(level), k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def rate(k: int, n: int, level: float = 0.95) -> dict:
    """k of n as {"value": k / n, "ci": [low, high] (Wilson), "k", "n"}; value and interval are nan when n = 0."""
    lo, hi = wilson_interval(k, n, level) if n else (math.nan, math.nan)
    return {"value": k / n if n else math.nan, "ci": [lo, hi], "k": k, "n": n}


def bootstrap_ci(scores: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores`: resample the items with replacement n_boot times (a
    seeded generator, so it is reproducible), take each resample's mean, report the middle `level` of them."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)  # [n_boot] resampled means
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_difference(before: Sequence[bool], after: Sequence[bool], z: float = 1.96) -> tuple[float, float, float]:
    """The change in a rate measured on the same prompts twice (before and after training), with a 95% interval.

    With b prompts right only after and c right only before, out of n, the change is (b - c) / n, and its
    standard error (the paired, McNemar-style normal approximation) sqrt(b + c - (b - c)^2 / n) / n. Pairing
    matters: most prompts stay right or stay wrong, so the interval is much narrower than two independent
    rates' would be. Returns (change, low, high)."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    n = len(before)
    b = sum(1 for x, y in zip(before, after) if y and not x)
    c = sum(1 for x, y in zip(before, after) if x and not y)
    d = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return d, d - z * se, d + z * se


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """(mean(b - a), low, high): the change in a score on the same items, the items resampled together."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap_ci needs two equally long, non-empty lists")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    return (float(d.mean()), *bootstrap_ci(d, n_boot, seed, level))


def mcnemar(before: Sequence[bool], after: Sequence[bool], exact: bool = True) -> float:
    """Two-sided p-value of McNemar's test that two paired rates are equal. Only the discordant items count: b
    right only after, c right only before. Exact: under the null each is a fair coin, so
    p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]); otherwise the chi-square statistic with continuity
    correction, (|b - c| - 1)^2 / (b + c), on 1 degree of freedom."""
    if len(before) != len(after):
        raise ValueError("mcnemar needs two equally long lists")
    b = sum(1 for x, y in zip(before, after) if y and not x)
    c = sum(1 for x, y in zip(before, after) if x and not y)
    if b + c == 0:
        return 1.0
    if exact:
        tail = sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)
        return min(1.0, 2 * tail)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return math.erfc(math.sqrt(stat / 2))  # P[chi2_1 > stat]


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of "wins and losses are equally likely" (ties dropped): under the null each decisive
    comparison is a fair coin, p = min(1, 2 P[Binomial(wins + losses, 1/2) <= min(wins, losses)]). It is McNemar's
    exact test with the decisive pairs as its discordant ones."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be counts")
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n)


def permutation_test(a: Sequence[float], b: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that the mean paired difference mean(b - a) is zero: under the null each item's two
    scores are exchangeable, so flip the sign of each difference at random n_perm times and count how often the
    mean is at least as far from zero as the one observed ((count + 1) / (n_perm + 1))."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) == 0:
        raise ValueError("permutation_test needs items")
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, len(d)))
    observed = abs(d.mean())
    extreme = int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (extreme + 1) / (n_perm + 1)


def min_detectable_effect(n: int, p: float = 0.5, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest difference between two rates near p, each measured on n independent items, that a two-sided
    test at `level` detects with probability `power`: (z_{level} + z_{power}) sqrt(2 p (1 - p) / n). With 255
    prompts and p = 0.5 it is 12.4 points: 48% against 52% cannot be told apart."""
    if n <= 0:
        raise ValueError("n must be positive")
    return (_z(level) + NormalDist().inv_cdf(power)) * math.sqrt(2 * p * (1 - p) / n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c pass (Chen et al. 2021):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the chance that k of the n samples, drawn without replacement, include a passing one. (1 - (1 - c/n)^k,
    which draws with replacement, is biased low.)"""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def length_controlled_win_rate(scores: Sequence[float], length_a: Sequence[int], length_b: Sequence[int],
                               iterations: int = 50) -> tuple[float, float]:
    """(length-controlled win rate, the fitted length coefficient), after AlpacaEval 2's LC win rate (Dubois et
    al. 2024, arXiv:2404.04475) without its per-instruction term. A logistic model of A's score (1 win, 0.5 tie,
    0 loss) on the length difference,

        P(A wins) = sigmoid(theta + phi * tanh((len_a - len_b) / sd(len_a - len_b))),

    is fitted by maximum likelihood (Newton's method; ties count as half a win, as a fractional binomial outcome),
    and the win rate is read off with the length term set to zero: sigmoid(theta). A judge that prefers longer
    replies gets phi > 0, and the LC win rate takes that preference out."""
    y = np.asarray(scores, dtype=np.float64)
    d = np.asarray(length_a, dtype=np.float64) - np.asarray(length_b, dtype=np.float64)
    if not len(y) == len(d) >= 3:
        raise ValueError("length_controlled_win_rate needs at least 3 items and a length for each reply")
    sd = d.std(ddof=1)
    x = np.stack([np.ones_like(d), np.tanh(d / sd) if sd > 0 else np.zeros_like(d)], axis=1)  # [n, 2]
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-x @ w))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (y - p))
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + np.exp(-w[0]))), float(w[1])
