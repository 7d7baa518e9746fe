"""alignlab.data.bfcl: BFCL questions and their ground truth become chat records in OpenAI's form, whose calls fit
their tools' schemas."""

from __future__ import annotations

import json

import pytest

from alignlab.data.bfcl import bfcl_to_messages, openai_schema
from alignlab.data.errors import DataError
from alignlab.tools import check_arguments

from .conftest import SHARED_DATA

BFCL = SHARED_DATA / "bfcl"
KINDS = ["simple_python", "multiple", "parallel"]
FILES = [BFCL / f"BFCL_v4_{k}.json" for k in KINDS] + [BFCL / "possible_answer" / f"BFCL_v4_{k}.json" for k in KINDS]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.shared_data(*FILES, BFCL / "BFCL_v4_irrelevance.json")
def test_every_record_converts_and_its_calls_fit_the_schemas():
    n_calls = 0
    for kind in KINDS:
        questions = read(BFCL / f"BFCL_v4_{kind}.json")
        answers = read(BFCL / "possible_answer" / f"BFCL_v4_{kind}.json")
        assert len(questions) == len(answers)
        for q, a in zip(questions, answers):
            record = bfcl_to_messages(q, a)
            tools = {t["function"]["name"]: t for t in record["tools"]}
            assert json.dumps(record)  # plain JSON throughout
            reply = record["messages"][-1]
            assert reply["role"] == "assistant" and reply["tool_calls"]
            for call in reply["tool_calls"]:
                fn = call["function"]
                check_arguments(tools[fn["name"]], fn["arguments"])  # raises if a call does not fit
                n_calls += 1
    assert n_calls >= 1000
    for q in read(BFCL / "BFCL_v4_irrelevance.json"):  # no answer: the prompt and its tools alone
        record = bfcl_to_messages(q)
        assert [m["role"] for m in record["messages"]] == ["user"] and record["tools"]


def test_schema_dialect():
    spec = {"type": "dict", "properties": {
        "x": {"type": "float", "description": "a number", "optional": True, "default": 1.0},
        "pair": {"type": "tuple", "items": {"type": "integer"}},
        "anything": {"type": "any"},
        "inner": {"type": "dict", "properties": {"flag": {"type": "boolean"}}, "required": ["flag"]}},
        "required": ["pair"]}
    assert openai_schema(spec) == {"type": "object", "properties": {
        "x": {"type": "number", "description": "a number", "default": 1.0},
        "pair": {"type": "array", "items": {"type": "integer"}},
        "anything": {},
        "inner": {"type": "object", "properties": {"flag": {"type": "boolean"}}, "required": ["flag"]}},
        "required": ["pair"]}


def test_bad_records():
    q = {"id": "a", "question": [[{"role": "user", "content": "hi"}]], "function": []}
    with pytest.raises(DataError, match="field 'id'"):
        bfcl_to_messages(q, {"id": "b", "ground_truth": []})
    with pytest.raises(DataError, match="field 'question'"):
        bfcl_to_messages({"id": "a", "question": "hi"})
    with pytest.raises(DataError, match="field 'ground_truth'"):
        bfcl_to_messages(q, {"id": "a", "ground_truth": [{"f": {}, "g": {}}]})


@pytest.mark.shared_data(*FILES)
def test_bfcl_source_trains_on_the_calls(tmp_path):
    """`data=bfcl:DIR/CATEGORY` gives chat records whose trained tokens are the assistant's calls."""
    from alignlab.data.loaders import read_rows
    from alignlab.data.world import TinyWorld
    from alignlab.text import render_chat

    rows = read_rows(f"bfcl:{BFCL}/parallel")
    assert len(rows) == 200 and rows[0].where.startswith(str(BFCL / "BFCL_v4_parallel.json"))
    record = rows[0].record
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    ids, mask = render_chat(tok, record["messages"], tools=record["tools"], chat_template="chatml")
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained.count("<tool_call>") == 2 and "Taylor Swift" in trained and "Play songs" not in trained
    with pytest.raises(DataError, match="irrelevance has none"):
        read_rows(f"bfcl:{BFCL}/irrelevance")
