"""Lab 03's exercise 9 (first-error labels, the expected majority vote): a worked solution written from the README
passes, a wrong one fails with its reason, and the untouched exercises file reports TODO."""

from __future__ import annotations

from .lab_check import run_check

SOLUTION = r'''
import itertools, re

def first_error_labels(reply):
    labels, ok = [], True
    for a, op, b, c in re.findall(r"(?<![\d-])(\d+) ([-+*]) (\d+) = (-?\d+)", reply):
        a, b, c = int(a), int(b), int(c)
        ok = ok and c == {"+": a + b, "-": a - b, "*": a * b}[op]
        labels.append(int(ok))
    return labels

def expected_majority(answers, gold, n):
    subsets = list(itertools.combinations(answers, n))
    total = 0.0
    for sub in subsets:
        counts = {}
        for a in sub:
            if a is not None:
                counts[a] = counts.get(a, 0) + 1
        if counts:
            top = max(counts.values())
            winners = [a for a, k in counts.items() if k == top]
            total += winners.count(gold) / len(winners)
    return total / len(subsets)
'''


def run(*args):
    return run_check("03_reasoning_rl", *args)


def test_a_worked_solution_passes_and_the_stub_is_todo(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(SOLUTION)
    r = run("--module", str(good), "9")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text(SOLUTION.replace("ok = ok and c ==", "ok = c =="))  # each step on its own: not first-error
    r = run("--module", str(bad), "9")
    assert r.returncode == 1 and "FAIL" in r.stdout and "first_error_labels" in r.stdout
    r = run("9")
    assert r.returncode == 1 and "TODO" in r.stdout
