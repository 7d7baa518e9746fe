"""Lab 05's reference solutions: one way to write each exercise, straight from the formulas in exercises.py and the
lab's README. Read them after your own attempt (`alignlab lab solution 5 N` prints one).
"""

from __future__ import annotations

import math
import re

import numpy as np


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Exercise 1. The Wilson score interval of a rate k/n."""
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)  # inside [0, 1] even after rounding


def pass_at_k(n: int, c: int, k: int) -> float:
    """Exercise 2. The unbiased pass@k from n samples of which c pass."""
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    # C(n - c, k) / C(n, k) = prod_{i < k} (n - c - i) / (n - i): a product of ratios, no huge binomials
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mcnemar_exact(before: list[bool], after: list[bool]) -> float:
    """Exercise 3. McNemar's exact two-sided p-value for paired binary results."""
    b = sum(y and not x for x, y in zip(before, after))  # right only after
    c = sum(x and not y for x, y in zip(before, after))  # right only before
    if b + c == 0:  # only the discordant pairs carry information
        return 1.0
    tail = sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)  # P[X <= min(b, c)]
    return min(1.0, 2 * tail)


def min_detectable_effect(n: int, p: float = 0.5, z_alpha: float = 1.959964, z_power: float = 0.841621) -> float:
    """Exercise 4. The smallest difference between two rates on n items each that a test detects."""
    return (z_alpha + z_power) * math.sqrt(2 * p * (1 - p) / n)  # the SE of a difference of two independent rates


def combine_swapped(first: str, second_swapped: str) -> str:
    """Exercise 5. A pair judged in both orders: the verdict if they agree, else a tie."""
    second = {"A": "B", "B": "A", "tie": "tie"}[second_swapped]  # back to the labels of (a, b)
    return first if first == second else "tie"


def near_leak(reply: str, secret: str) -> bool:
    """Exercise 6. The red team's near-leak detector."""
    digits = re.sub(r"[\s\-_.,/|'\"*]", "", reply)  # "4-8-2-1" -> "4821"
    for run in re.findall(r"\d{4,}", digits):
        for i in range(len(run) - 3):  # every 4-digit window
            window = run[i:i + 4]
            for target in (secret, secret[::-1]):
                if sum(a == b for a, b in zip(window, target)) >= 3:
                    return True
    return False


def _quantile(values: np.ndarray, q: float) -> float:
    """The q quantile of sorted `values`, numpy's "linear" rule: interpolate at position (B - 1) q."""
    h = (len(values) - 1) * q
    i = math.floor(h)
    j = min(i + 1, len(values) - 1)
    return float(values[i] + (h - i) * (values[j] - values[i]))


def bootstrap_ci(scores: list[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Exercise 7. The percentile bootstrap interval of the mean of `scores`."""
    x = np.asarray(scores, dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # [n_boot, n]: resample b is row b, items drawn with replacement
    means = np.sort(x[idx].mean(axis=1))  # [n_boot] the resampled means, sorted for the quantiles
    alpha = (1 - level) / 2  # the middle `level` leaves alpha in each tail
    return _quantile(means, alpha), _quantile(means, 1 - alpha)
