r"""Answers and formats of replies, for any task: where a reply's final answer is, which number it is,
whether two answers agree, and whether the reply is in the format asked for.

    extract_answer(text, style="auto")   the answer as written, or None
        "tag"        the last <answer>...</answer> (or <SOLUTION>...</SOLUTION>), else the rest of the last
                     "Answer: ..." line ("**Final answer:** 72" too)
        "boxed"      the content of the last \boxed{...} (or \fbox{...}), nested braces balanced
        "gsm8k"      the rest of the last "#### ..." line (GSM8K's gold format)
        "number"     the last number: "-1,234.5", "3/4", ".5"
        "tinyworld"  N when the whole text is TinyWorld's exact format (`EXACT_FORMAT`), else None
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

    format_ok(text, answer)  <think>reasoning</think> then the answer in a named format (ANSWER_FORMATS: line, tag,
                             boxed, gsm8k, any; "tinyworld": EXACT_FORMAT); after_think, exact_answer, strip_end

Thousands separators must group by three ("1,234,567"; "1,23" is not a number: it could be a decimal comma).
A percent sign is dropped by default ("50%" == 50: GSM8K asks "what percent" and stores 50); `percent=True`
divides by 100 instead.
"""

from __future__ import annotations

import re
from fractions import Fraction

from alignlab.tasks.symbolic import braced, clean, symbolic_equal
from alignlab.text.template import END_OF_TURN_TOKENS

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
def parse_number(text: str | int | float | None, percent: bool = False) -> Fraction | None:
    r"""The exact value of a number as written, or None when the text is not one number.

    Accepted: signs, thousands commas grouped by three, decimals, "a/b" and \frac{a}{b} (also \dfrac, \tfrac),
    currency and $...$, a trailing full stop, words after a space when they hold no digit ("18 dollars",
    "68. Hope that helps!"), a percent sign (dropped, or divided by 100 with percent=True). Not a number: "2x",
    "x^2", "3 + 4", "5 or 6", "1,23", "12/0", "".
    """
    if text is None:
        return None
    m = _PARSE.fullmatch(clean(str(text)))
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


def _last_braced(text: str, commands: tuple[str, ...]) -> str | None:
    """The content of the last `command{...}` in the text, for any of the commands."""
    found = None
    for command in commands:
        for m in re.finditer(re.escape(command) + r"\s*\{", text):
            group = braced(text, m.end() - 1)
            if group is not None and (found is None or m.start() > found[0]):
                found = (m.start(), group[0])
    return found[1] if found else None


def _after_thinking(text: str) -> str | None:
    """What follows the last </think>; the whole text when there is no <think> block; None when a <think> opens and
    never closes."""
    text = strip_end(text)
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
        return exact_answer(text)
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
    if re.sub(r"\s+", "", clean(pred)) == re.sub(r"\s+", "", clean(gold)) != "":
        return True
    x, y = parse_number(pred), parse_number(gold)
    if x is not None and y is not None:
        return x == y if rel_tol == 0 else abs(x - y) <= Fraction(rel_tol) * abs(y)
    return symbolic_equal(pred, gold)


# ----------------------------------------------------------------------------------------------------------------
# Formats: <think>reasoning</think>, then the answer

def strip_end(text: str) -> str:
    """The text without trailing whitespace and end-of-turn tokens."""
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for token in END_OF_TURN_TOKENS:
            if text.endswith(token):
                text, changed = text[: -len(token)].rstrip(), True
    return text


# TinyWorld's exact format: one <think> block (no nested or repeated tags), a newline, "Answer: N" with N an
# integer written plainly ("68", "-3"; not "68.0", "068", "1,234"), nothing after
EXACT_FORMAT = re.compile(
    r"\A\s*<think>(?P<think>(?:(?!</?think>).)*)</think>\n(?P<line>Answer: (?P<answer>-?(?:0|[1-9]\d*)))\s*\Z", re.S
)


def exact_answer(text: str) -> str | None:
    """N from a reply in the exact format, else None."""
    m = EXACT_FORMAT.match(strip_end(text))
    return m.group("answer") if m else None


# one <think> block (no nested or repeated tags), then the rest of the reply
THINK_THEN = re.compile(r"\A\s*<think>(?:(?!</?think>).)*</think>(?P<rest>.*)\Z", re.S)
_LINE = re.compile(r"Answer:[ \t]*\S[^\n]*")
_TAG = re.compile(r"<answer>((?:(?!</?answer>).)*)</answer>", re.S)
_GSM8K = re.compile(r"####[ \t]*\S[^\n]*")


def _line(rest: str) -> bool:
    return _LINE.fullmatch(rest) is not None


def _tag(rest: str) -> bool:
    m = _TAG.fullmatch(rest)
    return m is not None and m.group(1).strip() != ""


def _boxed(rest: str) -> bool:
    return extract_answer(rest, "boxed") is not None


def _gsm8k(rest: str) -> bool:
    return _GSM8K.fullmatch(rest) is not None


def _any(rest: str) -> bool:
    return _line(rest) or _tag(rest) or _boxed(rest) or _gsm8k(rest)


# the answer formats, as tests of what follows </think> (stripped)
ANSWER_FORMATS = {"line": _line, "tag": _tag, "boxed": _boxed, "gsm8k": _gsm8k, "any": _any}


def after_think(text: str) -> str | None:
    """What follows the reply's one opening <think>...</think> block, stripped (end-of-turn tokens dropped); None
    when the reply does not open with exactly one such block."""
    m = THINK_THEN.match(strip_end(text))
    if m is None or "<think>" in m["rest"] or "</think>" in m["rest"]:
        return None
    return m["rest"].strip()


def format_ok(text: str, answer: str = "line") -> bool:
    """<think>reasoning</think>, then the answer in the named format (ANSWER_FORMATS, or "tinyworld": the exact
    format) and nothing else."""
    if answer == "tinyworld":
        return exact_answer(text) is not None
    rest = after_think(text)
    return rest is not None and ANSWER_FORMATS[answer](rest)
