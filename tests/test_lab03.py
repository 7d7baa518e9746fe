"""Lab 03's exercises: the stubs are TODO, the reference solutions pass, and a planted bug fails its exercise; the
script entry grades, and summarises run directories for exercise 8 (`check.py --runs`)."""

from __future__ import annotations

import json

from .lab_check import assert_lab, lab_dir, run_check

PLANTED = {
    1: [("/ (n - 1)", "/ n"),  # the biased std
        ("return torch.where(scored, advantages, 0.0).nan_to_num(0.0)", "return advantages.nan_to_num(0.0)")],
    2: [("1 + epsilon_high)", "1 + epsilon_low)"),  # clip-higher ignored
        ("-torch.min(ratio * A, clipped * A)", "-torch.max(ratio * A, clipped * A)"),
        ("return (masked.sum(1) / mask.sum(1).clamp(min=1)).mean()", "return masked.sum() / mask.sum()")],
    3: [("/ (G - 1)", "/ G")],  # the mean of the group, r_i included
    4: [("d = ref_logps - logps", "d = logps - ref_logps")],  # k3 of KL(pi_ref || pi)
    5: [("rewards, values = rewards * mask, values * mask", "pass"),  # the padding's garbage leaks in
        ("delta + gamma * lam * next_advantage", "delta + lam * next_advantage")],
    6: [("rewards.append(None)", "rewards.append(0.0)"),  # an unreadable gold answer scored as wrong
        ("for start in reversed(starts):", "for start in starts:")],  # the first \boxed{}, not the last
    7: [('h["reward"] = 1.5', 'h["reward"] = 1.1'),  # a rise of 0.25 reward stds: below the alarm's 0.5
        ('history[-1]["kl"] = 2.0', 'history[0]["kl"] = 2.0')],  # a spike long ago: the alarm reads the latest KL
    9: [("ok = ok and c ==", "ok = c =="),  # each step on its own, not the first error on
        ("total += winners.count(gold) / len(winners)", "total += float(gold in winners)")],  # a tie as a win
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(3, PLANTED, tmp_path)


def test_the_script_grades_and_summarises_runs(tmp_path):
    r = run_check("03_reasoning_rl", "3", "--module", str(lab_dir(3) / "solutions.py"))
    assert r.returncode == 0 and "exercise 3: PASS" in r.stdout, r.stdout + r.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"start": {"val/accuracy": 0.25}, "val/accuracy": 0.5,
                                                 "val/format_rate": 1.0, "train_seconds": 90, "alarms": {}}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "reward": s / 10}) for s in range(1, 21)))
    r = run_check("03_reasoning_rl", "--runs", str(run), str(tmp_path / "missing"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "25.0% -> 50.0%" in r.stdout and "0.55 -> 1.55" in r.stdout and "no result.json" in r.stdout, r.stdout
