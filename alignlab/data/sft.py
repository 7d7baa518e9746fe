"""SFT data: record formats, validation, tokenization with loss masks, and what `alignlab inspect-data` shows.

The record formats are TRL's, one dict per example (extra fields are ignored):

    language modelling   {"text": "The whole document."}                     trained: all of it
                         {"messages": [{"role", "content"}, ...]}            the assistant's replies
    prompt-completion    {"prompt": "Q: 2+2?\\nA:", "completion": " 4"}       the completion
                         {"prompt": [messages], "completion": [messages]}    the completion's replies
    + "tools": [...]     JSON schemas on a conversational record, handed to the chat template

A message is {"role": system|user|assistant|tool, "content": str}; an assistant message may carry
"tool_calls" ([{"type": "function", "function": {"name", "arguments"}}], content then optional) and
its reasoning ("reasoning_content" / "thinking"). Prompt-only data (GRPO) and preference pairs (DPO)
are named as such in the error, and so are alpaca/GSM8K/ShareGPT layouts (convert them:
alignlab.data.converters).

    records, where = load_sft_data("chats.jsonl")                 # read, convert, validate
    examples, counts, dropped = tokenize_records(tok, records, max_len=1024, where=where)
    print(inspect_example(tok, records[0]))                       # trained tokens in green
    batches = ConversationBatches(examples, 16, tok.padding_id, seed=0)  # shuffled, right-padded, resumable

Masks come from rendered segments, never from searching the tokens for a response template:

- conversations (`chat_segments` and `encode_chat` of alignlab.text.masks, which `render_chat` and
  alignlab.data.preference use too): the chat template renders the whole conversation once;
  each assistant reply is located by rendering the prefix before it with add_generation_prompt=True
  (where generation starts) and the prefix ending with it (where it ends). The text is tokenized piece by piece at
  those cuts, so the prompt's tokens are exactly those the model is given at inference and the
  reply's are exactly those it must produce. This works for any template, with or without
  `{% generation %}` markers. Templates that rewrite earlier turns (Qwen3 and DeepSeek-R1 drop
  the <think> of past replies) or that write a user turn only together with the reply are refused
  with an error that says so: they cannot be trained on faithfully turn by turn (`split_replies`
  makes one example per reply, which they can).
- prompt-completion: the prompt is tokenized on its own, the completion after it.
- text: every token.

The end of every reply is trained: the template's end-of-turn token (<|im_end|>, <|eot_id|>,
<|end|>, ...) when it writes one, else the tokenizer's eos, appended as TRL appends it to text.
Padding never touches labels (the collator pads with IGNORE_INDEX), so pad == eos is harmless.

TRL pitfalls this avoids (reference §7): completion masks from a response-template search that
fails when the template tokenizes differently in context, dropping examples silently (trl#1820,
#588, #1183); `assistant_only_loss` giving all-zero masks on stock templates without
`{% generation %}` (trl#4879, marin#7237); a model that never stops because EOS was masked as
padding or never appended (trl#1623, #2059, alignment-handbook#127).

Truncation keeps the first `max_len` tokens (TRL's `keep_start`; `keep_end` keeps the last). A
reply cut short keeps its remaining tokens as targets and gets no end-of-turn token invented; an
example left with no target token is dropped. Both are counted and returned, never silent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from alignlab.data.converters import get_converter
from alignlab.data.errors import DataError
from alignlab.data.loaders import read_rows
from alignlab.data.sampler import EpochSampler
from alignlab.errors import ConfigError
from alignlab.objectives.lm import IGNORE_INDEX
from alignlab.text.masks import ChatTemplateError, encode_chat, eos_id
from alignlab.text.template import REASONING_KEYS

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("text", "messages", "prompt_completion", "conversational_prompt_completion")
TRUNCATION = ("keep_start", "keep_end")

# ----------------------------------------------------------------------------------------------
# 1. Formats and validation


def _fail(where: str, path: str, reason: str):
    raise DataError(f"{where}: field {path}: {reason}")


def detect_format(record: dict, where: str = "record") -> str:
    """Which of FORMATS a record is, from its fields (a field holding None counts as absent)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object of fields (a record), got {type(record).__name__}")
    has = {k for k, v in record.items() if v is not None}
    both = [k for k in ("text", "messages", "prompt") if k in has]
    if len(both) > 1:
        raise DataError(f"{where}: has both {both[0]!r} and {both[1]!r}: one record is one format")
    if "text" in has or "messages" in has:
        if "completion" in has:
            raise DataError(f"{where}: 'completion' goes with 'prompt', not with {both[0]!r}")
        return "text" if "text" in has else "messages"
    if "prompt" in has and "completion" in has:
        conversational = isinstance(record["prompt"], list), isinstance(record["completion"], list)
        if conversational[0] != conversational[1]:
            raise DataError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists")
        return "conversational_prompt_completion" if conversational[0] else "prompt_completion"
    if "chosen" in has or "rejected" in has:
        raise DataError(f"{where}: a preference pair ('chosen'/'rejected') is for DPO or a reward model; "
                        "SFT needs 'text', 'messages', or 'prompt' + 'completion'")
    if "prompt" in has:
        raise DataError(f"{where}: 'prompt' without 'completion' is prompt-only data (for GRPO/RLOO); "
                        "SFT needs a 'completion' to learn")
    if "completion" in has:
        raise DataError(f"{where}: 'completion' without 'prompt'")
    hints = {"instruction": "alpaca", "question": "gsm8k", "conversations": "sharegpt"}
    hint = next((f" -- it looks like {name} data: convert it (convert={name})" for k, name in hints.items()
                 if k in has), "")
    raise DataError(f"{where}: no SFT fields: expected 'text', 'messages', or 'prompt' + 'completion' "
                    f"(fields: {', '.join(sorted(has)) or 'none'}){hint}")


