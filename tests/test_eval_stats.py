"""alignlab.eval.stats against scipy and statsmodels (dev-only oracles) on the same data, and pass@k against its
closed form on hand examples."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from alignlab.eval.stats import (
    bootstrap_ci,
    clustered_se,
    length_controlled_win_rate,
    mcnemar,
    mean_se,
    min_detectable_effect,
    paired_bootstrap_ci,
    paired_difference,
    pass_at_k,
    permutation_test,
    wilson_interval,
)

from .hf_models import require

scipy_stats = require("scipy.stats")


def data(n=120, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(0.6, 0.3) for _ in range(n)]


def test_mean_se_and_clustered_se_match_statsmodels():
    sm = require("statsmodels.api")
    x = data()
    m, se = mean_se(x)
    assert m == pytest.approx(np.mean(x)) and se == pytest.approx(scipy_stats.sem(x))
    clusters = [i // 6 for i in range(len(x))]  # 20 groups of 6
    rng = random.Random(1)
    shift = {g: rng.gauss(0, 0.4) for g in set(clusters)}
    y = [v + shift[g] for v, g in zip(x, clusters)]  # correlated within a group
    fit = sm.OLS(np.asarray(y), np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": np.asarray(clusters)})
    m, cse = clustered_se(y, clusters)
    assert m == pytest.approx(fit.params[0]) and cse == pytest.approx(fit.bse[0], rel=1e-9)
    assert cse > mean_se(y)[1]  # the groups' correlation widens it
    assert clustered_se(x, range(len(x)))[1] == pytest.approx(mean_se(x)[1])  # one item a group: the plain SE


@pytest.mark.parametrize("k, n", [(0, 40), (40, 40), (17, 40), (3, 255), (128, 255)])
def test_wilson_matches_statsmodels(k, n):
    proportion = require("statsmodels.stats.proportion")
    low, high = proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-12)


def test_bootstrap_matches_scipy_percentile():
    x = data(200)
    ours = bootstrap_ci(x, n_boot=20_000, seed=0)
    theirs = scipy_stats.bootstrap((np.asarray(x),), np.mean, n_resamples=20_000, method="percentile",
                                   random_state=0).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.004)  # two random streams, same distribution
    d, low, high = paired_bootstrap_ci(x, [v + 0.1 for v in x])
    assert d == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_mcnemar_matches_statsmodels():
    tables = require("statsmodels.stats.contingency_tables")
    rng = random.Random(2)
    before = [rng.random() < 0.5 for _ in range(200)]
    after = [x if rng.random() < 0.8 else rng.random() < 0.7 for x in before]
    both = sum(x and y for x, y in zip(before, after))
    b = sum(y and not x for x, y in zip(before, after))
    c = sum(x and not y for x, y in zip(before, after))
    table = [[both, c], [b, len(before) - both - b - c]]
    assert mcnemar(before, after) == pytest.approx(tables.mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert mcnemar(before, after, exact=False) == pytest.approx(
        tables.mcnemar(table, exact=False, correction=True).pvalue, rel=1e-9)
    assert mcnemar([True] * 5, [True] * 5) == 1.0


def test_permutation_test_matches_scipy():
    x = data(40)
    y = [v + 0.08 + random.Random(i).gauss(0, 0.2) for i, v in enumerate(x)]
    theirs = scipy_stats.permutation_test((np.asarray(x), np.asarray(y)), lambda a, b: np.mean(b - a),
                                          permutation_type="samples", n_resamples=20_000, random_state=0).pvalue
    assert permutation_test(x, y, n_perm=20_000) == pytest.approx(theirs, abs=0.01)
    assert permutation_test(x, x) == 1.0


def test_paired_difference_and_mde():
    d, low, high = paired_difference([False, True, True, False], [True, True, True, False])
    assert d == 0.25 and low < 0 < high
    assert min_detectable_effect(255) == pytest.approx(0.124, abs=0.001)  # 48% vs 52% is far inside it
    assert min_detectable_effect(1000) < min_detectable_effect(255)


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 0, 1, 0.0), (10, 10, 5, 1.0), (10, 3, 1, 0.3), (5, 1, 2, 1 - math.comb(4, 2) / math.comb(5, 2)),
    (10, 3, 8, 1.0),  # fewer failures than k: some pass for sure
    (200, 10, 10, 1 - math.comb(190, 10) / math.comb(200, 10)),
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    if 0 < c < n:  # drawing with replacement is biased low
        assert 1 - (1 - c / n) ** k <= pass_at_k(n, c, k) + 1e-12


def test_length_controlled_win_rate_matches_statsmodels_and_removes_a_length_bias():
    sm = require("statsmodels.api")
    rng = random.Random(3)
    la = [rng.randint(150, 500) for _ in range(300)]  # A writes longer replies
    lb = [rng.randint(20, 400) for _ in range(300)]
    d = np.asarray(la, dtype=float) - np.asarray(lb, dtype=float)
    z = np.tanh(d / d.std(ddof=1))
    # a judge with no preference between the models but a strong taste for the longer reply
    p = 1 / (1 + np.exp(-(0.0 + 2.0 * z)))
    scores = [1.0 if rng.random() < q else (0.5 if rng.random() < 0.2 else 0.0) for q in p]
    lc, phi = length_controlled_win_rate(scores, la, lb)
    fit = sm.GLM(np.asarray(scores), np.stack([np.ones_like(z), z], axis=1), family=sm.families.Binomial()).fit()
    assert phi == pytest.approx(fit.params[1], rel=1e-6) and lc == pytest.approx(1 / (1 + np.exp(-fit.params[0])),
                                                                                   rel=1e-6)
    # A is no better, only longer: the raw win rate rewards the length, the LC win rate does not
    assert np.mean(scores) > 0.6 and abs(lc - 0.5) < 0.1 and phi > 1
