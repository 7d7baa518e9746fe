"""The loss masks of chat training: a conversation -> token ids, and which of them are trained.

`chat_segments` cuts a rendered conversation (alignlab.text.template) into prompt and reply
segments, `encode_chat` tokenizes them into (ids, mask) with a stop token always trained, and
`render_chat` is that for every reply. The data layer (alignlab.data.sft, alignlab.data.preference)
builds on them.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import jinja2

from alignlab.errors import ConfigError, UserError
from alignlab.text.template import REASONING_KEYS, get_chat_template, render_template
from alignlab.text.tokenizer import Tokenizer


class Segment(NamedTuple):
    text: str
    trained: bool


class ChatTokens(NamedTuple):
    ids: list[int]
    mask: list[int]  # 1 where the token is trained (an assistant reply and its end of turn), else 0


class ChatTemplateError(UserError, ValueError):
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
        raise ConfigError("the tokenizer has no eos_token: SFT appends it to each example so that the model learns "
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
