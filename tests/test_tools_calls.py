"""alignlab.tools.calls: every BFCL ground-truth call survives a round trip through each format, and replies that are
not calls (or not only calls) keep their text."""

from __future__ import annotations

import json

import pytest

from alignlab.tools.calls import FORMATS, CallFormatError, format_calls, parse_calls

from .conftest import SHARED_DATA

BFCL = SHARED_DATA / "bfcl" / "possible_answer"
FILES = ["BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json"]


def ground_truth_calls(path) -> list[list[dict]]:
    """Per record, its calls with each argument's first accepted value ("" = may be left out: left out)."""
    out = []
    for line in path.read_text().splitlines():
        calls = []
        for entry in json.loads(line)["ground_truth"]:
            (name, args), = entry.items()
            calls.append({"name": name, "arguments": {k: v[0] for k, v in args.items() if v[0] != ""}})
        out.append(calls)
    return out


@pytest.mark.shared_data(*[BFCL / f for f in FILES])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfcl_ground_truth_round_trips(fmt):
    n = 0
    for file in FILES:
        for calls in ground_truth_calls(BFCL / file):
            text = format_calls(calls, fmt)
            assert parse_calls(text, fmt) == ("", calls), text
            n += len(calls)
    assert n >= 1000  # 400 + 200 + 200 records, parallel ones holding several calls


def test_text_around_calls():
    call = {"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}
    hermes = "Let me look.\n" + format_calls([call], "hermes")
    assert parse_calls(hermes, "hermes") == ("Let me look.", [call])
    assert parse_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}', "hermes") == (
        "", [{"name": "f", "arguments": {"x": 1}}])  # not closed: the model stopped first
    assert parse_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "hermes") == (
        "", [{"name": "f", "arguments": {"x": 1}}])  # arguments as a JSON string, as the API carries them
    for fmt in FORMATS:
        assert parse_calls("It is sunny in Paris.", fmt) == ("It is sunny in Paris.", [])
    assert parse_calls('<|python_tag|>{"name": "f", "parameters": {"x": 1}}', "llama3") == (
        "", [{"name": "f", "arguments": {"x": 1}}])
    assert parse_calls("[f(x=1), g.h(y='a')]", "pythonic") == (
        "", [{"name": "f", "arguments": {"x": 1}}, {"name": "g.h", "arguments": {"y": "a"}}])


@pytest.mark.parametrize("text, fmt", [
    ("<tool_call>{not json}</tool_call>", "hermes"),
    ('<tool_call>{"name": "f"}</tool_call>', "hermes"),  # no arguments: not a call
    ('{"name": "f", "parameters": {"x": 1}} and more', "llama3"),
    ('{"name": "f"}', "llama3"),
    ("[f(1)]", "pythonic"),  # positional arguments cannot be named
    ("[f(x=y)]", "pythonic"),  # a variable, not a literal: never evaluated
    ("[f(x=__import__('os').system('true'))]", "pythonic"),
    ("[f(**kw)]", "pythonic"),
    ("[f(x=1)", "pythonic"),
])
def test_what_is_not_a_call_stays_text(text, fmt):
    content, calls = parse_calls(text, fmt)
    assert calls == [] and content == text.strip()


def test_what_cannot_be_written():
    with pytest.raises(CallFormatError, match="not a Python name"):
        format_calls([{"name": "get-weather", "arguments": {}}], "pythonic")
    with pytest.raises(CallFormatError, match="no Python literal"):
        format_calls([{"name": "f", "arguments": {"x": float("nan")}}], "pythonic")
    with pytest.raises(ValueError, match="unknown tool-call format"):
        format_calls([], "xml")
