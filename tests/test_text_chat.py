"""Chat templates rendered exactly as transformers' apply_chat_template does, and render_chat's
assistant mask."""

import json

import jinja2
import pytest

from alignlab.errors import ConfigError
from alignlab.text import CharTokenizer, get_chat_template, load_tokenizer, render_chat, render_template, train_bpe
from alignlab.text.template import BUILTIN_TEMPLATES

from .hf_models import require

transformers = require("transformers")

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]  # fmt: skip
CORPUS = "".join(
    f"<|im_start|>user\nWhat is the weather in city {i}?<|im_end|>\n<|im_start|>assistant\n"
    f"It is {i % 30} degrees and sunny. Ünïcödé, 天气 ☀️.<|im_end|>\n"
    for i in range(50)
)

# Qwen2.5-Instruct's template, written out from its structure (tools in the system message,
# <tool_call> / <tool_response> blocks, a default system prompt).
QWEN25 = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n" }}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and "
        "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
        "{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. '
            'You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first)
        or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Meta-Llama-3-Instruct's template (one line in the original).
LLAMA3_ORIGINAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Exercises the environment: tojson options, non-ASCII, loop controls, extra kwargs, namespace.
FEATURES = """\
{%- set ns = namespace(n=0) %}
{%- for m in messages %}
  {%- if m.role == 'stop' %}{% break %}{% endif %}
  {%- set ns.n = ns.n + 1 %}
  {{ m.role }}: {{ m | tojson }} / {{ m | tojson(indent=2) }} / {{ m | tojson(separators=(',', ':')) }}
  {%- if m.reasoning_content is defined %} [thinking: {{ m.reasoning_content }}]{% endif %}
{% endfor %}
count={{ ns.n }} thinking={{ enable_thinking }} eos={{ eos_token }} bos={{ bos_token }}
{%- if tools %} tools={{ tools | tojson(sort_keys=True) }}{% endif %}
{%- if documents %} docs={{ documents | length }}{% endif %}
{% generation %}gen{% endgeneration %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather <now> & here, in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Zürich"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {}}},
]

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
USER = {"role": "user", "content": "What's the weather in Zürich? <b>now</b>"}
ASSISTANT = {"role": "assistant", "content": "  It's 21 °C and sunny.  "}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
    ],
}
TOOL_RESULT = {"role": "tool", "content": json.dumps({"temp": 21})}
CONVERSATIONS = {
    "single": [USER],
    "system": [SYSTEM, USER],
    "multi_turn": [SYSTEM, USER, ASSISTANT, {"role": "user", "content": "And tomorrow?"}],
    "ends_with_assistant": [USER, ASSISTANT],
    "tool_calls": [SYSTEM, USER, CALL, TOOL_RESULT, TOOL_RESULT, ASSISTANT],
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = train_bpe(CORPUS, 400, special_tokens=SPECIALS, bos_token="<|begin_of_text|>", progress=False)
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return tok, d


@pytest.fixture(scope="module")
def auto(saved):
    return transformers.AutoTokenizer.from_pretrained(str(saved[1]))


def hf_render(auto, template, messages, **kwargs):
    return auto.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


TEMPLATES = {"chatml": get_chat_template("chatml"), "llama3": get_chat_template("llama3"), "qwen25": QWEN25}


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no_tools", "tools"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_matches_transformers(saved, auto, template, conversation, tools, gen):
    tok, _ = saved
    messages = CONVERSATIONS[conversation]
    expected = hf_render(auto, TEMPLATES[template], messages, tools=tools, add_generation_prompt=gen)
    got = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=gen, chat_template=TEMPLATES[template]
    )
    assert got == expected
    # the same through a plain function call
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}
    assert (
        render_template(TEMPLATES[template], messages, tools=tools, add_generation_prompt=gen, **special)
        == got
    )


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("conversation", ["single", "system", "multi_turn", "ends_with_assistant"])
def test_llama3_original_template(saved, auto, conversation, gen):
    tok, _ = saved
    messages = CONVERSATIONS[conversation]
    expected = hf_render(auto, LLAMA3_ORIGINAL, messages, add_generation_prompt=gen)
    assert (
        tok.apply_chat_template(messages, add_generation_prompt=gen, chat_template=LLAMA3_ORIGINAL)
        == expected
    )
    assert expected.startswith("<|begin_of_text|><|start_header_id|>")


def test_environment_features_match(saved, auto):
    tok, _ = saved
    messages = [
        {"role": "user", "content": 'ünïcode <tag> & "quotes"', "extra": None},
        {"role": "assistant", "content": "ok", "reasoning": "let me think"},
        {"role": "stop", "content": "never shown"},
        {"role": "user", "content": "after stop"},
    ]
    kwargs = dict(tools=TOOLS, documents=[{"title": "a", "text": "b"}], enable_thinking=False)
    expected = hf_render(auto, FEATURES, messages, **kwargs)
    got = tok.apply_chat_template(messages, chat_template=FEATURES, **kwargs)
    assert got == expected
    assert "ünïcode <tag>" in got and "count=2" in got and "[thinking: let me think]" in got
    assert "thinking=False" in got and '"extra"' not in got


def test_tokenize_true_matches(saved, auto):
    tok, d = saved
    messages = CONVERSATIONS["multi_turn"]
    expected = auto.apply_chat_template(messages, chat_template=TEMPLATES["chatml"], return_dict=False)
    assert tok.apply_chat_template(messages, chat_template="chatml", tokenize=True) == expected
    assert load_tokenizer(d).apply_chat_template(messages, chat_template="chatml", tokenize=True) == expected


def test_globals_raise_exception_and_strftime():
    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must alternate"):
        render_template("{{ raise_exception('roles must alternate') }}", [USER])
    year = render_template("{{ strftime_now('%Y') }}", [USER])
    assert year.isdigit() and len(year) == 4


def test_sandboxed():
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_template("{{ messages.__class__.__mro__ }}", [USER])
    with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: templates can't mutate inputs
        render_template("{{ messages.append(1) }}", [USER])


def test_builtins():
    assert set(BUILTIN_TEMPLATES) >= {"chatml", "llama3"}
    with pytest.raises(ValueError, match="chatml"):
        get_chat_template("nope")
    text = render_template(get_chat_template("chatml"), [SYSTEM, USER, ASSISTANT])
    assert text == (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat's the weather in Zürich? <b>now</b><|im_end|>\n"
        "<|im_start|>assistant\n  It's 21 °C and sunny.  <|im_end|>\n"
    )
    with_tools = render_template(get_chat_template("chatml"), [USER], tools=TOOLS, add_generation_prompt=True)
    assert (
        with_tools.startswith("<|im_start|>system\n# Tools\n")
        and json.dumps(TOOLS[0], ensure_ascii=False) in with_tools
    )
    assert with_tools.endswith("<|im_start|>assistant\n")


def test_template_names(saved):
    # a name picks one of the tokenizer's own named templates first, then a built-in; a string
    # that is neither a name nor jinja (a typo) is an error, never rendered as the prompt text
    named = load_tokenizer(saved[1])  # a copy to give templates to
    named.chat_template = {"default": "D{{ messages | length }}", "llama3": BUILTIN_TEMPLATES["chatml"]}
    chatml = render_template(BUILTIN_TEMPLATES["chatml"], [USER, ASSISTANT])
    for name in ("llama3", "chatml"):  # the tokenizer's "llama3" shadows the built-in one
        assert named.apply_chat_template([USER, ASSISTANT], chat_template=name) == chatml
        assert named.decode(render_chat(named, [USER, ASSISTANT], chat_template=name).ids) == chatml
    assert named.apply_chat_template([USER]) == "D1"
    assert get_chat_template("llama3", templates=named.chat_template) == BUILTIN_TEMPLATES["chatml"]
    assert get_chat_template("llama3") == BUILTIN_TEMPLATES["llama3"]
    for call in (
        lambda: get_chat_template("chatm1"),
        lambda: named.apply_chat_template([USER], chat_template="chatm1"),
        lambda: render_chat(named, [USER], chat_template="chatm1"),
        lambda: CharTokenizer.from_text("ab", chat_template="chatm1"),
    ):
        with pytest.raises(ConfigError, match="unknown chat template 'chatm1'") as e:  # a ValueError too
            call()
        assert "chatml" in str(e.value) and "llama3" in str(e.value)


def test_template_selected_once_per_render(saved, monkeypatch):
    import alignlab.text.masks as masks
    import alignlab.text.template as template
    import alignlab.text.tokenizer as base

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    real = template.get_chat_template
    monkeypatch.setattr(masks, "get_chat_template", spy)
    monkeypatch.setattr(base, "get_chat_template", spy)
    tok, _ = saved
    tok.apply_chat_template([USER, ASSISTANT], chat_template="chatml", tokenize=True)
    assert len(calls) == 1
    render_chat(tok, CONVERSATIONS["multi_turn"], chat_template="chatml")
    assert len(calls) == 2


def test_no_template_is_a_clear_error():
    tok = train_bpe("hello world " * 20, 270, progress=False)
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([USER])


# --- render_chat ---


def test_render_chat_mask_chatml(saved):
    tok, _ = saved
    messages = CONVERSATIONS["multi_turn"] + [{"role": "assistant", "content": "Rain, 12 °C."}]
    ids, mask = render_chat(tok, messages, chat_template="chatml")
    text = tok.apply_chat_template(messages, chat_template="chatml")
    assert ids == tok.encode(text, add_special_tokens=False)  # cuts fall on token boundaries here
    assert len(mask) == len(ids)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "  It's 21 °C and sunny.  <|im_end|>\nRain, 12 °C.<|im_end|>\n"
    # the prompt before each reply ends with the assistant header, which is not trained on
    first = mask.index(1)
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_render_chat_generation_prompt_and_tools(saved):
    tok, _ = saved
    messages = CONVERSATIONS["tool_calls"][:-1]
    ids, mask = render_chat(tok, messages, tools=TOOLS, add_generation_prompt=True, chat_template="chatml")
    text = tok.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, chat_template="chatml")
    assert tok.decode(ids) == text and text.endswith("<|im_start|>assistant\n")
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert (
        trained
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>\n'
    )
    assert mask[-1] == 0


def test_render_chat_matches_transformers_generation_mask(saved, auto):
    # a template marking exactly the reply + end-of-turn with {% generation %}: transformers'
    # character-offset mask and our prefix-rendering mask must agree
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"
        "{% generation %}{{ m.content }}<|im_end|>\n{% endgeneration %}"
        "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok, _ = saved
    messages = CONVERSATIONS["multi_turn"] + [{"role": "assistant", "content": "Rain."}]
    out = auto.apply_chat_template(
        messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = render_chat(tok, messages, chat_template=template)
    assert ids == out["input_ids"]
    assert mask == out["assistant_masks"]


def test_render_chat_llama3(saved):
    tok, _ = saved
    messages = [SYSTEM, USER, ASSISTANT]
    ids, mask = render_chat(tok, messages, chat_template="llama3")
    assert ids[0] == tok.bos_token_id
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "It's 21 °C and sunny.<|eot_id|>"


def test_render_chat_rejects_unstable_template(saved):
    tok, _ = saved
    template = "{% for m in messages %}{{ m.content }}{% if loop.last %}<|im_end|>{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="prefix-stable"):
        render_chat(tok, [USER, ASSISTANT, USER, ASSISTANT], chat_template=template)
