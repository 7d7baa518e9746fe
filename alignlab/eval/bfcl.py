"""BFCL's AST check: is a model's function call the right one, with the right arguments? (Patil et al., "The
Berkeley Function Calling Leaderboard", 2024; the rules of bfcl-eval's `ast_checker`, whose verdicts these equal.)

A call passes against a ground-truth entry {name: {param: [accepted values, "" = may be left out]}} when
  - the name is the function's;
  - every required parameter is there, and every parameter given is in the schema and in the entry;
  - each value has the schema's Python type (an int passes for a float; a tuple for an array) -- or the type of
    the accepted values, which the entry uses to allow a variable's name as a string;
  - each value is accepted: strings after `normalize` (no spaces or ,./-_*^, lower case, ' as "), lists element
    by element, dicts key by key (a key may be left out if its list holds ""), anything else by ==;
  - every parameter of the entry that the call leaves out accepts "".
Categories: simple (exactly one call), multiple (one call, the right one of several functions), parallel and
parallel_multiple (as many calls as the answer, matched in any order), irrelevance (right when nothing is called).

    verdict = check_calls(functions, [{"name": "f", "arguments": {"x": 1}}], answer, "simple")
    verdict.valid, verdict.error          # True, ""   or   False, "f: missing required parameter 'x'"
    scores = run_bfcl(chat_backend, "../shared/data/bfcl", categories=("simple_python", "irrelevance"))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab.data.bfcl import openai_tool
from alignlab.data.errors import DataError
from alignlab.data.loaders import read_bfcl

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")

# BFCL's schema types (and JSON Schema's names for them) as the Python types a value must have
PYTHON_TYPES = {"string": str, "integer": int, "float": float, "number": float, "boolean": bool, "array": list,
                "tuple": list, "dict": dict, "object": dict, "any": str}


@dataclass(frozen=True)
class Verdict:
    valid: bool
    error: str = ""  # why not, for a person (and a model) to read
    kind: str = ""  # what failed: count, name, missing_required, unexpected_param, type, value, missing_optional


def normalize(s: str) -> str:
    """BFCL's string comparison: "April 1, 2024" == "april 1 2024"."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _norm(v):
    return normalize(v) if isinstance(v, str) else v


# ------------------------------------------------------------------------------------------------
# One call against one ground-truth entry


def check_call(function: dict, call: dict, answer: dict) -> Verdict:
    """One call {"name", "arguments"} against one entry {name: {param: [accepted]}} of the function spec."""
    name = function["name"]
    expected = next(iter(answer.values()))
    if call["name"] != name:
        return Verdict(False, f"called {call['name']!r}, expected {name!r}", "name")
    params = function["parameters"].get("properties", {})
    args = call["arguments"]
    for p in function["parameters"].get("required", []):
        if p not in args:
            return Verdict(False, f"{name}: missing required parameter {p!r}", "missing_required")
    for p, value in args.items():
        if p not in params or p not in expected:
            return Verdict(False, f"{name}: unexpected parameter {p!r}", "unexpected_param")
        verdict = _check_value(name, p, value, params[p], expected[p])
        if not verdict.valid:
            return verdict
    for p, accepted in expected.items():
        if p not in args and "" not in accepted:
            return Verdict(False, f"{name}: parameter {p!r} left out, but the answer needs it", "missing_optional")
    return Verdict(True)


def _check_value(name: str, p: str, value, spec: dict, accepted: list) -> Verdict:
    kind = spec.get("type", "any")
    want = PYTHON_TYPES[kind]
    item_type = PYTHON_TYPES[spec.get("items", {}).get("type", "any")] if kind in ("array", "tuple") else None
    if isinstance(value, tuple) and kind == "tuple":
        value = list(value)
    if want is float and type(value) is int:  # Python would take an int for a float
        value = float(value)
    # the type of the accepted values, when it is not the schema's, marks a variable's name given as a string
    answer_type = _first_type(accepted)
    if type(value) is want:
        if item_type is not None and not any(not isinstance(a, list) or all(_item_ok(v, a, item_type) for v in value)
                                             for a in accepted):
            return Verdict(False, f"{name}: {p!r} must be a list of {spec['items']['type']}, got {value!r}", "type")
        variable = answer_type is not None and answer_type is not want
    elif answer_type is not None and type(value) is answer_type:
        variable = True
    else:
        return Verdict(False, f"{name}: {p!r} must be {kind}, got {type(value).__name__} {value!r}", "type")
    if variable:
        ok = value in accepted
    elif want is dict:
        ok = _dict_ok(value, accepted)
    elif want is list and item_type is dict:
        ok = any(isinstance(a, (list, str)) and len(value) == len(a) and all(_dict_ok(v, [d]) for v, d in zip(value, a))
                 for a in accepted)
    elif want is str:
        ok = normalize(value) in [normalize(a) for a in accepted if isinstance(a, str)]
    elif want is list:
        ok = [_norm(v) for v in value] in [[_norm(v) for v in a] for a in accepted if isinstance(a, (list, str))]
    else:
        ok = value in accepted
    return Verdict(True) if ok else Verdict(False, f"{name}: {p!r} = {value!r} is not one of {accepted!r}", "value")


