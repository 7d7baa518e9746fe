"""Symbolic equality of two answers, with math-verify or sympy when installed (both optional)."""

from __future__ import annotations

import math
import re
import threading

# ----------------------------------------------------------------------------------------------------------------
# Written answers: markup and brace groups

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def clean(text: str) -> str:
    r"""Drop the markup around a written answer: $ signs, LaTeX spacing and \text{}, a \boxed{} around all of it,
    a trailing full stop. Unicode minus signs become "-"."""
    s = str(text).strip().replace("\u2212", "-").replace("\\$", "").replace("$", "").strip()
    m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
    group = braced(s, m.end() - 1) if m else None
    if group is not None and not s[group[1] :].strip(" ."):
        s = group[0]
    s = _TEXT_COMMAND.sub(r" \1", s)
    for markup in ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "€", "£"):
        s = s.replace(markup, "")
    s = s.replace("\\ ", " ").replace("{,}", ",").replace("\\%", "%")
    return s.strip().rstrip(".").strip()


def braced(text: str, start: int) -> tuple[str, int] | None:
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



# ----------------------------------------------------------------------------------------------------------------
# Equal as mathematics


def symbolic_equal(a: str, b: str) -> bool:
    """Whether two expressions are equal as mathematics: with math-verify if it is installed, else with sympy if it
    is, else False. Each is imported here, when first needed, and neither is a dependency of alignlab.
    Anything these libraries fail on counts as not equal, and so does an answer too big to simplify (`_size`):
    a model can write 9^(999*999*999), and no reward may wait for it."""
    try:
        import math_verify
    except ImportError:
        math_verify = None
    try:
        import sympy  # math-verify needs it too
    except ImportError:
        return False
    try:
        ea, eb = _parse(sympy, a), _parse(sympy, b)  # raises _TooBig
        if math_verify is not None:
            return _math_verify_equal(math_verify, a, b)
        return ea is not None and eb is not None and bool(sympy.simplify(ea - eb) == 0)
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
    operators and parentheses get through (their size is bounded next, by `_size`)."""
    s = clean(s)
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
                group = braced(s, j) if s[j : j + 1] == "{" else None
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
    return s.replace("**", "^")


# What sympy may be asked to simplify: each takes it about 0.3 s on one CPU core ((x+1)^64, (a+b+c)^20, 9^999).
_MAX_DIGITS = 1000  # of any exact number in it
_MAX_DEGREE = 64  # of it as a polynomial in its variables (pi and irrational powers count as variables)
_MAX_TERMS = 256  # of it multiplied out
_MAX_EXPONENT_DIGITS = 4  # an exponent is at most 10^4 in size


class _TooBig(ValueError):
    pass


def _size(sympy, e) -> tuple[float, int, int]:
    """Upper bounds on (digits, degree, terms) of an unevaluated expression once sympy evaluates and multiplies it
    out; _TooBig as soon as one passes its limit.

        p/q            log10 max(|p|, |q|) digits, degree 0, 1 term
        x, pi          half a digit, degree 1, 1 term
        a + b          max digits + log10(#args), max degree, terms added
        a * b          digits added, degrees added, terms multiplied
        b^n, n a number    digits * |n|, degree * |n|, C(|n| + terms - 1, terms - 1)  (multinomial: the monomials
                       of degree |n| in `terms` variables); |n| rounded up, and a fractional power is a new variable
        b^x, x symbolic    a new variable, with b's digits * 10^(x's digits)
    """
    if isinstance(e, (sympy.Integer, sympy.Rational)):
        size = (math.log10(max(abs(e.p), abs(e.q), 1)), 0, 1)
    elif isinstance(e, sympy.Float):
        v = abs(float(e))
        if math.isinf(v):
            raise _TooBig(str(e))
        size = (math.log10(v) if v > 1 else 0.0, 0, 1)
    elif isinstance(e, (sympy.Symbol, sympy.NumberSymbol)):
        size = (0.5, 1, 1)
    elif isinstance(e, sympy.Add):
        parts = [_size(sympy, a) for a in e.args]
        size = (max(p[0] for p in parts) + math.log10(len(parts)), max(p[1] for p in parts), sum(p[2] for p in parts))
    elif isinstance(e, sympy.Mul):
        parts = [_size(sympy, a) for a in e.args]
        size = (sum(p[0] for p in parts), sum(p[1] for p in parts), math.prod(p[2] for p in parts))
    elif isinstance(e, sympy.Pow):
        (digits, degree, terms), (x_digits, x_degree, _) = _size(sympy, e.base), _size(sympy, e.exp)
        if x_digits > _MAX_EXPONENT_DIGITS:
            raise _TooBig(f"exponent {e.exp}")
        if x_degree:  # symbolic exponent
            size = (digits * 10**x_digits, 1, 1)
        else:
            n = abs(float(e.exp))  # at most 10^4: cheap to evaluate
            m = max(1, math.ceil(n))
            if degree * m > _MAX_DEGREE:
                raise _TooBig(f"degree {degree * m}")
            size = (digits * m, degree * m, math.comb(m + terms - 1, terms - 1) if degree else 1)
            if n != int(n):  # b^(1/2): a new variable
                size = (size[0], 1, 1)
    else:
        raise _TooBig(f"{type(e).__name__} is not simplified")
    if size[0] > _MAX_DIGITS or size[1] > _MAX_DEGREE or size[2] > _MAX_TERMS:
        raise _TooBig(f"{e} has about {size[0]:.0f} digits, degree {size[1]}, {size[2]} terms")
    return size


def _parse(sympy, s: str):
    """s as a sympy expression, or None when it is not in `_to_sympy`'s subset; _TooBig when `_size` refuses it.
    It is read twice: unevaluated to measure it, then evaluated."""
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    text = _to_sympy(s)
    if text is None:
        return None
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    names = {"sqrt": sympy.sqrt, "pi": sympy.pi, "Integer": sympy.Integer, "Float": sympy.Float,
             "Rational": sympy.Rational, "Symbol": sympy.Symbol, "Add": sympy.Add, "Mul": sympy.Mul,
             "Pow": sympy.Pow}
    _size(sympy, parse_expr(text, local_dict={}, global_dict=dict(names), transformations=transformations,
                            evaluate=False))
    return parse_expr(text, local_dict={}, global_dict=dict(names), transformations=transformations)
