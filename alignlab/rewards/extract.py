r"""Answers out of text: where a completion's final answer is, which number it is, and whether two answers agree.

    extract_answer(text, style="auto")   the answer as written, or None
        "tag"        the last <answer>...</answer> (or <SOLUTION>...</SOLUTION>), else the rest of the last
                     "Answer: ..." line ("**Final answer:** 72" too)
        "boxed"      the content of the last \boxed{...} (or \fbox{...}), nested braces balanced
        "gsm8k"      the rest of the last "#### ..." line (GSM8K's gold format)
        "number"     the last number: "-1,234.5", "3/4", ".5"
        "tinyworld"  N when the whole text is TinyWorld's exact format, else None
                     (`alignlab.eval.tinyworld.extract_answer`)
        "auto"       the first of tag, boxed, gsm8k, number that finds something

    When the text closes a <think> block, only what follows the last </think> is searched: numbers in the
    reasoning are not answers. A <think> that is never closed (a truncated completion) has no answer.
    Trailing end-of-turn tokens ("<|im_end|>", ...) are dropped first.

    gold_answer(gold)        a dataset's reference: after "####" (GSM8K), else inside \boxed{} (MATH), else as is
    parse_number(text)       the exact value of a written number as a Fraction, or None:
                             "1,234" "-3" "+3" "2.50" ".5" "3/4" "\frac{1}{2}" "$18" "72." "18 dollars" "50%"
    answers_equal(pred, gold)  numerically (exact, through Fraction: 0.5 == "1/2" == "0.50" == "\frac{1}{2}"),
                             else symbolically (`symbolic_equal`)
    symbolic_equal(a, b)     math-verify if installed, else sympy if installed, else False (both optional,
                             imported lazily; numeric equality never needs them)

Thousands separators must group by three ("1,234,567"; "1,23" is not a number: it could be a decimal comma).
A percent sign is dropped by default ("50%" == 50: GSM8K asks "what percent" and stores 50); `percent=True`
divides by 100 instead.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from alignlab.eval import tinyworld
from alignlab.eval.tinyworld import _strip_end  # the end-of-turn tokens TinyWorld's scorers drop

STYLES = ("auto", "tag", "boxed", "gsm8k", "number", "tinyworld")

# ----------------------------------------------------------------------------------------------------------------
# Numbers as written

# one number without its sign: "1,234" (commas grouping by three), "1234", "2.50", ".5"
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
# a number in running text: a sign only where it cannot be subtraction ("5-3" holds 5 and 3), then "a" or "a/b"
NUMBER = re.compile(rf"(?:(?<![\w)\]}}])[-+])?{_UNSIGNED}(?:/{_UNSIGNED})?")

_PARSE = re.compile(
    rf"""(?P<sign>[-+])?\s*
    (?: \\[dt]?frac\{{\s*(?P<fnum>{_UNSIGNED})\s*\}}\{{\s*(?P<fden>{_UNSIGNED})\s*\}}   # \frac{{1}}{{2}}
      | (?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))? )                          # 1,234.5  or 3/4
    \s*(?P<percent>%)?
    (?:[.,;:!]?\s+[A-Za-z][^\d]*)?                                # words after it: " dollars", ". Hope that helps!"
    """,
    re.X,
)
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def _clean(text: str) -> str:
    r"""Drop the markup around a written answer: $ signs, LaTeX spacing and \text{}, a \boxed{} around all of it,
    a trailing full stop. Unicode minus signs become "-"."""
    s = str(text).strip().replace("\u2212", "-").replace("\\$", "").replace("$", "").strip()
    m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
    group = _braced(s, m.end() - 1) if m else None
    if group is not None and not s[group[1] :].strip(" ."):
        s = group[0]
    s = _TEXT_COMMAND.sub(r" \1", s)
    for markup in ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "€", "£"):
        s = s.replace(markup, "")
    s = s.replace("\\ ", " ").replace("{,}", ",").replace("\\%", "%")
    return s.strip().rstrip(".").strip()


def parse_number(text: str | int | float | None, percent: bool = False) -> Fraction | None:
    r"""The exact value of a number as written, or None when the text is not one number.

    Accepted: signs, thousands commas grouped by three, decimals, "a/b" and \frac{a}{b} (also \dfrac, \tfrac),
    currency and $...$, a trailing full stop, words after a space when they hold no digit ("18 dollars",
    "68. Hope that helps!"), a percent sign (dropped, or divided by 100 with percent=True). Not a number: "2x",
    "x^2", "3 + 4", "5 or 6", "1,23", "12/0", "".
    """
    if text is None:
        return None
    m = _PARSE.fullmatch(_clean(str(text)))
    if m is None:
        return None
    try:
        if m["fnum"] is not None:
            value = Fraction(m["fnum"].replace(",", "")) / Fraction(m["fden"].replace(",", ""))
        else:
            value = Fraction(m["num"].replace(",", ""))
            if m["den"] is not None:
                value /= Fraction(m["den"].replace(",", ""))
    except (ZeroDivisionError, ValueError):
        return None
    if m["sign"] == "-":
        value = -value
    if m["percent"] and percent:
        value /= 100
    return value


# ----------------------------------------------------------------------------------------------------------------
# Where the answer is

_ANSWER_TAG = re.compile(r"<(answer|SOLUTION)>(.*?)</\1>", re.S | re.I)
_ANSWER_LINE = re.compile(r"\banswer\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?[ \t]*([^\n]*)", re.I)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at text[start] == "{" (nested groups balanced) and the index after
    its closing brace; None when it never closes."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def _last_braced(text: str, commands: tuple[str, ...]) -> str | None:
    """The content of the last `command{...}` in the text, for any of the commands."""
    found = None
    for command in commands:
        for m in re.finditer(re.escape(command) + r"\s*\{", text):
            group = _braced(text, m.end() - 1)
            if group is not None and (found is None or m.start() > found[0]):
                found = (m.start(), group[0])
    return found[1] if found else None


def _after_thinking(text: str) -> str | None:
    """What follows the last </think>; the whole text when there is no <think> block; None when a <think> opens and
    never closes."""
    text = _strip_end(text)
    head, closed, tail = text.rpartition("</think>")
    if closed:
        return tail
    return None if "<think>" in text else text


def _tidy(answer: str) -> str | None:
    answer = answer.strip().strip("*_").strip()
    return answer or None


def _find(text: str, style: str) -> str | None:
    if style == "tag":
        tags = _ANSWER_TAG.findall(text)
        if tags:
            return _tidy(tags[-1][1])
        lines = _ANSWER_LINE.findall(text)
        return _tidy(lines[-1]) if lines else None
    if style == "boxed":
        inner = _last_braced(text, ("\\boxed", "\\fbox"))
        return None if inner is None else _tidy(inner)
    if style == "gsm8k":
        found = _HASHES.findall(text)
        return _tidy(found[-1]) if found else None
    if style == "number":
        found = NUMBER.findall(text.replace("\u2212", "-"))
        return found[-1] if found else None
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The final answer in a completion as written ("-1,234", "\\frac{1}{2}", "3/4"), or None. See the module
    docstring for the styles; "auto" tries tag, boxed, gsm8k, then the last number."""
    if style == "tinyworld":
        return tinyworld.extract_answer(text)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    text = _after_thinking(text)
    if text is None:
        return None
    for s in ("tag", "boxed", "gsm8k", "number") if style == "auto" else (style,):
        found = _find(text, s)
        if found is not None:
            return found
    return None


