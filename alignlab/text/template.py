"""Chat templates: a conversation (list of {"role", "content"} dicts) -> the model's prompt text.

A chat template is a jinja2 program shipped with the tokenizer. We render it in the same
environment as transformers' `apply_chat_template` so the text is identical, character for
character: a sandbox (templates are untrusted code from the Hub), `trim_blocks` and
`lstrip_blocks`, the `raise_exception` and `strftime_now` globals, a `tojson` filter that does
not HTML-escape, and the variables `messages`, `tools`, `documents`, `add_generation_prompt`, the
special token strings (`bos_token`, `eos_token`, ...) and any extra kwargs (`enable_thinking`).

Also here: built-in templates for models that ship none (`chatml`, `llama3`), `get_chat_template`,
which picks the template to render (a tokenizer may have several, and a name may be given),
reading and writing templates in a tokenizer directory as transformers does, and
END_OF_TURN_TOKENS, the tokens that close a turn in common chat formats. Which rendered tokens
are trained (the loss masks of SFT and preference data) is alignlab.text.masks.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from alignlab.errors import ConfigError

# Tokens that end an assistant turn in common chat formats. If the vocabulary has one of them,
# generation stops on it as well as on eos (a chat model ends turns with <|im_end|>, not eos).
END_OF_TURN_TOKENS = (
    *("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>"),  # chat turns
    *("<|endoftext|>", "<|end_of_text|>"),  # end of document (GPT-2/Qwen, Llama 3)
)

# ----------------------------------------------------------------------------------------------
# Built-in templates

# ChatML as Qwen2.5 writes it: <|im_start|>role\ncontent<|im_end|>\n per message. Tools go into the
# system message as JSON schemas inside <tools></tools>; the assistant calls them with
# <tool_call>{"name": ..., "arguments": ...}</tool_call> and results come back as <tool_response>
# blocks in a user turn. Unlike Qwen's, no default system prompt is invented.
CHATML = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
        'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'
        '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {%- if call.function is defined %}
                {%- set call = call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
            {{- call.arguments if call.arguments is string else call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama 3 style: bos, then <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> per message.
# Tools (Llama 3.1 style, simplified) are listed as JSON in the system turn; a call is a JSON
# object {"name": ..., "parameters": ...}; results come back in "ipython" turns.
LLAMA3 = """\
{{- bos_token }}
{%- if tools %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content | trim + '\\n\\n' }}
    {%- endif %}
    {{- 'You have access to the following functions. To call a function, respond with JSON for a '
        'function call, in the format {"name": function name, "parameters": dictionary of argument '
        'name and its value}. Do not use variables.\\n\\n' }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) + '\\n\\n' }}
    {%- endfor %}
    {{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first and tools %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {%- for call in message.tool_calls %}
            {%- if call.function is defined %}
                {%- set call = call.function %}
            {%- endif %}
            {{- '{"name": "' + call.name + '", "parameters": ' }}
            {{- call.arguments if call.arguments is string else call.arguments | tojson }}
            {{- '}' }}
        {%- endfor %}
        {{- '<|eot_id|>' }}
    {%- else %}
        {%- set role = 'ipython' if message.role == 'tool' else message.role %}
        {{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}
        {{- message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

BUILTIN_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3}


def get_chat_template(
    chat_template: str | None = None,
    tools: list | None = None,
    templates: str | dict[str, str] | None = None,
) -> str:
    """The jinja text to render, chosen as transformers' `get_chat_template` chooses it.

    `templates` is a tokenizer's own: one template, or several by name. `chat_template`, if given,
    is jinja text or a name: of one of `templates` first, else of a built-in ("chatml", "llama3").
    A string with neither `{{` nor `{%` that names nothing is an error (a typo such as "chatm1"
    would otherwise render as the literal prompt). Without `chat_template`, from named templates
    "tool_use" is taken when tools are given (if there is one), else "default".
    """
    named = templates if isinstance(templates, dict) else {}
    if chat_template is None:
        if isinstance(templates, dict):
            name = "tool_use" if tools is not None and "tool_use" in named else "default"
            if name not in named:
                raise ConfigError(f"no 'default' among the named chat templates {sorted(named)}; pass chat_template=")
            return named[name]
        if templates is None:
            raise ConfigError("this tokenizer has no chat template; pass chat_template= (e.g. 'chatml')")
        return templates
    if chat_template in named:
        return named[chat_template]
    if chat_template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[chat_template]
    if "{{" not in chat_template and "{%" not in chat_template:
        available = ", ".join(dict.fromkeys([*named, *BUILTIN_TEMPLATES]))
        what = "neither a template name nor jinja"
        raise ConfigError(f"unknown chat template {chat_template!r} ({what}); available: {available}")
    return chat_template


# Where transformers keeps the templates in a tokenizer directory: the default one, and the others by name.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"


def load_chat_template(directory: Path, config: dict) -> str | dict[str, str] | None:
    """A tokenizer directory's chat template(s), read as transformers reads them: the files
    chat_template.jinja ("default") and additional_chat_templates/NAME.jinja take priority over
    the config's "chat_template" (one template, or a list of {"name": ..., "template": ...})."""
    files = {}
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        files["default"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    for path in sorted((directory / CHAT_TEMPLATE_DIR).glob("*.jinja")):
        files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if files:
        return files["default"] if list(files) == ["default"] else files
    template = config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template}
    return template


def save_chat_template(directory: Path, template: str | dict[str, str] | None) -> None:
    """Write chat template(s) as transformers does: "default" to chat_template.jinja, the others
    to additional_chat_templates/NAME.jinja."""
    templates = {"default": template} if isinstance(template, str) else template or {}
    for name, text in templates.items():
        path = directory / CHAT_TEMPLATE_FILE
        if name != "default":
            path = directory / CHAT_TEMPLATE_DIR / f"{name}.jinja"
            if path.resolve().parent != (directory / CHAT_TEMPLATE_DIR).resolve():  # names come from configs
                raise ConfigError(f"chat template name {name!r} is not a plain file name")
            path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Rendering


class _GenerationTag(Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some templates to mark assistant
    text for transformers' mask) and renders the body unchanged; alignlab.text.masks finds the
    assistant spans its own way."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson HTML-escapes '<', '>', '&' and "'"; templates expect plain json.dumps
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Compile once per distinct template string (rendering a chat is then cheap)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # the names a message's reasoning goes by


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_template(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with a jinja chat template, as transformers does. The template is the
    text itself: `get_chat_template` turns a name ("chatml") into one.

    Messages are normalized as transformers does: keys whose value is None are dropped (an API's
    `content=None` then reads as absent, which templates handle), and a message's reasoning, under
    any of its names, is made visible as both `reasoning_content` and `thinking`. kwargs -- the
    special token strings and things like `enable_thinking` -- become template variables.
    """
    messages = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in messages]
    return compile_template(template).render(
        messages=messages,
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