def _check_message(m: Any, where: str, path: str) -> None:
    if not isinstance(m, dict):
        _fail(where, path, f"must be a message {{'role': ..., 'content': ...}}, got {type(m).__name__}")
    role, content, calls = m.get("role"), m.get("content"), m.get("tool_calls")
    if role not in ROLES:
        _fail(where, f"{path}.role", f"must be one of {'/'.join(ROLES)}, got {role!r}")
    if calls is not None:
        if role != "assistant":
            _fail(where, f"{path}.tool_calls", f"only assistant messages call tools, this one is {role!r}")
        if not isinstance(calls, list) or not calls:
            _fail(where, f"{path}.tool_calls", "must be a non-empty list of calls")
        for j, call in enumerate(calls):
            f = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
                _fail(where, f"{path}.tool_calls[{j}]", "must be {'function': {'name': str, 'arguments': ...}}")
            if not isinstance(f.get("arguments", {}), (dict, str)):
                _fail(where, f"{path}.tool_calls[{j}].arguments", "must be an object or a JSON string")
    if content is None:
        if not calls:
            _fail(where, f"{path}.content", "missing (only an assistant message with tool_calls may omit it)")
    elif not isinstance(content, str):
        parts = " (content-part lists, as in multimodal data, are not supported)" if isinstance(content, list) else ""
        _fail(where, f"{path}.content", f"must be a string, got {type(content).__name__}{parts}")
    for key in REASONING_KEYS:
        if m.get(key) is not None and not isinstance(m[key], str):
            _fail(where, f"{path}.{key}", f"must be a string, got {type(m[key]).__name__}")


def check_messages(messages: Any, where: str, field: str) -> None:
    if not isinstance(messages, list) or not messages:
        _fail(where, f"'{field}'", "must be a non-empty list of messages")
    for i, m in enumerate(messages):
        _check_message(m, where, f"'{field}'[{i}]")