def _first_type(accepted: list) -> type | None:
    """The type of the first accepted value that is not "" (the mark of a parameter that may be left out)."""
    return next((type(a) for a in accepted if a != ""), None)


def _item_ok(v, accepted_list: list, item_type: type) -> bool:
    """One element of a list argument: the schema's item type, or the type of the accepted elements."""
    return type(v) is item_type or type(v) is _first_type(accepted_list)


def _dict_ok(value: dict, accepted: list) -> bool:
    """value matches one accepted dict: its keys among the dict's, each value accepted; the dict's other keys
    may be left out."""
    for a in accepted:
        if a == "":
            continue
        if (all(k in a and _norm(v) in [_norm(x) for x in a[k]] for k, v in value.items())
                and all(k in value or "" in a[k] for k in a)):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# A reply's calls against a question's answer


def check_calls(functions: list[dict], calls: list[dict], answer: list[dict] | None, category: str) -> Verdict:
    """A reply's calls [{"name", "arguments"}] against a question's ground truth (None for irrelevance)."""
    if category == "irrelevance":
        return Verdict(not calls, f"called {', '.join(c['name'] for c in calls)} where no function fits"
                       if calls else "", "irrelevance" if calls else "")
    if answer is None:
        raise DataError(f"category {category!r} needs a ground-truth answer")
    if len(calls) != len(answer):
        return Verdict(False, f"{len(calls)} call(s), expected {len(answer)}", "count")
    by_name = {f["name"]: f for f in functions}
    if "parallel" not in category:  # simple, multiple: the one call against the one answer
        return check_call(by_name[next(iter(answer[0]))], calls[0], answer[0])
    unmatched = list(range(len(calls)))
    for entry in answer:  # each expected call takes the first unmatched call that passes, as bfcl-eval does
        function = by_name[next(iter(entry))]
        verdicts = {i: check_call(function, calls[i], entry) for i in unmatched}
        hit = next((i for i, v in verdicts.items() if v.valid), None)
        if hit is None:
            why = "; ".join(v.error for v in verdicts.values())
            return Verdict(False, f"no call matches the expected {function['name']} ({why})", "no_match")
        unmatched.remove(hit)
    return Verdict(True)


# ------------------------------------------------------------------------------------------------
# Running a model over BFCL's files


def load_category(data_dir: str | Path, category: str) -> list[tuple[dict, list | None]]:
    """[(question record, ground truth or None)] of one category, from BFCL_v4_<category>.json and its answers."""
    pairs = read_bfcl(data_dir, category)
    if category != "irrelevance" and any(a is None for _, a in pairs):
        raise DataError(f"{data_dir}: no possible_answer/BFCL_v4_{category}.json (only irrelevance has no answers)")
    return [(q.record, None if category == "irrelevance" else a["ground_truth"]) for q, a in pairs]


def reply_calls(message: dict) -> list[dict]:
    """[{"name", "arguments"}] from an assistant message's OpenAI tool_calls (arguments that are not a JSON
    object become {"__unparsed__": text}, which no answer accepts)."""
    calls = []
    for c in message.get("tool_calls") or []:
        fn = c.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError:
            args = None
        calls.append({"name": fn.get("name", ""),
                      "arguments": args if isinstance(args, dict) else {"__unparsed__": fn.get("arguments")}})
    return calls


def run_bfcl(chat: Callable[[list[dict], list[dict]], dict], data_dir: str | Path,
             categories: tuple[str, ...] = CATEGORIES, limit: int | None = None, progress: bool = True) -> dict:
    """Ask `chat` (a backend of alignlab.tools.agent: (messages, tools) -> assistant message) every question of
    each category (the first `limit`), and score its calls. {"categories": {name: {"accuracy", "n"}}, "accuracy":
    the mean over categories, "rows": [{"id", "category", "valid", "error", "calls"}]}."""
    from tqdm import tqdm

    rows, per = [], {}
    for category in categories:
        items = load_category(data_dir, category)[:limit]
        ok = 0
        for question, answer in tqdm(items, desc=f"bfcl {category}", disable=not progress):
            tools = [openai_tool(f) for f in question["function"]]
            reply = chat(list(question["question"][0]), tools)
            calls = reply_calls(reply)
            verdict = check_calls(question["function"], calls, answer, category)
            ok += verdict.valid
            rows.append({"id": question["id"], "category": category, "valid": verdict.valid, "error": verdict.error,
                         "calls": calls, "content": reply.get("content")})
        per[category] = {"accuracy": ok / max(1, len(items)), "n": len(items)}
    return {"categories": per, "accuracy": sum(c["accuracy"] for c in per.values()) / max(1, len(per)), "rows": rows}
