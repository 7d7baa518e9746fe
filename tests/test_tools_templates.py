"""Tools in real chat templates: every template trl ships that renders `tools` gives, through alignlab's renderer,
the text transformers' apply_chat_template gives (a conversation with parallel calls and their results, and a
generation prompt), and the calls an assistant turn renders read back with the parser of that template's format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignlab.text.template import render_template
from alignlab.tools.calls import parse_calls

from .hf_models import require

transformers = require("transformers")
trl = require("trl")

TEMPLATE_DIR = Path(trl.__file__).parent / "chat_templates"
WITH_TOOLS = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja") if "tools" in p.read_text())
# the call format each family's assistant turns are rendered in (alignlab.tools.calls)
FORMATS = {"qwen2_5": "hermes", "qwen2_5_training": "hermes", "qwen3": "hermes", "qwen3_training": "hermes",
           "llama3_1": "llama3", "llama3_2": "llama3"}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city."},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}]
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}},
         {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": c} for i, c in enumerate(CALLS)]},
    {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": '{"temp": 18}'},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 4}'},
    {"role": "assistant", "content": "Paris 18, Oslo 4."},
]
ONE_CALL = [*CONVERSATION[:2], {"role": "assistant", "content": "", "tool_calls": CONVERSATION[2]["tool_calls"][:1]},
            CONVERSATION[3], CONVERSATION[5]]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def hf(template: str, messages: list[dict], **kwargs) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, tools=kwargs.pop("tools"),
                                        **kwargs, **SPECIAL)
    return rendered[0]


def outcome(fn):
    try:
        return fn()
    except Exception as e:  # a template may refuse a conversation (raise_exception): both must refuse it
        return f"raised {type(e).__name__}"


def test_trl_ships_the_templates_named():
    assert {"qwen2_5", "llama3_1", "llama3_2", "qwen3"} <= set(WITH_TOOLS), WITH_TOOLS


@pytest.mark.parametrize("name", WITH_TOOLS)
@pytest.mark.parametrize("case", ["parallel_calls", "one_call", "generation_prompt"])
def test_rendering_equals_transformers(name, case):
    template = (TEMPLATE_DIR / f"{name}.jinja").read_text()
    messages, gen = {"parallel_calls": (CONVERSATION, False), "one_call": (ONE_CALL, False),
                     "generation_prompt": (CONVERSATION[:2], True)}[case]
    ours = outcome(lambda: render_template(template, messages, tools=TOOLS, add_generation_prompt=gen, **SPECIAL))
    theirs = outcome(lambda: hf(template, messages, tools=TOOLS, add_generation_prompt=gen))
    assert ours == theirs
    if case != "parallel_calls":  # Llama 3.1/3.2's templates refuse parallel calls; every template takes these
        assert "get_weather" in ours and "Paris" in ours  # the tools and the call reached the prompt


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_rendered_calls_parse_back(name):
    template = (TEMPLATE_DIR / f"{name}.jinja").read_text()
    calls = CALLS[:1] if name.startswith("llama3") else CALLS  # Llama 3.1/3.2's templates take one call a turn
    messages = CONVERSATION[:2] + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": c} for i, c in enumerate(calls)]}]
    before = render_template(template, messages[:2], tools=TOOLS, add_generation_prompt=True, **SPECIAL)
    full = render_template(template, messages, tools=TOOLS, **SPECIAL)
    assert full.startswith(before)
    turn = full[len(before):]
    for end in ("<|im_end|>", "<|eot_id|>", "<|eom_id|>"):
        turn = turn.split(end)[0]
    turn = re.sub(r"^<think>\s*</think>\s*", "", turn)  # Qwen3 renders an empty reasoning block first
    content, parsed = parse_calls(turn, FORMATS[name])
    assert parsed == calls and content == "", (turn, json.dumps(parsed))
