"""Chat templates: a conversation (list of {"role", "content"} dicts) -> the model's prompt text.

A chat template is a jinja2 program shipped with the tokenizer. We render it in the same
environment as transformers' `apply_chat_template` so the text is identical, character for
character: a sandbox (templates are untrusted code from the Hub), `trim_blocks` and
`lstrip_blocks`, the `raise_exception` and `strftime_now` globals, a `tojson` filter that does
not HTML-escape, and the variables `messages`, `tools`, `documents`, `add_generation_prompt`, the
special token strings (`bos_token`, `eos_token`, ...) and any extra kwargs (`enable_thinking`).

Also here: built-in templates for models that ship none (`chatml`, `llama3`), `get_chat_template`,
which picks the template to render (a tokenizer may have several, and a name may be given), and the
loss masks of SFT: `chat_segments` cuts a rendered conversation into prompt and reply segments,
`encode_chat` tokenizes them into (ids, mask) with a stop token always trained, and `render_chat`
is that for every reply. The data layer (alignlab.data.sft) builds on them.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from alignlab.text.tokenizer import Tokenizer

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
                raise ValueError(f"no 'default' among the named chat templates {sorted(named)}; pass chat_template=")
            return named[name]
        if templates is None:
            raise ValueError("this tokenizer has no chat template; pass chat_template= (e.g. 'chatml')")
        return templates
    if chat_template in named:
        return named[chat_template]
    if chat_template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[chat_template]
    if "{{" not in chat_template and "{%" not in chat_template:
        available = ", ".join(dict.fromkeys([*named, *BUILTIN_TEMPLATES]))
        what = "neither a template name nor jinja"
        raise ValueError(f"unknown chat template {chat_template!r} ({what}); available: {available}")
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
                raise ValueError(f"chat template name {name!r} is not a plain file name")
            path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Rendering


class _GenerationTag(Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some templates to mark assistant
    text for transformers' mask) and renders the body unchanged; `chat_segments` finds the
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


# ----------------------------------------------------------------------------------------------
# Tokenizing a conversation for training: segments of rendered text, each trained or not


class Segment(NamedTuple):
    text: str
    trained: bool


class ChatTokens(NamedTuple):
    ids: list[int]
    mask: list[int]  # 1 where the token is trained (an assistant reply and its end of turn), else 0


class ChatTemplateError(ValueError):
    """A chat template whose rendering can't be split into prompt and reply segments."""


def _context(text: str, at: int, width: int = 40) -> str:
    return repr(("..." if at > width else "") + text[max(0, at - width):at + width])


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _own_text(message: dict) -> str:
    """What an assistant message itself says: content, reasoning, tool calls (for the user-turn check)."""
    parts = [message.get("content") or ""] + [message.get(k) or "" for k in REASONING_KEYS]
    parts += [json.dumps(c, ensure_ascii=False) for c in message.get("tool_calls") or []]
    return "\n".join(parts)


def chat_segments(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None = None, train_from: int = 0,
                  chat_template: str | None = None, add_generation_prompt: bool = False,
                  **kwargs: Any) -> list[Segment]:
    """The rendered conversation cut into segments: each assistant reply at index >= train_from
    (from where generation starts to its end of turn) is trained, everything else is not.

    For assistant message i, with render(...) the template's text:
        full   = render(messages)                                   what is trained on
        prompt = render(messages[:i], add_generation_prompt=True)   must be how `full` begins
        reply  = render(messages[:i + 1])                           `full` continues with it
    The reply segment is full[len(prompt):len(reply)]. A template may close a conversation that
    ends on a reply with an extra eos (Phi-3 does); that suffix, absent from `full` when more turns
    follow, is left out. Anything else that differs means the template rewrites earlier turns, and
    a ChatTemplateError says where. With add_generation_prompt, `full` ends with the generation
    prompt (untrained), for a conversation to be continued.

    Cutting at these places, never searching the tokens for a response template, makes the prompt's
    tokens exactly those the model is given at inference and the reply's exactly those it must
    produce, for any template, with or without `{% generation %}` markers. Templates that rewrite
    earlier turns (Qwen3 and DeepSeek-R1 drop the <think> of past replies) or that write a user turn
    only together with the reply are refused: they can't be trained on faithfully turn by turn (one
    example per reply can, see alignlab.data.sft.split_replies).
    """
    template = get_chat_template(chat_template, tools, tokenizer.chat_template)
    variables = {**tokenizer.special_tokens_map, **kwargs}

    def render(msgs, generation_prompt=False):
        return render_template(template, msgs, tools=tools, add_generation_prompt=generation_prompt, **variables)

    full = render(messages, add_generation_prompt)
    end_tokens = [t for t in (tokenizer.id_to_token(i) for i in tokenizer.eos_token_ids) if t]
    cuts: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i < train_from:
            continue
        prompt = render(messages[:i], generation_prompt=True) if i else _opening(render, full)
        if not full.startswith(prompt):
            k = _common_prefix(prompt, full)
            raise ChatTemplateError(
                f"chat template is not prefix-stable: the prompt before messages[{i}] (rendered with "
                f"add_generation_prompt=True) is not how the whole conversation begins; at character {k} the "
                f"prompt has {_context(prompt, k)} where the conversation has {_context(full, k)}. The template "
                "renders earlier turns differently depending on what follows (Qwen3 and DeepSeek-R1 drop the "
                "<think> of past replies), or its generation prompt differs from how it opens a reply, so the "
                "text trained on is not what the model sees when it generates. Use a template that keeps "
                "earlier turns unchanged (e.g. TRL's *_training.jinja variants) or one example per reply "
                "(alignlab.data.sft.split_replies).")
        reply = render(messages[:i + 1])
        end = _reply_end(reply, full, end_tokens)
        if end is None:
            k = _common_prefix(reply, full)
            raise ChatTemplateError(
                f"chat template is not prefix-stable: messages[{i}] (assistant) renders as {_context(reply, k)} "
                f"when the conversation ends with it but as {_context(full, k)} when more turns follow "
                f"(character {k}). The template rewrites past replies (Qwen3 and DeepSeek-R1 drop their "
                "<think> reasoning), so this reply can't be trained on as it is written. Use a template that "
                "keeps earlier turns unchanged (e.g. TRL's *_training.jinja variants) or one example per reply "
                "(alignlab.data.sft.split_replies).")
        start = len(prompt)
        if end <= start or (cuts and start < cuts[-1][1]):
            raise ChatTemplateError(f"chat template renders messages[{i}] (assistant) as nothing (or before the "
                                    "previous reply ends): can't find its text")
        _check_no_other_turn(messages, i, full, start, end)
        cuts.append((start, end))

    segments, at = [], 0
    for start, end in cuts:
        segments += [Segment(full[at:start], False), Segment(full[start:end], True)]
        at = end
    segments.append(Segment(full[at:], False))
    return [s for s in segments if s.text]


