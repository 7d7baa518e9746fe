"""Lab 04's agent exercises (5-7): worked solutions written from the README pass, a wrong one fails with its
reason, and the untouched exercises file reports TODO."""

from __future__ import annotations

from .lab_check import run_check

SOLUTIONS = r'''
import math, re

def winner(cells):
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
    for a, b, c in lines:
        if cells[a] != "." and cells[a] == cells[b] == cells[c]:
            return cells[a]
    return None

def game_reward(result, valid_moves):
    if result == "invalid":
        return -1 + math.log(valid_moves + 1) / math.log(100)
    return {"win": 1.0, "draw": 0.5, "loss": 0.0}[result]

def row_advantages(rewards, group_size, replies):
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g:g + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        for r, n in zip(group, replies[g:g + group_size]):
            out += [(r - mean) / (std + 1e-4)] * n
    return out

def lessons_to_add(playbook, lessons, max_new):
    norm = lambda t: re.sub(r"\s+", " ", t.strip().lower()).rstrip(".!")
    have = {norm(t) for t in playbook}
    counts, first = {}, {}
    for t in lessons:
        k = norm(t)
        if k in have:
            continue
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, t)
    order = sorted(counts, key=lambda k: -counts[k])
    return [first[k] for k in order[:max_new]]
'''


def run(*args):
    return run_check("04_tool_use", *args)


def test_worked_solutions_pass_and_the_stub_is_todo(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(SOLUTIONS)
    r = run("--module", str(good), "5", "6", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") == 3
    bad = tmp_path / "bad.py"
    bad.write_text(SOLUTIONS.replace("(len(group) - 1)", "len(group)"))  # the biased std
    r = run("--module", str(bad), "6")
    assert r.returncode == 1 and "FAIL" in r.stdout
    r = run("5")
    assert r.returncode == 1 and "TODO" in r.stdout
