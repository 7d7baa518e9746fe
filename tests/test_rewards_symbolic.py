"""Symbolic equality is bounded: an answer that sympy would take minutes, hours or forever to evaluate (9^(999*999*999),
(x+1)^9801) is refused within a second, and ordinary symbolic answers are still compared."""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
import time

import pytest

from alignlab.rewards import answers_equal, symbolic_equal

needs_sympy = pytest.mark.skipif(importlib.util.find_spec("sympy") is None,
                                 reason="sympy is optional; symbolic equality needs it (or math-verify)")

BLOWUPS = [
    "9^(999*999*999)",
    "9**999999999",
    "10^10^10",
    "9^(999*999)",
    "(9^999)^999",
    "9^999*9^999*9^999",
    "99999999^99999999",
    "2^(2^(2^(2^2)))",
    "sqrt(9^(999*999))",
    r"\frac{9^{999999}}{3}",
    "x^(999*999*999)",
    "(x+1)^999",
    "(x+1)^(99*99)",
    "(a+b+c+d)^(9*9)",
]


def _time_each(send) -> None:
    times = []
    for s in BLOWUPS:
        start = time.perf_counter()
        equal = answers_equal(s, "1") or symbolic_equal(s, "1") or symbolic_equal("1", s)
        times.append((s, equal, time.perf_counter() - start))
    send.send(times)


@needs_sympy
def test_answers_too_big_to_simplify_are_refused_within_a_second():
    # in a child process: the unbounded code holds the GIL inside one huge integer power, so only a kill stops it
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_time_each, args=(send,), daemon=True)
    child.start()
    try:
        finished = recv.poll(len(BLOWUPS) * 2.0)
        assert finished, f"symbolic equality did not return within {len(BLOWUPS) * 2} s on {BLOWUPS}"
        times = recv.recv()
    finally:
        child.kill()
        child.join()
    for s, equal, seconds in times:
        assert not equal, s
        assert seconds < 1.0, (s, seconds)


@needs_sympy
def test_ordinary_symbolic_answers_are_still_compared():
    if importlib.util.find_spec("math_verify") is not None or "math_verify" in sys.modules:
        pytest.skip("math-verify is installed and takes precedence over sympy")
    for a, b in [("1/2", "0.5"), ("2^10", "1024"), ("sqrt(4)", "2"), ("2^{1000}", "2 \\cdot 2^{999}"),
                 ("(x+1)^2", "x^2+2x+1"), (r"\sqrt{8}", r"2\sqrt{2}"), ("(x+1)^8", "(1+x)^8"),
                 ("2^1024/2^1023", "2"), (r"\frac{\pi}{2}", r"\pi/2")]:
        start = time.perf_counter()
        assert symbolic_equal(a, b) and answers_equal(a, b), (a, b)
        assert time.perf_counter() - start < 2.0, (a, b)
    for a, b in [("2^10", "1025"), ("(x+1)^2", "x^2+1"), ("sqrt(5)", "2")]:
        assert not symbolic_equal(a, b), (a, b)