def _opening(render, full: str) -> str:
    """What comes before a reply that opens the conversation: the template's generation prompt for no
    messages (a bos, a default system prompt, the assistant header), if it renders and begins `full`."""
    try:
        prompt = render([], generation_prompt=True)
    except jinja2.TemplateError:  # e.g. a template reading messages[0]
        return ""
    return prompt if full.startswith(prompt) else ""


def _reply_end(reply: str, full: str, end_tokens: list[str]) -> int | None:
    """Where the reply ends in `full`: all of `reply`, or `reply` minus a trailing run of eos-like
    tokens and whitespace that the template adds only at the very end of a conversation."""
    text = reply
    while not full.startswith(text):
        token = next((t for t in end_tokens if text.endswith(t)), None)
        if token is not None:
            text = text[:-len(token)]
        elif text[-1:].isspace():
            text = text[:-1]
        else:
            return None
    return len(text)


def _check_no_other_turn(messages: list[dict], i: int, full: str, start: int, end: int) -> None:
    """A template that writes a user turn only once the reply follows (and not in the generation
    prompt) would put that turn inside the reply's segment: the model would be trained to say it."""
    span, own = full[start:end], _own_text(messages[i])
    for j, m in enumerate(messages[:i]):
        content = (m.get("content") or "").strip() if m.get("role") != "assistant" else ""
        if content and content not in full[:start] and content in span and content not in own:
            raise ChatTemplateError(
                f"chat template writes messages[{j}] ({m['role']}) inside the reply of messages[{i}]: it is not "
                f"in the prompt rendered with add_generation_prompt=True (which ends {_context(full[:start], start)}) "
                "but appears after it, so it would be trained as if the model had said it")



def _stop_ids(tokenizer: Tokenizer) -> set[int]:
    return set(tokenizer.eos_token_ids)


def eos_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's eos id, which SFT appends where a target would otherwise never stop."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: SFT appends it to each example so that the model learns "
                         "to stop; give the tokenizer one")
    return tokenizer.eos_token_id


def encode_chat(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None = None, train_from: int = 0,
                chat_template: str | None = None, add_generation_prompt: bool = False,
                **kwargs: Any) -> ChatTokens:
    """(ids, mask) of a conversation: mask[t] = 1 where token t is trained (an assistant reply at
    index >= train_from and its end of turn). Each segment is tokenized on its own. A reply whose
    tokens hold no stop token (eos or an end-of-turn token) gets the one that follows it, if the
    template writes one next, else the tokenizer's eos: the model must learn to stop."""
    segments = chat_segments(tokenizer, messages, tools, train_from, chat_template, add_generation_prompt, **kwargs)
    pieces = [tokenizer.encode(s.text, add_special_tokens=False) for s in segments]
    stop = _stop_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for k, (segment, piece) in enumerate(zip(segments, pieces)):
        if segment.trained and not stop.intersection(piece):
            after = pieces[k + 1] if k + 1 < len(pieces) else []
            if after and after[0] in stop:
                piece, pieces[k + 1] = piece + after[:1], after[1:]
            else:
                piece = piece + [eos_id(tokenizer)]
        ids += piece
        mask += [int(segment.trained)] * len(piece)
    return ChatTokens(ids, mask)


def render_chat(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    chat_template: str | None = None,
    **kwargs: Any,
) -> ChatTokens:
    """Token ids of a rendered conversation and its assistant mask, for SFT loss masking: every
    assistant reply with its end of turn is trained (mask 1), the rest is not. With
    add_generation_prompt the ids end with the (untrained) prompt for the next reply. This is
    `encode_chat` training every reply; see `chat_segments` for how the replies are found and which
    templates are refused (a ChatTemplateError, a ValueError)."""
    return encode_chat(tokenizer, messages, tools, 0, chat_template, add_generation_prompt, **kwargs)
