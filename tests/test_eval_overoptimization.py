"""Reward over-optimisation: the best-of-n estimator equals brute force over every n-subset, KL_bon's closed form,
proxy-vs-gold rows from an RL run's metrics, and `alignlab bon` end to end on a tiny policy and reward model."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from alignlab.cli import main
from alignlab.eval.overoptimization import best_of_n_curve, expected_best, kl_best_of_n, proxy_gold_from_run
from alignlab.model.reward import RewardModel, save_reward_model


def brute_force(proxy, scores, n):
    """The mean over every n-subset of the score of its best-proxy sample (the earlier one on ties)."""
    picks = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(subset, key=lambda j: (proxy[j], -j))
        picks.append(scores[best])
    return sum(picks) / len(picks)


def test_expected_best_equals_brute_force_over_subsets():
    g = random.Random(0)
    for _ in range(30):
        N = g.randint(1, 9)
        proxy = [g.choice([0.0, 0.5, 1.0, g.random()]) for _ in range(N)]  # with ties
        gold = [float(g.random() < 0.5) for _ in range(N)]
        for n in range(1, N + 1):
            assert expected_best(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n), abs=1e-12)
    with pytest.raises(ValueError):
        expected_best([1.0, 2.0], [0.0, 1.0], 3)


def test_kl_and_the_curve():
    assert kl_best_of_n(1) == 0 and kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    g = random.Random(1)
    proxy = [[g.random() for _ in range(16)] for _ in range(20)]
    gold = [[float(p > 0.5) for p in row] for row in proxy]  # a proxy that is right: gold rises with n
    curve = best_of_n_curve(proxy, gold, ns=(1, 2, 4, 8, 16, 32))
    assert [r["n"] for r in curve] == [1, 2, 4, 8, 16]  # 32 > the 16 samples
    assert all(a["proxy"] <= b["proxy"] and a["gold"] <= b["gold"] for a, b in zip(curve, curve[1:]))
    hacked = best_of_n_curve(proxy, [[float(p < 0.9) for p in row] for row in proxy], ns=(1, 16))
    assert hacked[1]["proxy"] > hacked[0]["proxy"] and hacked[1]["gold"] < hacked[0]["gold"]  # the proxy exploited


def test_proxy_gold_rows_from_an_rl_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in [
        {"step": 0, "val/accuracy": 0.3}, {"step": 1, "reward": 0.2}, {"step": 2, "reward": 0.4},
        {"step": 2, "val/accuracy": 0.35}, {"step": 3, "reward": 0.9, "val/accuracy": 0.33}]) + "\n")
    assert proxy_gold_from_run(path) == [{"step": 2, "proxy": pytest.approx(0.3), "gold": 0.35},
                                         {"step": 3, "proxy": 0.9, "gold": 0.33}]  # the mean since the last gold


def test_cli_bon_on_a_tiny_policy_and_reward_model(base, tmp_path, world, capsys):
    rm_dir = tmp_path / "rm"
    save_reward_model(RewardModel.from_causal_lm(base), rm_dir, tokenizer=world.tokenizer())
    out = tmp_path / "bon"
    assert main(["bon", "--policy", str(base), "--reward-model", str(rm_dir), "--n", "4", "--limit", "3",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best-of-n by the reward model" in printed
    result = json.loads((out / "bon.json").read_text())
    assert [r["n"] for r in result["curve"]] == [1, 2, 4] and (out / "bon.png").exists()
    assert sum(1 for _ in (out / "samples.jsonl").open()) == 12
