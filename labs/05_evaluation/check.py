"""Lab 05's checks (labs/05_evaluation/exercises.py).

    alignlab lab check 5                                     # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 5 2                                   # one of them
    python labs/05_evaluation/check.py 1 4 [--module my.py]  # the same, without the CLI

Each check compares with alignlab's statistics (alignlab/eval/stats.py), position swap (alignlab/eval/judge.py) and
near-leak detector (alignlab/eval/redteam.py) on the same inputs, and with values worked out by hand.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from alignlab.eval import stats
from alignlab.eval.judge import combine
from alignlab.eval.redteam import fuzzy_leak


def close(got, want, what: str, tol: float = 1e-6) -> None:
    if not math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol):
        raise AssertionError(f"{what}: got {got!r}, expected {want!r}")


def check_1(ex) -> str:
    for k, n in [(40, 40), (0, 40), (1, 2), (95, 200), (255, 255), (3, 1000)]:
        lo, hi = ex.wilson_interval(k, n)
        want = stats.wilson_interval(k, n)
        close(lo, want[0], f"wilson_interval({k}, {n}) low")
        close(hi, want[1], f"wilson_interval({k}, {n}) high")
    return "six rates, 0/40 to 40/40, equal to stats.wilson_interval (40/40 refused still leaves 91.2%-100%)"


def check_2(ex) -> str:
    close(ex.pass_at_k(10, 5, 1), 0.5, "pass_at_k(10, 5, 1) = c / n")
    close(ex.pass_at_k(4, 1, 2), 0.5, "pass_at_k(4, 1, 2): 1 - C(3,2)/C(4,2) = 1 - 3/6")
    close(ex.pass_at_k(5, 4, 2), 1.0, "pass_at_k(5, 4, 2): n - c < k")
    close(ex.pass_at_k(200, 0, 100), 0.0, "pass_at_k(200, 0, 100)")
    g = random.Random(5)
    for _ in range(50):
        n = g.randint(1, 400)
        c, k = g.randint(0, n), g.randint(1, n)
        close(ex.pass_at_k(n, c, k), stats.pass_at_k(n, c, k), f"pass_at_k({n}, {c}, {k})")
    return "hand cases and 50 random (n, c, k) up to n = 400, equal to stats.pass_at_k"


def check_3(ex) -> str:
    close(ex.mcnemar_exact([True] * 5, [True] * 5), 1.0, "no discordant pair")
    close(ex.mcnemar_exact([False] * 6, [True] * 6), 2 / 64, "6 improved, none worse: 2 * (1/2)^6")
    g = random.Random(3)
    for _ in range(30):
        n = g.randint(1, 80)
        before = [g.random() < 0.5 for _ in range(n)]
        after = [g.random() < 0.6 for _ in range(n)]
        close(ex.mcnemar_exact(before, after), stats.mcnemar(before, after), "mcnemar_exact on random pairs")
    return "hand cases and 30 random paired runs, equal to stats.mcnemar"


def check_4(ex) -> str:
    for n, p in [(255, 0.5), (1000, 0.5), (80, 0.2), (10_000, 0.9)]:
        close(ex.min_detectable_effect(n, p), stats.min_detectable_effect(n, p), f"min_detectable_effect({n}, {p})",
              tol=1e-5)
    mde = ex.min_detectable_effect(255)
    if not mde > 0.04:
        raise AssertionError("with 255 prompts a 4-point difference (48% vs 52%) should be below what can be seen")
    return f"four cases; with 255 prompts the smallest visible difference is {mde:.1%}, far above 48% vs 52%"


def check_5(ex) -> str:
    for first in ("A", "B", "tie"):
        for second in ("A", "B", "tie"):
            want = combine(first, second).outcome
            got = ex.combine_swapped(first, second)
            if got != want:
                raise AssertionError(f"combine_swapped({first!r}, {second!r}): got {got!r}, expected {want!r}")
    return "all nine verdict pairs; a judge that always says A gets only ties"


def check_6(ex) -> str:
    secret = "4821"
    by_hand = {"it is 4821": True, "4-8-2-1": True, "1 2 8 4": True, "4820": True, "4,8,2,7": True, "4812": False,
               "48": False, "no digits": False, "99948219": True, "5678": False}
    for reply, want in by_hand.items():
        if bool(ex.near_leak(reply, secret)) != want:
            raise AssertionError(f"near_leak({reply!r}, {secret!r}): expected {want}")
    g = random.Random(7)
    for _ in range(300):
        reply = "".join(g.choice("0123456789 -.,ab") for _ in range(g.randint(0, 14)))
        s = "".join(g.sample("0123456789", 4))
        if bool(ex.near_leak(reply, s)) != fuzzy_leak(reply, s):
            raise AssertionError(f"near_leak({reply!r}, {s!r}): expected {fuzzy_leak(reply, s)}")
    return "ten replies by hand and 300 random ones, equal to redteam.fuzzy_leak"


def check_7(ex) -> str:
    nan = ex.bootstrap_ci([], 100, 0)
    if not (len(nan) == 2 and all(math.isnan(v) for v in nan)):
        raise AssertionError(f"bootstrap_ci([], 100, 0): got {nan!r}, expected (nan, nan)")
    g, cases = random.Random(7), 0
    for n in (1, 2, 7, 40, 255):
        for kind in ("0/1", "continuous"):
            p = g.random()
            scores = ([float(g.random() < p) for _ in range(n)] if kind == "0/1"
                      else [round(g.gauss(0.5, 0.3), 4) for _ in range(n)])
            for n_boot, seed, level in ((1000, 0, 0.95), (200, g.randrange(10_000), 0.9), (37, 1, 0.5)):
                got = ex.bootstrap_ci(scores, n_boot, seed, level)
                want = stats.bootstrap_ci(scores, n_boot, seed, level)
                what = (f"bootstrap_ci({n} {kind} scores {scores[:6]}{'...' if n > 6 else ''}, n_boot={n_boot}, "
                        f"seed={seed}, level={level})")
                if len(got) != 2:
                    raise AssertionError(f"{what}: got {got!r}, expected a pair (lo, hi)")
                close(got[0], want[0], f"{what} low", tol=1e-12)
                close(got[1], want[1], f"{what} high", tol=1e-12)
                cases += 1
    return f"empty, and {cases} seeded 0/1 and continuous score lists (n 1 to 255), equal to stats.bootstrap_ci"


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7}


if __name__ == "__main__":
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
