"""The RL monitors: each reward-hacking alarm fires on a synthetic history that has its symptom and stays quiet on a
healthy run; alarms print once, flag every step they hold, and survive a resume."""

from __future__ import annotations

import json

import pytest

from alignlab.rl.monitor import ALARMS, AlarmConfig, RLMonitor, check_alarms, plot_rl_curves

CFG = AlarmConfig(window=5)


def history(n=20, reward=lambda i: 1.0, length=lambda i: 40.0, kl=lambda i: 0.01, entropy=lambda i: 0.5,
            zero_std=lambda i: 0.2):
    return [{"step": i + 1, "reward": reward(i), "reward_std": 0.4, "completions/mean_length": length(i),
             "kl": kl(i), "entropy": entropy(i), "frac_reward_zero_std": zero_std(i)} for i in range(n)]


def evals(*accuracies):
    return [{"step": 10 * i, "val/accuracy": a} for i, a in enumerate(accuracies)]


def test_a_healthy_run_raises_nothing():
    # reward and held-out accuracy rise together, lengths drift a little, KL grows slowly, entropy eases down
    h = history(reward=lambda i: 1.0 + 0.05 * i, length=lambda i: 40 + 0.5 * i, kl=lambda i: 0.001 * (i + 1),
                entropy=lambda i: 0.5 - 0.01 * i)
    assert check_alarms(h, evals(0.40, 0.48, 0.55), CFG) == {}
    assert check_alarms(h, [], CFG) == {}  # and without evaluations nothing trend-based can fire
    assert check_alarms([], [], CFG) == {}


def test_reward_up_with_flat_or_falling_accuracy_is_reward_hacking():
    rising = history(reward=lambda i: 1.0 + 0.05 * i)
    for accs in [(0.50, 0.50, 0.505), (0.50, 0.45, 0.40)]:
        alarms = check_alarms(rising, evals(*accs), CFG)
        assert set(alarms) == {"reward_hacking"}, accs
        assert "held-out" in alarms["reward_hacking"]
    assert "reward_hacking" not in check_alarms(rising, evals(0.50, 0.60), CFG)  # the accuracy followed
    flat = history(reward=lambda i: 1.0 + 0.001 * (i % 3))  # noise, not a rise
    assert "reward_hacking" not in check_alarms(flat, evals(0.5, 0.5), CFG)
    assert "reward_hacking" not in check_alarms(rising[:9], evals(0.5, 0.5), CFG)  # too short to call a trend


def test_length_growth_without_accuracy():
    growing = history(length=lambda i: 30 + 4 * i)
    assert "length_growth" in check_alarms(growing, evals(0.5, 0.5), CFG)
    assert "length_growth" not in check_alarms(growing, evals(0.5, 0.7), CFG)  # longer and better: fine
    assert "length_growth" not in check_alarms(history(length=lambda i: 30 + 0.2 * i), evals(0.5, 0.5), CFG)


def test_kl_blow_up_absolute_and_as_a_jump():
    assert "kl_blowup" in check_alarms(history(kl=lambda i: 0.01 if i < 19 else 2.5), [], CFG)
    jump = check_alarms(history(kl=lambda i: 0.01 if i < 19 else 0.3), [], CFG)
    assert "kl_blowup" in jump and "jumped" in jump["kl_blowup"]
    assert "kl_blowup" not in check_alarms(history(kl=lambda i: 0.002 * i), [], CFG)  # steady growth
    assert "kl_blowup" not in check_alarms(history(kl=lambda i: 1e-5 if i < 19 else 0.01), [], CFG)  # below the floor


def test_entropy_collapse():
    assert "entropy_collapse" in check_alarms(history(entropy=lambda i: 0.8 * 0.7 ** i), [], CFG)
    assert "entropy_collapse" not in check_alarms(history(entropy=lambda i: 0.8 - 0.02 * i), [], CFG)


def test_zero_variance_batch():
    assert "zero_variance" in check_alarms(history(zero_std=lambda i: 1.0), [], CFG)
    assert "zero_variance" not in check_alarms(history(zero_std=lambda i: 0.9), [], CFG)


def test_monitor_prints_once_flags_every_step_and_resumes():
    printed = []
    monitor = RLMonitor(CFG, warn=printed.append)
    flags = [monitor.observe(h["step"], h) for h in history(zero_std=lambda i: 1.0 if i >= 3 else 0.5)]
    assert [bool(f) for f in flags] == [False] * 3 + [True] * 17
    assert all(f == {"alarm/zero_variance": 1} for f in flags[3:])
    assert len(printed) == 1 and printed[0].startswith("alarm (zero_variance) at step 4")
    assert monitor.observe(21, {"loss": 0.0}) == {}  # nothing the monitor watches: not recorded

    again = RLMonitor(CFG, warn=printed.append)
    again.load_state_dict(json.loads(json.dumps(monitor.state_dict())))  # as in a checkpoint
    assert again.observe(21, {"frac_reward_zero_std": 1.0}) == {"alarm/zero_variance": 1}
    assert len(printed) == 1  # already said before the resume

    # the held-out evaluations feed the reward-hacking alarm
    hacked = RLMonitor(CFG, warn=printed.append)
    for h in history(reward=lambda i: 1.0 + 0.05 * i):
        hacked.observe(h["step"], h)
    assert hacked.observe_eval(20, {"val/accuracy": 0.5}) == {}  # one evaluation is no trend
    assert hacked.observe_eval(30, {"val/accuracy": 0.49}) == {"alarm/reward_hacking": 1}
    assert "reward_hacking" in hacked.raised and printed[-1].startswith("alarm (reward_hacking)")


@pytest.mark.parametrize("alarm", ALARMS)
def test_every_alarm_has_a_synthetic_trigger(alarm):
    """Each documented alarm is reachable (a guard against a check that can never fire)."""
    cases = {"reward_hacking": (history(reward=lambda i: 1 + 0.05 * i), evals(0.5, 0.5)),
             "length_growth": (history(length=lambda i: 30 + 4 * i), evals(0.5, 0.5)),
             "kl_blowup": (history(kl=lambda i: 5.0), []),
             "entropy_collapse": (history(entropy=lambda i: 0.5 if i < 10 else 0.01), []),
             "zero_variance": (history(zero_std=lambda i: 1.0), [])}
    assert alarm in check_alarms(*cases[alarm], CFG)


def test_plot(tmp_path):
    lines = [dict(h, loss=0.0) for h in history(reward=lambda i: 1 + 0.05 * i)]
    lines += [{"step": 10, "val/accuracy": 0.5}, {"step": 20, "val/accuracy": 0.5, "alarm/reward_hacking": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    png = plot_rl_curves(tmp_path / "metrics.jsonl", tmp_path / "rl.png", start={"val/accuracy": 0.45})
    assert png is not None and png.stat().st_size > 10_000
    (tmp_path / "empty.jsonl").write_text(json.dumps({"step": 1, "loss": 0.0}) + "\n")
    assert plot_rl_curves(tmp_path / "empty.jsonl", tmp_path / "none.png") is None
