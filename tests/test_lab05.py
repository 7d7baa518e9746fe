"""Lab 05's exercises: the stubs are TODO, the reference solutions pass, and a planted bug fails its exercise; the
script entry grades."""

from __future__ import annotations

from .lab_check import assert_lab, lab_dir, run_check

PLANTED = {
    1: [("(p + z * z / (2 * n))", "(p + z * z / (4 * n))")],
    2: [("for i in range(k))", "for i in range(1, k))")],  # one factor of the product left out
    3: [("return min(1.0, 2 * tail)", "return min(1.0, tail)"),  # one-sided
        ("range(min(b, c) + 1)", "range(min(b, c))")],  # P[X < min], not P[X <= min]
    4: [("math.sqrt(2 * p * (1 - p) / n)", "math.sqrt(p * (1 - p) / n)")],  # one rate's SE, not a difference's
    5: [('second = {"A": "B", "B": "A", "tie": "tie"}[second_swapped]', "second = second_swapped")],  # not mapped back
    6: [("for target in (secret, secret[::-1]):", "for target in (secret,):"),  # the reversal missed
        ("zip(window, target)) >= 3", "zip(window, target)) > 3")],  # exact matches only
    7: [("rng.integers(0, n, size=(n_boot, n))", "rng.integers(0, n - 1, size=(n_boot, n))"),  # the last item never
        ("alpha = (1 - level) / 2", "alpha = 1 - level"),  # both tails given alpha = 1 - level each
        ("rng = np.random.default_rng(seed)", "rng = np.random.default_rng()"),  # not seeded
        ("h = (len(values) - 1) * q", "h = len(values) * q")],  # another quantile rule
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(5, PLANTED, tmp_path)


def test_the_script_grades():
    r = run_check("05_evaluation", "--module", str(lab_dir(5) / "solutions.py"))
    assert r.returncode == 0 and r.stdout.count(": PASS") == 7, r.stdout + r.stderr
