"""Lab 05's grader: worked solutions (written from the README's formulas, not by calling alignlab) pass every
exercise, a wrong one fails with its reason, and the learner's untouched file reports TODO."""

from __future__ import annotations

from .lab_check import run_check

SOLUTIONS = r'''
import math, re

def wilson_interval(k, n, z=1.959964):
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)

def pass_at_k(n, c, k):
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))

def mcnemar_exact(before, after):
    b = sum(y and not x for x, y in zip(before, after))
    c = sum(x and not y for x, y in zip(before, after))
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))

def min_detectable_effect(n, p=0.5, z_alpha=1.959964, z_power=0.841621):
    return (z_alpha + z_power) * math.sqrt(2 * p * (1 - p) / n)

def combine_swapped(first, second_swapped):
    second = {"A": "B", "B": "A", "tie": "tie"}[second_swapped]
    return first if first == second else 'tie'

def near_leak(reply, secret):
    digits = re.sub(r"[\s\-_.,/|'\"*]", "", reply)
    for run in re.findall(r"\d{4,}", digits):
        for i in range(len(run) - 3):
            w = run[i:i + 4]
            if any(sum(a == b for a, b in zip(w, t)) >= 3 for t in (secret, secret[::-1])):
                return True
    return False
'''


def run(*args):
    return run_check("05_evaluation", *args)


def test_worked_solutions_pass_and_the_stub_is_todo(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(SOLUTIONS)
    r = run("--module", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") == 6
    bad = tmp_path / "bad.py"
    bad.write_text(SOLUTIONS.replace("return first if first == second else 'tie'", "return first"))
    r = run("--module", str(bad), "5")
    assert r.returncode == 1 and "FAIL" in r.stdout
    r = run("1")
    assert r.returncode == 1 and "TODO" in r.stdout