def check_tools(tools: Any, where: str) -> None:
    if not isinstance(tools, list):
        _fail(where, "'tools'", f"must be a list of tool schemas, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        f = tool.get("function", tool) if isinstance(tool, dict) else None
        path = f"'tools'[{i}]" + (".function" if isinstance(tool, dict) and "function" in tool else "")
        if not isinstance(f, dict):
            _fail(where, path, "must be a JSON schema {'name': ..., 'parameters': ...}")
        if not isinstance(f.get("name"), str) or not f["name"]:
            _fail(where, f"{path}.name", "must be a non-empty string")


def validate_record(record: dict, where: str = "record") -> str:
    """Check a record field by field and return its format; a DataError names where and what:
    `data.jsonl:17: field 'messages'[2].role: must be one of system/user/assistant/tool, got 'bot'`."""
    fmt = detect_format(record, where)
    if fmt == "text":
        if not isinstance(record["text"], str) or not record["text"]:
            _fail(where, "'text'", "must be a non-empty string")
    elif fmt == "prompt_completion":
        for key in ("prompt", "completion"):
            if not isinstance(record[key], str):
                _fail(where, f"'{key}'", f"must be a string, got {type(record[key]).__name__}")
    else:
        fields = ("messages",) if fmt == "messages" else ("prompt", "completion")
        for key in fields:  # (no assistant message at all is allowed: no target, so dropped and counted)
            check_messages(record[key], where, key)
    if record.get("tools") is not None:
        if fmt in ("text", "prompt_completion"):
            _fail(where, "'tools'", "only conversational records (message lists) can have tools")
        check_tools(record["tools"], where)
    return fmt


def load_sft_data(source: str, convert: str = "", limit: int | None = None) -> tuple[list[dict], list[str]]:
    """Records of a file or hf: dataset (see alignlab.data.loaders), each converted (`convert`, a
    name in alignlab.data.converters.CONVERTERS) and validated. Returns (records, where): where[i]
    is "file:LINE" of records[i], for later messages. Any bad record is an error, nothing is skipped."""
    converter = get_converter(convert) if convert else None
    rows = read_rows(source)[:limit]
    records = []
    for where, record in rows:
        if converter is not None:
            try:
                record = converter(record)
            except DataError as e:
                raise DataError(f"{where}: {e} (converting with {convert})") from None
        validate_record(record, where)
        records.append(record)
    if not records:
        raise DataError(f"{source}: no records")
    return records, [r.where for r in rows]


def split_replies(record: dict) -> list[dict]:
    """A `messages` record -> one conversational prompt-completion record per assistant reply, the
    conversation before it as the prompt. With a template that rewrites earlier turns (Qwen3 and
    DeepSeek-R1 drop past <think> reasoning) each reply is then trained on exactly as the model
    writes it at inference, after the history as the template shows it."""
    messages, extra = record["messages"], {"tools": record["tools"]} if record.get("tools") is not None else {}
    if messages and messages[0].get("role") == "assistant":
        raise DataError("field 'messages'[0]: a reply that opens the conversation has no prompt to split on")
    return [{"prompt": messages[:i], "completion": [m], **extra}
            for i, m in enumerate(messages) if m.get("role") == "assistant"]


def is_conversational(record: dict) -> bool:
    return detect_format(record) in ("messages", "conversational_prompt_completion")


# ----------------------------------------------------------------------------------------------
# 2. Records -> token ids and a mask of targets -> (input_ids, labels)


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.add_bos_token and tokenizer.bos_token_id is not None else []


def encode_record(tokenizer, record: dict, chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of any SFT record, before truncation; mask[t] = 1 where token t is a target."""
    fmt = detect_format(record)
    if fmt == "text":
        ids = _bos(tokenizer) + tokenizer.encode(record["text"], add_special_tokens=False)
        ids = ids[1:] if ids[:2] == _bos(tokenizer) * 2 else ids  # the text began with bos itself
        ids += [] if ids[-1:] == [eos_id(tokenizer)] else [eos_id(tokenizer)]
        return ids, [1] * len(ids)
    if fmt == "prompt_completion":
        prompt = _bos(tokenizer) + tokenizer.encode(record["prompt"], add_special_tokens=False)
        completion = tokenizer.encode(record["completion"], add_special_tokens=False)
        completion += [] if completion[-1:] == [eos_id(tokenizer)] else [eos_id(tokenizer)]
        return prompt + completion, [0] * len(prompt) + [1] * len(completion)
    if fmt == "messages":
        return encode_chat(tokenizer, record["messages"], record.get("tools"), 0, chat_template)
    prompt = record["prompt"]
    return encode_chat(tokenizer, prompt + record["completion"], record.get("tools"), len(prompt), chat_template)


def truncate(ids: list[int], mask: list[int], max_len: int | None, mode: str = "keep_start"):
    """Cut to max_len tokens: the first ones (keep_start, TRL's default) or the last (keep_end)."""
    if mode not in TRUNCATION:
        raise ConfigError(f"truncation={mode!r}: expected one of {', '.join(TRUNCATION)}")
    if max_len is None or len(ids) <= max_len:
        return ids, mask
    return (ids[:max_len], mask[:max_len]) if mode == "keep_start" else (ids[-max_len:], mask[-max_len:])


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # labels[t] = input_ids[t + 1] where that token is trained, else IGNORE_INDEX
    length: int = 0  # tokens before truncation (0: not recorded)

    @property
    def truncated(self) -> bool:
        return self.length > len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(y != IGNORE_INDEX for y in self.labels)


def to_labels(ids: list[int], mask: list[int]) -> list[int]:
    """Next-token labels: position t predicts token t + 1 if that token is trained."""
    return [y if m else IGNORE_INDEX for y, m in zip(ids[1:], mask[1:], strict=True)] + [IGNORE_INDEX]


def tokenize_record(tokenizer, record: dict, max_len: int | None = None, truncation: str = "keep_start",
                    chat_template: str | None = None) -> Example:
    ids, mask = encode_record(tokenizer, record, chat_template)
    length = len(ids)
    ids, mask = truncate(ids, mask, max_len, truncation)
    return Example(ids, to_labels(ids, mask), length)


class Tokenized(NamedTuple):
    examples: list[Example]
    counts: dict  # {"kept", "truncated", "dropped"}: kept + dropped = records; truncated counts both
    dropped: list[str]  # where each dropped record came from


def tokenize_records(tokenizer, records: list[dict], max_len: int | None, truncation: str = "keep_start",
                     where: list[str] | None = None, chat_template: str | None = None) -> Tokenized:
    """Validate and tokenize every record. Longer than max_len: truncated (and counted); no target
    token left: dropped (counted, and where it was is returned). Errors name the record."""
    examples, dropped = [], []
    counts = {"kept": 0, "truncated": 0, "dropped": 0}
    for i, record in enumerate(records):
        at = where[i] if where is not None else f"record {i}"
        validate_record(record, at)
        try:
            example = tokenize_record(tokenizer, record, max_len, truncation, chat_template)
        except (DataError, ChatTemplateError) as e:
            raise type(e)(f"{at}: {e}") from None
        counts["truncated"] += example.truncated
        if example.n_targets == 0:
            counts["dropped"] += 1
            dropped.append(at)
            continue
        examples.append(example)
        counts["kept"] += 1
    return Tokenized(examples, counts, dropped)


def format_counts(records: list[dict]) -> dict[str, int]:
    return dict(Counter(detect_format(r) for r in records))


def prompt_ids(tokenizer, record: dict, chat_template: str | None = None) -> list[int] | None:
    """The tokens a model is given to generate the completion (or a conversation's first reply); None for text."""
    fmt = detect_format(record)
    if fmt == "text":
        return None
    if fmt == "prompt_completion":
        return _bos(tokenizer) + tokenizer.encode(record["prompt"], add_special_tokens=False)
    messages = record["prompt"] if fmt == "conversational_prompt_completion" else record["messages"]
    if fmt == "messages":
        messages = messages[:next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))]
    return tokenizer.apply_chat_template(messages, tools=record.get("tools"), add_generation_prompt=True,
                                         tokenize=True, chat_template=chat_template)


# ----------------------------------------------------------------------------------------------
# 3. inspect-data: one example, trained tokens highlighted

TRAINED, UNTRAINED, RESET = "\x1b[30;42m", "\x1b[2m", "\x1b[0m"  # black on green; dim


def _paint(text: str, trained: bool, color: bool) -> str:
    text = text.replace("\n", "\u21b5\n")  # a visible newline: it is a token too
    if not color:
        return f"[[{text}]]" if trained else text
    style = TRAINED if trained else UNTRAINED
    return "\n".join(f"{style}{line}{RESET}" if line else "" for line in text.split("\n"))


def inspect_example(tokenizer, record: dict, color: bool = True, max_len: int | None = None,
                    truncation: str = "keep_start", chat_template: str | None = None) -> str:
    """One example as the trainer sees it: trained tokens on green (or [[in brackets]] without
    color), the rest dim, then a summary line (tokens, trained tokens, truncated or not)."""
    fmt = validate_record(record)
    example = tokenize_record(tokenizer, record, max_len, truncation, chat_template)
    ids = example.input_ids
    target = [0] + [int(y != IGNORE_INDEX) for y in example.labels[:-1]]  # token t is trained iff label t-1 is set
    runs, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or target[t] != target[start]:
            runs.append(_paint(tokenizer.decode(ids[start:t]), bool(target[start]), color))
            start = t
    legend = _paint("trained", True, color) + " / " + _paint("not trained", False, color)
    cut = (f"yes ({example.length} tokens, cut to {len(ids)}, {truncation})" if example.truncated else "no")
    summary = f"{fmt}: {len(ids)} tokens, {example.n_targets} trained, truncated: {cut}"
    if example.n_targets == 0:
        summary += " -- dropped: no target token left"
    return f"{legend}\n{''.join(runs)}\n{summary}"


# ----------------------------------------------------------------------------------------------
# Padded batches (packed ones: alignlab.data.packing)

def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad to the longest example. Causal attention never looks right, so the padding changes nothing
    for the real tokens, and its labels are IGNORE_INDEX."""
    T = max(len(e.input_ids) for e in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        y[i, :len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": x, "labels": y}


class ConversationBatches(EpochSampler):
    """Shuffled epochs over the examples (alignlab.data.sampler), `batch_size` at a time, collated with right
    padding. Resumable: a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int):
        super().__init__(len(examples), batch_size, seed, what="conversations")
        self.examples, self.pad_id = examples, pad_id

    def next_batch(self) -> dict:
        return collate([self.examples[i] for i in self.next_indices()], self.pad_id)
