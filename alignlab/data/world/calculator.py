"""TinyWorld's one tool: a calculator for + - * / and parentheses, safe to run on model output.

A model's tool call is untrusted text, so the expression is never given to `eval`. It is parsed
with `ast` in "eval" mode and walked by hand, and only these nodes are allowed: numbers (int or
float literals, not bools), the binary operators + - * /, unary + and -, and the parentheses that
`ast` has already folded into the tree. Anything else -- names, calls, attributes, `**`, `%`,
`//`, strings, comparisons -- is a `CalculatorError`. Limits keep it cheap: at most 200
characters, and every intermediate value within 10**15 in magnitude (so "999999 * 999999 * ..."
stops early instead of building a huge integer).

    calculate("347 * 28")        -> 9716
    calculate("(12 + 8) / 5")    -> 4          exact divisions stay integers
    calculate("7 / 2")           -> 3.5
    calculator_output("1 / 0")   -> "error: division by zero"   (what the tool message says)
"""

from __future__ import annotations

import ast
import json

MAX_CHARS = 200
MAX_ABS = 10**15

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example 347 * 28"}},
            "required": ["expression"],
        },
    },
}


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, is too long or too large, or divides by zero."""


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
}


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (see the module docstring); ints stay ints, and a
    division that comes out whole is an int too. `×` and `÷` are read as `*` and `/`."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").strip()
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from e
    try:
        return _eval(tree.body)
    except RecursionError as e:
        raise CalculatorError("expression nested too deeply") from e


def _check(value: int | float) -> int | float:
    if value != value or abs(value) > MAX_ABS:  # NaN or too large
        raise CalculatorError(f"value out of range (limit {MAX_ABS:.0e})")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise CalculatorError("division by zero")
            if isinstance(a, int) and isinstance(b, int) and a % b == 0:
                return _check(a // b)
            return _check(a / b)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed (only + - * /)")
        return _check(op(a, b))
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def format_number(value: int | float) -> str:
    """How numbers are written in TinyWorld: integers plainly, other values to at most 6 decimals."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}".rstrip("0").rstrip(".")


def calculator_output(arguments: dict | str) -> str:
    """Run a calculator call and return the text of the tool message: the value, or "error: ...".

    `arguments` is the call's arguments, as a dict or as a JSON string (OpenAI's wire format)."""
    try:
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        if not isinstance(arguments, dict) or set(arguments) != {"expression"}:
            raise CalculatorError('arguments must be {"expression": "..."}')
        return format_number(calculate(arguments["expression"]))
    except (CalculatorError, json.JSONDecodeError) as e:
        return f"error: {e}"