def gold_answer(gold: str | int | float | None) -> str | None:
    r"""The reference answer in a dataset's answer column: what follows "####" (GSM8K's "...\n#### 72"), else the
    content of \boxed{} (MATH's solutions), else the value itself as a string. None when there is nothing to
    compare against (None, blank, or a "####" with nothing after it)."""
    if gold is None:
        return None
    text = str(gold).strip()
    if "####" in text:
        return _find(text, "gsm8k")
    if "\\boxed" in text or "\\fbox" in text:
        return _find(text, "boxed")
    return text or None


# ----------------------------------------------------------------------------------------------------------------
# Equal answers


def answers_equal(pred: str | int | float | None, gold: str | int | float | None, rel_tol: float = 0.0) -> bool:
    """Whether a predicted answer equals the gold one.

    1. the same text, ignoring whitespace, $ signs and a trailing full stop;
    2. both numbers (`parse_number`): their exact values are equal -- or |pred - gold| <= rel_tol * |gold| when
       rel_tol > 0. Two numbers are decided here, never symbolically;
    3. otherwise `symbolic_equal` (math-verify or sympy when installed; False without them).
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if re.sub(r"\s+", "", _clean(pred)) == re.sub(r"\s+", "", _clean(gold)) != "":
        return True
    x, y = parse_number(pred), parse_number(gold)
    if x is not None and y is not None:
        return x == y if rel_tol == 0 else abs(x - y) <= Fraction(rel_tol) * abs(y)
    return symbolic_equal(pred, gold)


def symbolic_equal(a: str, b: str) -> bool:
    """Whether two expressions are equal as mathematics: with math-verify if it is installed, else with sympy if it
    is, else False. Each is imported here, when first needed, and neither is a dependency of alignlab.
    Anything these libraries fail on counts as not equal."""
    try:
        import math_verify
    except ImportError:
        math_verify = None
    try:
        if math_verify is not None:
            return _math_verify_equal(math_verify, a, b)
        try:
            import sympy
        except ImportError:
            return False
        return _sympy_equal(sympy, a, b)
    except Exception:
        return False


def _math_verify_equal(math_verify, a: str, b: str) -> bool:
    # math-verify's own time limits use signal.alarm, which only works in the main thread (RewardRunner calls
    # reward functions in a worker thread and enforces its own limit), so they are off elsewhere -- as trl does.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    gold = math_verify.parse(_as_latex(b), parsing_timeout=limit)
    pred = math_verify.parse(_as_latex(a), parsing_timeout=limit)
    return bool(gold) and bool(pred) and bool(math_verify.verify(gold, pred, timeout_seconds=limit))


def _as_latex(s: str) -> str:
    return s if "$" in s else f"${s}$"


_MAX_SYMBOLIC = 120  # characters: longer answers are not simplified
_NAMES = {"sqrt", "pi"}


def _to_sympy(s: str) -> str | None:
    r"""A small LaTeX subset in sympy's syntax: \frac{a}{b}, \sqrt{x}, \sqrt[n]{x}, \cdot, \times, \pi, ^, braces.
    None for anything else -- sympy's parser evaluates Python, so only digits, single-letter variables, sqrt, pi,
    operators and parentheses get through, and towers of powers (9^9^9) that would never finish are refused."""
    s = _clean(s)
    if len(s) > _MAX_SYMBOLIC:
        return None
    for command, arity in (("\\dfrac", 2), ("\\tfrac", 2), ("\\frac", 2), ("\\sqrt", 1)):
        while (i := s.find(command)) >= 0:
            j = i + len(command)
            root = None
            if command == "\\sqrt" and s[j : j + 1] == "[":
                k = s.find("]", j)
                if k < 0:
                    return None
                root, j = s[j + 1 : k], k + 1
            args = []
            for _ in range(arity):
                while s[j : j + 1] == " ":
                    j += 1
                group = _braced(s, j) if s[j : j + 1] == "{" else None
                if group is None:
                    return None
                args.append(group[0])
                j = group[1]
            if command == "\\sqrt":
                new = f"(({args[0]})**(1/({root})))" if root else f"sqrt({args[0]})"
            else:
                new = f"(({args[0]})/({args[1]}))"
            s = s[:i] + new + s[j:]
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", " pi ").replace("{", "(").replace("}", ")")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    if not re.fullmatch(r"[0-9a-z+\-*/^(). ]+", s) or "__" in s:
        return None
    if any(len(name) > 1 and name not in _NAMES for name in re.findall(r"[a-z]+", s)):
        return None
    s = s.replace("**", "^")
    if re.search(r"\^[^+\-*/]*\^", s) or re.search(r"\^\s*\(?\s*-?\d{4,}", s):
        return None
    return s


def _sympy_equal(sympy, a: str, b: str) -> bool:
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    sa, sb = _to_sympy(a), _to_sympy(b)
    if sa is None or sb is None:
        return False
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    names = {"sqrt": sympy.sqrt, "pi": sympy.pi, "Integer": sympy.Integer, "Float": sympy.Float,
             "Rational": sympy.Rational, "Symbol": sympy.Symbol}
    ea = parse_expr(sa, local_dict={}, global_dict=dict(names), transformations=transformations)
    eb = parse_expr(sb, local_dict={}, global_dict=dict(names), transformations=transformations)
    return bool(sympy.simplify(ea - eb) == 0)
