"""Tools in OpenAI's format: a function's JSON schema from its Python signature and docstring, and a call's arguments
checked against a schema with errors a model can read and correct.

    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        '''The weather in a city today.

        Args:
            city: the city's name
            unit: the temperature unit
        '''

    function_schema(get_weather) == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city today.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "the city's name"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                                               "description": "the temperature unit"}},
                       "required": ["city"]},
        "return": {"type": "string"}}}

This is the schema transformers' `get_json_schema` writes for the same function (tests/test_tools_schema.py), which
is what chat templates render into the prompt with `tools=`. Types: str, int, float, bool, None, list[T], dict,
tuple[A, B] ("prefixItems"), Literal[...] ("enum"), Optional[T] ("nullable") and unions (a list of types). A
parameter with a default is optional; every parameter needs a type hint and a line under "Args:".

`check_arguments` validates a call against a function's "parameters" schema, the subset above: type (and nullable),
enum, required, properties (objects reject unknown keys), items and prefixItems. An integer is not a boolean, and a
number accepts integers, as in JSON Schema.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", dict: "object",
              list: "array"}


class ToolSchemaError(ValueError):
    """A Python function that cannot be described as a tool (a parameter without a type or a description)."""


class ToolArgumentError(ValueError):
    """A call whose arguments do not fit the tool's schema; the message is meant for the model."""


def function_schema(fn: Callable) -> dict:
    """OpenAI's tool entry {"type": "function", "function": {name, description, parameters[, return]}} for fn."""
    doc = inspect.getdoc(fn)
    if not doc:
        raise ToolSchemaError(f"{fn.__name__}: a tool needs a docstring (its description and an Args: section)")
    description, args, returns = _parse_docstring(doc)
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolSchemaError(f"{fn.__name__}: *{name} cannot be a tool parameter")
        if name not in hints:
            raise ToolSchemaError(f"{fn.__name__}: parameter {name!r} has no type hint")
        if name not in args:
            raise ToolSchemaError(f"{fn.__name__}: parameter {name!r} is not described under Args: in the docstring")
        properties[name] = {**type_schema(hints[name], f"{fn.__name__}.{name}"), "description": args[name]}
        if param.default is inspect.Parameter.empty:
            required.append(name)
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function = {"name": fn.__name__, "description": description, "parameters": parameters}
    if "return" in hints:
        function["return"] = type_schema(hints["return"], f"{fn.__name__} return")
        if returns is not None:
            function["return"]["description"] = returns
    return {"type": "function", "function": function}


def type_schema(hint, where: str = "") -> dict:
    """The JSON schema of a Python type hint (the subset in the module docstring)."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint in JSON_TYPES:
        return {"type": JSON_TYPES[hint]}
    if origin is typing.Literal:
        kinds = {type(v) for v in params}
        if len(kinds) != 1 or kinds.pop() not in JSON_TYPES:
            raise ToolSchemaError(f"{where}: Literal values must share one JSON type")
        return {"type": JSON_TYPES[type(params[0])], "enum": list(params)}
    if origin in (typing.Union, types.UnionType):
        options = [p for p in params if p is not type(None)]
        schema = type_schema(options[0], where) if len(options) == 1 else _union(options, where)
        return {**schema, "nullable": True} if len(options) < len(params) else schema
    if origin is list:
        return {"type": "array", "items": type_schema(params[0], where)} if params else {"type": "array"}
    if origin is tuple and params and params[-1] is not Ellipsis:
        return {"type": "array", "prefixItems": [type_schema(p, where) for p in params]}
    if origin is dict:
        return {"type": "object"}
    raise ToolSchemaError(f"{where}: no JSON schema for the type {hint!r}")


def _union(options: list, where: str) -> dict:
    schemas = [type_schema(o, where) for o in options]
    if any(set(s) != {"type"} for s in schemas):
        raise ToolSchemaError(f"{where}: a union may only hold plain types (str, int, ...)")
    return {"type": [s["type"] for s in schemas]}


_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Return|Raises):\s*$", re.M)
_ARG = re.compile(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {arg: description}, returns) from a Google-style docstring."""
    parts = _SECTION.split(doc)
    description = parts[0].strip()
    args, returns = {}, None
    for title, body in zip(parts[1::2], parts[2::2]):
        if title in ("Args", "Arguments", "Parameters"):
            name, base = None, 0  # the argument being read, and the indent of its first line
            for line in body.splitlines():
                m = _ARG.match(line)
                indent = len(line) - len(line.lstrip())
                if m and (name is None or indent <= base):
                    name, base = m.group(1), indent
                    args[name] = m.group(2).strip()
                elif name is not None and line.strip():  # a continuation line
                    args[name] = f"{args[name]} {line.strip()}".strip()
        elif title in ("Returns", "Return"):
            returns = " ".join(body.split()) or None
    return description, args, returns


def check_arguments(tool: dict, arguments: str | dict) -> dict:
    """The call's arguments (a JSON string, as tool_calls carry them, or a dict), checked against the tool's schema
    (an OpenAI tool entry or its "function"); raises ToolArgumentError saying what to fix."""
    function = tool.get("function", tool)
    name = function.get("name", "the tool")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ToolArgumentError(f"{name}: the arguments are not valid JSON ({e.msg} at character {e.pos})"
                                    ) from None
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    errors = _errors(arguments, schema, "")
    if errors:
        raise ToolArgumentError(f"{name}: " + "; ".join(errors))
    return arguments


_PY = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None), "object": dict,
       "array": list}


def _is(value, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _PY[kind])


def _errors(value, schema: dict, path: str) -> list[str]:
    """What is wrong with value under schema; path names it ("" for the arguments, "unit", "opts.days", "tags[0]")."""
    where = f"argument {path!r}" if path else "the arguments"
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if value is None and schema.get("nullable"):
        return []
    if kinds and not any(_is(value, k) for k in kinds):
        return [f"{where} must be {' or '.join(kinds)}, got {json.dumps(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} must be one of {', '.join(json.dumps(v) for v in schema['enum'])}, got {json.dumps(value)}"]
    out = []
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        child = (lambda k: f"{path}.{k}") if path else (lambda k: k)
        out += [f"missing argument {child(k)!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties", False) is False:
            known = ", ".join(repr(child(k)) for k in props) or "none"
            out += [f"unknown argument {child(k)!r} (known: {known})" for k in value if k not in props]
        out += [e for k, v in value.items() if k in props for e in _errors(v, props[k], child(k))]
    if isinstance(value, list):
        if "prefixItems" in schema:
            items = schema["prefixItems"]
            if len(value) != len(items):
                out.append(f"{where} must hold {len(items)} items, got {len(value)}")
            out += [e for i, (v, s) in enumerate(zip(value, items)) for e in _errors(v, s, f"{path}[{i}]")]
        elif "items" in schema:
            out += [e for i, v in enumerate(value) for e in _errors(v, schema["items"], f"{path}[{i}]")]
    return out
