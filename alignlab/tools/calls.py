"""How models write tool calls, in the three formats open models use, both ways: a call {"name", "arguments"} to
the text a model is trained to write, and a reply's text back to (content, calls).

    hermes    Qwen2.5, Hermes, many fine-tunes: one tagged JSON object per call, any text before them
                  I'll look.<tool_call>
                  {"name": "get_weather", "arguments": {"city": "Paris"}}
                  </tool_call>
    llama3    Llama 3.1/3.3's JSON calls: the reply is the JSON object alone, "parameters" for the arguments
              (several calls joined by "; ", as vLLM's llama3_json parser reads them)
                  {"name": "get_weather", "parameters": {"city": "Paris"}}
    pythonic  Llama 3.2/4 and BFCL's prompt format: a Python list of calls with keyword arguments
                  [get_weather(city='Paris'), get_time(zone='CET')]

Parsing never runs model text: JSON is read by `json`, pythonic calls by `ast` (literals only: strings, numbers,
booleans, None, lists, tuples, dicts). A call that does not parse stays in the content, so nothing the model wrote
is lost; a Hermes block the model did not close (it stopped first) is still read.
"""

from __future__ import annotations

import ast
import json
import math
import re

FORMATS = ("hermes", "llama3", "pythonic")
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class CallFormatError(ValueError):
    """A call that cannot be written in the format asked for (a pythonic name or value Python cannot spell)."""


def format_calls(calls: list[dict], fmt: str) -> str:
    """The text a model writes for calls [{"name", "arguments": dict}], in format fmt."""
    if fmt == "hermes":
        return "\n".join(f"{HERMES_OPEN}\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n"
                         f"{HERMES_CLOSE}" for c in calls)
    if fmt == "llama3":
        return "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls)
    if fmt == "pythonic":
        return "[" + ", ".join(_pythonic(c) for c in calls) + "]"
    raise ValueError(f"unknown tool-call format {fmt!r} (choose from {', '.join(FORMATS)})")


def parse_calls(text: str, fmt: str) -> tuple[str, list[dict]]:
    """(content: the text that is not a call, stripped; calls [{"name", "arguments": dict}]) from a reply."""
    if fmt == "hermes":
        return _parse_hermes(text)
    if fmt == "llama3":
        return _parse_llama3(text)
    if fmt == "pythonic":
        return _parse_pythonic(text)
    raise ValueError(f"unknown tool-call format {fmt!r} (choose from {', '.join(FORMATS)})")


def api_tool_calls(calls: list[dict], ids: list[str]) -> list[dict]:
    """OpenAI's `tool_calls` entries for calls [{"name", "arguments": dict}], with the given ids: the arguments
    travel as a JSON string."""
    return [{"id": i, "type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for c, i in zip(calls, ids)]


def _call(obj, args_key: str) -> dict | None:
    """{"name", "arguments"} from a parsed JSON object, or None if it is not a call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or args_key not in obj:
        return None
    args = obj[args_key]
    if isinstance(args, str):  # some models write the arguments as a JSON string, as the API carries them
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"name": obj["name"], "arguments": args} if isinstance(args, dict) else None


def _parse_hermes(text: str) -> tuple[str, list[dict]]:
    calls, kept, end = [], [], 0
    for m in _HERMES.finditer(text):
        try:
            call = _call(json.loads(m.group(1)), "arguments")
        except json.JSONDecodeError:
            call = None
        if call is None:
            continue
        kept.append(text[end:m.start()])
        end = m.end()
        calls.append(call)
    kept.append(text[end:])
    return "".join(kept).strip(), calls


def _parse_llama3(text: str) -> tuple[str, list[dict]]:
    stripped = text.strip()
    if stripped.startswith("<|python_tag|>"):
        stripped = stripped[len("<|python_tag|>"):].lstrip()
    if not stripped.startswith("{"):
        return text.strip(), []
    decoder, calls, i = json.JSONDecoder(), [], 0
    while i < len(stripped):
        try:
            obj, i = decoder.raw_decode(stripped, i)
        except json.JSONDecodeError:
            return text.strip(), []
        call = _call(obj, "parameters") or _call(obj, "arguments")
        if call is None:
            return text.strip(), []
        calls.append(call)
        while i < len(stripped) and stripped[i] in "; \n\t":
            i += 1
    return "", calls


def _parse_pythonic(text: str) -> tuple[str, list[dict]]:
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return stripped, []
    try:
        tree = ast.parse(stripped, mode="eval").body
    except SyntaxError:
        return stripped, []
    if not isinstance(tree, ast.List) or not all(isinstance(e, ast.Call) for e in tree.elts):
        return stripped, []
    calls = []
    for node in tree.elts:
        name = _dotted(node.func)
        if name is None or node.args or any(k.arg is None for k in node.keywords):
            return stripped, []  # positional arguments or **kwargs: not a call we can name the arguments of
        try:
            calls.append({"name": name, "arguments": {k.arg: ast.literal_eval(k.value) for k in node.keywords}})
        except ValueError:  # not a literal (a variable, an expression)
            return stripped, []
    return "", calls


def _dotted(node) -> str | None:
    """"math.factorial" for the call target math.factorial; None for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _pythonic(call: dict) -> str:
    name = call["name"]
    if not all(part.isidentifier() for part in name.split(".")):
        raise CallFormatError(f"{name!r} is not a Python name")
    args = []
    for key, value in call["arguments"].items():
        if not key.isidentifier():
            raise CallFormatError(f"{name}: argument {key!r} is not a Python name")
        args.append(f"{key}={_literal(value, name)}")
    return f"{name}({', '.join(args)})"


def _literal(value, name: str) -> str:
    """value as a Python literal (repr for scalars and strings; lists and dicts element by element)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise CallFormatError(f"{name}: {value!r} has no Python literal")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v, name) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k, name)}: {_literal(v, name)}" for k, v in value.items()) + "}"
    raise CallFormatError(f"{name}: {type(value).__name__} values have no literal")
