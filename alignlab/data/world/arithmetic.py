"""TinyWorld's arithmetic: problems by difficulty level, their worked steps, and the train/test split.

Levels (what a problem looks like, and how its worked solution -- the <think> text -- goes):

    1  one-digit + and -          3 + 5           3 + 5 = 8
    2  two-digit + and -          23 + 45         23 + 40 = 63 / 63 + 5 = 68           (tens first)
    3  multiplication, two steps  7 * 58          7 * 50 = 350 / 7 * 8 = 56 / 350 + 56 = 406
                                  23 + 45 - 17    23 + 45 = 68 / 68 - 17 = 51
                                  6 * 7 + 15      6 * 7 = 42 / 42 + 15 = 57
    4  word problems, 2-3 steps   "Ana has 12 apples. ..."   12 + 7 = 19 / 19 - 5 = 14  (see town.py)
    5  too big for the head       347 * 28, 9716 / 28        -> call the calculator tool

The split is by problem identity, its `key`: "+ 3 5" for both 3 + 5 and 5 + 3 (and "* 7 58" for
both orders), "- 68 45", "+- 23 45 17", "story:buy_give 12 7 5". A key is in the test split when
a hash of (seed, key) falls below the level's test fraction, so the split needs no list of
problems and any expression can be classified: `expression_key("23 + 40")` says which level's
problem "23 + 40" is, if any. TinyWorld uses that to guarantee that no training text -- a question,
a fact line, a step inside someone else's worked solution -- ever states a held-out problem.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5)
TOOL_LEVEL = 5  # problems too big to do in the head: the calculator's
TEST_FRACTION = {1: 0.2, 2: 0.1, 3: 0.1, 4: 0.1, 5: 0.1}
LEVEL_NAMES = {
    1: "one-digit addition and subtraction",
    2: "two-digit addition and subtraction",
    3: "multiplication and two-step expressions",
    4: "word problems with two or three steps",
    5: "big numbers: use the calculator",
}


class Ref(int):
    """A step operand that is the result of an earlier step (its index)."""


Operand = int  # an int, or a Ref to an earlier step's result
Step = tuple  # (left, op, right): ints or Refs, op one of "+ - * /"


def apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        assert a % b == 0, f"{a} / {b} is not whole"
        return a // b
    raise ValueError(op)


def run_steps(steps: tuple[Step, ...], override: dict[int, int] | None = None) -> list[tuple[int, str, int, int]]:
    """Resolve steps into (a, op, b, result) lines. `override` replaces some steps' results (a
    mistake made at that step, carried into every later step that uses it)."""
    results: list[int] = []
    lines = []
    for i, (left, op, right) in enumerate(steps):
        a = results[left] if isinstance(left, Ref) else left
        b = results[right] if isinstance(right, Ref) else right
        c = apply(a, op, b)
        if override and i in override:
            c = override[i]
        results.append(c)
        lines.append((a, op, b, c))
    return lines


def steps_text(lines: list[tuple[int, str, int, int]]) -> str:
    return "\n".join(f"{a} {op} {b} = {c}" for a, op, b, c in lines)


@dataclass(frozen=True)
class Problem:
    """One problem. `expression` is its symbolic form ("23 + 45"); for word problems `text` is the
    story and question, and `expression` the arithmetic behind it. `steps` is the worked solution."""

    level: int
    kind: str
    key: str
    expression: str
    answer: int
    steps: tuple[Step, ...]
    text: str = ""

    @property
    def id(self) -> str:
        return f"L{self.level}:{self.key}"

    def lines(self, override: dict[int, int] | None = None) -> list[tuple[int, str, int, int]]:
        return run_steps(self.steps, override)

    def think(self) -> str:
        return steps_text(self.lines())


# ----------------------------------------------------------------------------------------------
# Identity and split


def split_hash(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): stable across processes and Python versions."""
    digest = hashlib.sha256(f"tinyworld:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(seed: int, key: str, level: int) -> str:
    return "test" if split_hash(seed, key) < TEST_FRACTION[level] else "train"


_EXPR = re.compile(r"(?<![\d.])\d+(?: [-+*/] \d+)+(?![\d.])")


def find_expressions(text: str) -> list[str]:
    """Every "a op b [op c ...]" written with single spaces in a text (how TinyWorld writes them)."""
    return _EXPR.findall(text)


def expression_key(expression: str) -> tuple[str, int] | None:
    """(key, level) if `expression` is a problem of some level (as TinyWorld would pose it), else None.

    Only shapes matter: "3 + 5" is level 1, "23 + 40" level 2, "63 + 5" no level at all (a one-digit
    and a two-digit number), "350 + 56" none, "7 * 50" level 3, "347 * 28" level 5."""
    parts = expression.split()
    nums = [int(p) for p in parts[0::2]]
    ops = parts[1::2]
    if len(nums) == 2:
        a, b = nums
        (op,) = ops
        if op in "+-" and (a <= 9 and b <= 9) and (op == "+" or a >= b):
            level = 1
        elif op in "+-" and 10 <= a <= 99 and 10 <= b <= 99 and (op == "+" or a >= b):
            level = 2
        elif op == "*" and 2 <= min(a, b) <= 9 and max(a, b) <= 99:
            level = 3
        elif op == "*" and 10 <= min(a, b) <= 99 and 100 <= max(a, b) <= 999:
            level = 5
        elif op == "/" and 10 <= b <= 99 and a % b == 0 and 100 <= a // b <= 999:
            level = 5
        else:
            return None
        if op in "+*":
            a, b = sorted((a, b))
        return f"{op} {a} {b}", level
    if len(nums) == 3:
        a, b, c = nums
        if ops == ["+", "-"] and all(10 <= n <= 99 for n in nums) and a + b >= c:
            return f"+- {a} {b} {c}", 3
        if ops == ["*", "+"] and 2 <= a <= 9 and 2 <= b <= 9 and 10 <= c <= 99:
            return f"*+ {a} {b} {c}", 3
    return None


# ----------------------------------------------------------------------------------------------
# Levels 1-3 and 5: symbolic problems


def _problem(level: int, kind: str, expression: str, steps: tuple[Step, ...]) -> Problem:
    key, found = expression_key(expression)
    assert found == level, (expression, found, level)
    return Problem(level, kind, key, expression, run_steps(steps)[-1][3], steps)


def _tens_first(a: int, op: str, b: int) -> tuple[Step, ...]:
    """a op b, adding/subtracting b's tens first, then its ones: 23 + 45 -> 23 + 40, 63 + 5."""
    tens, ones = b - b % 10, b % 10
    if ones == 0 or tens == 0:
        return ((a, op, b),)
    return ((a, op, tens), (Ref(0), op, ones))


def _times(a: int, b: int) -> tuple[Step, ...]:
    """a * b with one one-digit factor: split the other into tens and ones (7 * 58 -> 7 * 50 + 7 * 8)."""
    big = max(a, b)
    tens, ones = big - big % 10, big % 10
    if big < 10 or ones == 0:
        return ((a, "*", b),)
    if a == big:
        return ((tens, "*", b), (ones, "*", b), (Ref(0), "+", Ref(1)))
    return ((a, "*", tens), (a, "*", ones), (Ref(0), "+", Ref(1)))


def all_level1() -> list[Problem]:
    """All 155 level-1 problems: the level is small enough to list (100 sums, 55 differences)."""
    out = []
    for a in range(10):
        for b in range(10):
            out.append(_problem(1, "add", f"{a} + {b}", ((a, "+", b),)))
            if a >= b:
                out.append(_problem(1, "sub", f"{a} - {b}", ((a, "-", b),)))
    return out


def sample_level2(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return _problem(2, "add", f"{a} + {b}", _tens_first(a, "+", b))
    a, b = max(a, b), min(a, b)
    return _problem(2, "sub", f"{a} - {b}", _tens_first(a, "-", b))


def sample_level3(rng: random.Random) -> Problem:
    r = rng.random()
    if r < 0.5:
        a, b = rng.randint(2, 9), rng.randint(2, 99)
        if rng.random() < 0.5:
            a, b = b, a
        return _problem(3, "mul", f"{a} * {b}", _times(a, b))
    if r < 0.75:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        c = rng.randint(10, min(99, a + b))
        return _problem(3, "add_sub", f"{a} + {b} - {c}", ((a, "+", b), (Ref(0), "-", c)))
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(10, 99)
    return _problem(3, "mul_add", f"{a} * {b} + {c}", ((a, "*", b), (Ref(0), "+", c)))


def sample_level5(rng: random.Random) -> Problem:
    """Three-digit times two-digit, or a whole division of a 4-5 digit number by a two-digit one."""
    a, b = rng.randint(100, 999), rng.randint(10, 99)
    if rng.random() < 0.6:
        return _problem(5, "big_mul", f"{a} * {b}", ((a, "*", b),))
    return _problem(5, "big_div", f"{a * b} / {b}", ((a * b, "/", b),))


# ----------------------------------------------------------------------------------------------
# How a symbolic problem is asked

_OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_QUESTIONS = ("What is {e}?", "{e} = ?", "Compute {e}.", "Calculate {e}.", "What does {e} equal?", "Work out {e}.")
_WORDED = {
    "+": ("What is {a} plus {b}?", "Add {a} and {b}."),
    "-": ("What is {a} minus {b}?", "Subtract {b} from {a}."),
    "*": ("What is {a} times {b}?", "Multiply {a} by {b}."),
    "/": ("What is {a} divided by {b}?", "Divide {a} by {b}."),
}


def ask(problem: Problem, rng: random.Random) -> str:
    """A user question for a symbolic problem, in one of several phrasings (word problems ask themselves)."""
    if problem.text:
        return problem.text
    parts = problem.expression.split()
    if len(parts) == 3 and rng.random() < 0.3:
        return rng.choice(_WORDED[parts[1]]).format(a=parts[0], b=parts[2])
    return rng.choice(_QUESTIONS).format(e=problem.expression)


def wrong_override(problem: Problem, rng: random.Random) -> dict[int, int]:
    """A plausible mistake: one step's result off by 1, 2 or 10 (or a dropped carry), carried on.
    The final answer it leads to is always different from the right one."""
    lines = problem.lines()
    for _ in range(100):
        i = rng.randrange(len(lines))
        c = lines[i][3]
        delta = rng.choice((1, -1, 2, -2, 10, -10, 10, -10))
        wrong = c + delta
        if wrong < 0:
            continue
        final = problem.lines({i: wrong})[-1][3]
        if final != problem.answer and final >= 0:
            return {i: wrong}
    raise AssertionError(f"no wrong answer found for {problem.expression}")
