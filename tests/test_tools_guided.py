"""Schema-constrained decoding (alignlab.tools.guided): the grammar machine takes exactly the JSON it should, and a
random model under the guide writes a call that fits its schema every time -- 200 of 200 prompts, through the
engine and through the server (tool_choice "required" and a named function, streamed and not)."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.data.world import TinyWorld
from alignlab.infer import Engine, LLMEngine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.tools import ToolArgumentError, check_arguments
from alignlab.tools.calls import parse_calls
from alignlab.tools.guided import MAX_STRING, REQUIRED_START, Lit, call_guide, feed, named_start, value

from .hf_models import require

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "book_table", "parameters": {
        "type": "object", "required": ["when", "confirmed"], "properties": {
            "when": {"type": "object", "required": ["day"], "properties": {
                "day": {"type": "integer"}, "hour": {"type": ["number", "null"]}}},
            "guests": {"type": "array", "items": {"type": "string"}},
            "seat": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
            "confirmed": {"type": "boolean"}}}}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]
SCHEMAS = {t["function"]["name"]: t for t in TOOLS}


def takes(schema: dict, text: str) -> bool:
    """Does the machine take all of text as one complete value of schema (then the closing literal)?"""
    stack = (Lit("#"), value(schema))
    for c in text + "#":
        stack = feed(stack, c)
        if stack is None:
            return False
    return stack == ()


BOOK = SCHEMAS["book_table"]["function"]["parameters"] | {"type": "object"}


@pytest.mark.parametrize("text, ok", [
    ('{"when": {"day": 3}, "confirmed": true}', True),
    ('{"confirmed": false, "when": {"hour": null, "day": 12}, "guests": ["Ann", "Bo"]}', True),
    ('{"when": {"day": 3, "hour": 7.25}, "seat": ["window", 4], "confirmed": true}', True),
    ('{"when": {"day": 3}, "guests": [], "confirmed": true}', True),
    ('{"when": {"day": 3}}', False),  # a required key is missing: "}" is refused
    ('{"when": {"day": 3}, "when": {"day": 4}, "confirmed": true}', False),  # a key twice
    ('{"when": {"day": 03}, "confirmed": true}', False),  # a leading zero
    ('{"when": {"day": 3.5}, "confirmed": true}', False),  # an integer has no fraction
    ('{"when": {"day": 3}, "confirmed": "yes"}', False),
    ('{"when": {"day": 3}, "seat": ["window"], "confirmed": true}', False),  # prefixItems: both positions
    ('{"when": {"day": 3}, "extra": 1, "confirmed": true}', False),  # a key the schema does not name
    ('{"when":{"day":3},"confirmed":true}', False),  # one spelling: json.dumps's separators
])
def test_the_machine_takes_exactly_the_schema(text, ok):
    assert takes(BOOK, text) is ok
    if ok:
        check_arguments(SCHEMAS["book_table"], text)  # what it takes fits the schema


def test_strings_enums_and_numbers():
    weather = SCHEMAS["get_weather"]["function"]["parameters"] | {"type": "object"}
    assert takes(weather, '{"unit": "fahrenheit", "city": "Oslo"}')
    assert not takes(weather, '{"city": "Oslo", "unit": "kelvin"}')
    assert takes({"type": "string"}, '"' + "x" * MAX_STRING + '"')
    assert not takes({"type": "string"}, '"' + "x" * (MAX_STRING + 1) + '"')
    assert not takes({"type": "string"}, '"a\\"b"')  # no escapes
    assert takes({"type": "number"}, "-0.5") and takes({"type": "number"}, "10") and not takes({"type": "number"}, "1.")
    assert takes({"enum": [1, 10, "a"]}, "10") and takes({"enum": [1, 10, "a"]}, "1")
    assert takes({"type": "object", "properties": {}}, "{}") and not takes({"type": "object", "properties": {}}, "{ }")


@pytest.fixture(scope="module")
def tiny():
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=2048,
                            eos_token_id=tok.eos_token_id)).eval()
    return model, tok


def prompt(tok, i: int, start: str) -> str:
    messages = [{"role": "user", "content": f"Question number {i}: what should I do?"}]
    return tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True) + start


def parse(start: str, text: str) -> tuple[str, list[dict]]:
    return parse_calls(start + text, "hermes")


def test_200_prompts_from_a_random_model_all_fit(tiny):
    model, tok = tiny
    engine = Engine(model, tok)
    required = call_guide(tok, TOOLS)
    named = {n: call_guide(tok, TOOLS, n) for n in SCHEMAS}
    jobs = [(i, None) for i in range(100)] + [(i, list(SCHEMAS)[i % 3]) for i in range(100, 200)]
    prompts = [prompt(tok, i, REQUIRED_START if n is None else named_start(n)) for i, n in jobs]
    params = [SamplingParams(max_new_tokens=(required if n is None else named[n]).max_tokens, temperature=1.0,
                             seed=i, guide=required if n is None else named[n]) for i, n in jobs]
    outs = engine.generate(prompts, params)
    names = []
    for (_, n), out in zip(jobs, outs):
        start = REQUIRED_START if n is None else named_start(n)
        content, calls = parse(start, out.text)
        assert out.finish_reason == "stop" and content == "" and len(calls) == 1, out.text
        call = calls[0]
        check_arguments(SCHEMAS[call["name"]], json.dumps(call["arguments"]))
        assert n is None or call["name"] == n
        names.append(call["name"])
    assert len(set(names[:100])) >= 2  # "required" leaves the choice of tool to the model

    # without the guide the same model writes no valid call
    free = engine.generate(prompts[:20], [SamplingParams(max_new_tokens=64, temperature=1.0, seed=i)
                                          for i in range(20)])
    valid = 0
    for out in free:
        _, calls = parse(REQUIRED_START, out.text)
        for call in calls:
            try:
                check_arguments(SCHEMAS[call["name"]], json.dumps(call["arguments"]))
                valid += 1
            except (KeyError, ToolArgumentError):
                pass
    assert valid == 0


def test_llm_engine_guides_too(tiny):
    model, tok = tiny
    guide = call_guide(tok, TOOLS, "get_weather")
    engine = LLMEngine(model, tok)
    outs = engine.generate([prompt(tok, i, named_start("get_weather")) for i in range(4)],
                           [SamplingParams(max_new_tokens=guide.max_tokens, temperature=1.0, seed=i, guide=guide)
                            for i in range(4)])
    for out in outs:
        _, (call,) = parse(named_start("get_weather"), out.text)
        check_arguments(SCHEMAS["get_weather"], json.dumps(call["arguments"]))


def test_the_server_guides_required_and_named_calls(tiny):
    require("openai")
    from alignlab.serve import build_state

    from .test_serve import serving

    model, tok = tiny
    state = build_state(model, tok, model_names=["tiny"])
    messages = [{"role": "user", "content": "Book me a table."}]
    with serving(state) as s:
        client = s.client()
        for choice in ("required", {"type": "function", "function": {"name": "book_table"}}):
            r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice=choice,
                                               temperature=1.0, seed=3, max_tokens=1000)
            (call,) = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls"
            check_arguments(SCHEMAS[call.function.name], call.function.arguments)
            chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, seed=4,
                                                         tool_choice=choice, temperature=1.0, max_tokens=1000,
                                                         stream=True))
            deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])] if chunks else []
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            assert not "".join(ch.choices[0].delta.content or "" for ch in chunks)  # no half call leaks as text
            name = next(d.function.name for d in deltas if d.function.name)
            check_arguments(SCHEMAS[name], "".join(d.function.arguments or "" for d in deltas))
