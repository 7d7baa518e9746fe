"""BFCL (the Berkeley Function Calling Leaderboard) records -> tool-use chat records in OpenAI's form.

    question  {"id", "question": [[{"role": "user", "content": ...}]], "function": [BFCL function specs]}
    answer    {"id", "ground_truth": [{"func.name": {"arg": [accepted values]}}, ...]}   (possible_answer/)
    ->        {"id", "tools": [OpenAI tools], "messages": [user, {"role": "assistant", "content": None,
                                                                  "tool_calls": [...]}]}

BFCL writes schemas in a Python-flavoured dialect: "dict" for object, "float" for number, "tuple" for array, "any"
for no type, and "optional" beside the JSON Schema keys. `openai_tool` rewrites a spec into OpenAI's form. A call
leaves out an optional argument whose accepted values include "" (it may be left out) and takes the first accepted
value other than "" for the rest; a dict's keys (a dict argument, or dicts in a list) hold accepted-value lists in
turn. Irrelevance records have no answer: `bfcl_to_messages(question)` gives the prompt alone, whose right reply calls
nothing.
"""

from __future__ import annotations

import json

from alignlab.data.errors import DataError

TYPES = {"dict": "object", "float": "number", "tuple": "array", "int": "integer", "bool": "boolean", "str": "string",
         "list": "array"}


def openai_schema(spec: dict) -> dict:
    """A BFCL parameter schema in JSON Schema's words (recursively)."""
    out = {}
    for key, value in spec.items():
        if key == "optional":
            continue
        if key == "type":
            if value == "any":
                continue
            out["type"] = TYPES.get(value, value)
        elif key == "properties":
            out["properties"] = {k: openai_schema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = openai_schema(value)
        else:
            out[key] = value
    return out


def openai_tool(function: dict) -> dict:
    """{"type": "function", "function": {name, description, parameters}} from a BFCL function spec."""
    for key in ("name", "parameters"):
        if key not in function:
            raise DataError(f"field 'function': a spec without {key!r}")
    return {"type": "function", "function": {"name": function["name"], "description": function.get("description", ""),
                                             "parameters": openai_schema(function["parameters"])}}


def ground_truth_calls(answer: dict, required: dict[str, list[str]] | None = None) -> list[dict]:
    """[{"name", "arguments"}] from a possible_answer record (see the module docstring); required: each function's
    required parameters, from its spec."""
    calls = []
    for entry in answer.get("ground_truth") or []:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise DataError(f"field 'ground_truth': each entry must be {{name: arguments}}, got {entry!r}")
        (name, args), = entry.items()
        calls.append({"name": name, "arguments": _first_accepted(args, set((required or {}).get(name, ())))})
    return calls


def _first_accepted(args: dict, required: set[str]) -> dict:
    """{arg: [accepted values]} -> {arg: a value}. "" among the accepted values means the argument may be left out,
    and an optional one then is; otherwise the first value other than "" (BFCL lists "" first for some required
    parameters, and a value of another type than the schema's for some optional ones)."""
    out = {}
    for key, accepted in args.items():
        accepted = accepted if isinstance(accepted, list) else []
        given = [v for v in accepted if v != ""]
        if given and not ("" in accepted and key not in required):
            out[key] = _value(given[0])
    return out


def _value(value):
    """An accepted value, with the dicts inside it (alone or in a list) read as {key: [accepted values]}."""
    if isinstance(value, dict):
        return _first_accepted(value, set(value))  # nested: no spec to say what is optional
    if isinstance(value, list):
        return [_value(v) for v in value]
    return value


def bfcl_to_messages(question: dict, answer: dict | None = None) -> dict:
    """The chat record of a BFCL question (its first turn), with the ground truth's calls as the reply if given."""
    if answer is not None and answer.get("id") != question.get("id"):
        raise DataError(f"field 'id': the answer is {answer.get('id')!r}, the question {question.get('id')!r}")
    turns = question.get("question")
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], list):
        raise DataError("field 'question': must be a list of turns, each a list of messages")
    record = {"id": question.get("id"), "tools": [openai_tool(f) for f in question.get("function") or []],
              "messages": list(turns[0])}
    if answer is not None:
        required = {f["name"]: f["parameters"].get("required", []) for f in question.get("function") or []}
        calls = ground_truth_calls(answer, required)
        record["messages"].append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for i, c in enumerate(calls)]})
    return record
