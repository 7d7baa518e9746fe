"""Preference data for DPO, reward models and KTO: formats, HH-RLHF, validation, tokenisation, pair builders.

The record formats are TRL's (extra fields such as "id", "kind", "margin" or "tools" are kept):

    preference, explicit prompt   {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
                                  {"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}
    preference, implicit prompt   {"chosen": "Q: sky? A: blue.", "rejected": "Q: sky? A: green."}
                                  {"chosen": [user, assistant], "rejected": [user, assistant]}
    unpaired (KTO)                {"prompt": "The sky is", "completion": " blue.", "label": true}
                                  {"prompt": [messages], "completion": [assistant], "label": false}

Standard records hold strings, conversational ones message lists ({"role", "content"}, as in SFT).
An implicit prompt is the longest prefix chosen and rejected share (characters or messages), cut
as TRL's `extract_prompt` cuts it: a space just before the first difference goes to the completions.
`normalize_record` makes every pair explicit, so the rest of the code sees one shape. `unpair`
turns a pair into two unpaired records (chosen: label true, rejected: label false), as TRL's
`unpair_preference_dataset` does for KTO.

    data = load_preference_data("hh.jsonl", convert="hh_rlhf")        # or "tinyworld:preferences"
    print(summarize(data))            # rows, kept, dropped by reason, and where (file:line: field ...)
    pairs = tokenize_pairs(tok, data.records, max_len=512, max_prompt_len=256, where=data.where)
    batch = collate_pairs(pairs.examples[:8], pad_id)       # 16 rows: 8 chosen, then 8 rejected

Sources: anything alignlab.data.loaders.read_rows reads (jsonl/json/csv/parquet/hf:), and
`tinyworld:preferences[:SPLIT][@SEED]` (TinyWorld's pairs, made on the fly). `convert` names steps
joined by "+": "hh_rlhf" (Anthropic's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts -> messages)
and "unpaired" (pairs -> KTO records), e.g. convert="hh_rlhf+unpaired".

A bad row is never a crash and never a silent skip: with on_error="drop" it is dropped, counted under
its reason ("missing field", "empty completion", "identical chosen and rejected", ...) and its
location kept with the message, `data.jsonl:7: field 'rejected': missing ...`; on_error="raise"
raises that message at the first bad row.

Tokens: the prompt is tokenized as the model is given it at inference (the chat template with its
generation prompt), each completion after it, and only the completion's tokens are trained,
including the end of turn (the template's <|end|>/<|im_end|>, else eos, appended as TRL appends
it): the masks come from alignlab.text.chat.encode_chat, as SFT's do. Truncation follows TRL's
DPO: a prompt longer than max_prompt_len keeps its end ("keep_end", the part next to the reply;
a leading bos stays), then each completion is cut to what max_len leaves. Pairs whose prompt fills
max_len, or whose two sides become the same tokens, are dropped and counted.

Pair builders (pure functions over strings; generating the samples is the caller's job):
`pairs_from_verifier` (a passing sample is chosen over a failing one), `pairs_from_scores` (a
judge's best over its worst, by a margin), `persona_pairs` (a reply written with a persona system
prompt over one written without it; the persona is not part of the training prompt).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from alignlab.data.errors import DataError
from alignlab.data.loaders import Row, read_rows
from alignlab.data.sft import IGNORE_INDEX, _check_messages, _check_tools, to_labels
from alignlab.text.chat import ChatTemplateError, encode_chat, eos_id

FORMATS = ("preference", "implicit_preference", "unpaired")  # each also as "conversational_" + it
TRUNCATION = ("keep_end", "keep_start")
ON_ERROR = ("drop", "raise")

# ----------------------------------------------------------------------------------------------
# 1. Formats, validation, normalisation


class PreferenceError(DataError):
    """A row that can't be used, with the short reason it is counted under ("missing field", ...)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _fail(where: str, path: str, message: str, reason: str):
    raise PreferenceError(f"{where}: field {path}: {message}", reason)


def _type(x: Any) -> str:
    return "a message list" if isinstance(x, list) else "a string" if isinstance(x, str) else type(x).__name__


def detect_preference_format(record: dict, where: str = "record") -> str:
    """Which format a record is: FORMATS, prefixed "conversational_" for message lists. None counts as absent."""
    if not isinstance(record, dict):
        raise PreferenceError(f"{where}: expected an object of fields (a record), got {type(record).__name__}",
                              "not a preference record")
    has = {k for k, v in record.items() if v is not None}
    if "chosen" in has or "rejected" in has:
        for key, other in (("chosen", "rejected"), ("rejected", "chosen")):
            if key not in has:
                _fail(where, f"'{key}'", f"missing: a preference pair needs both 'chosen' and 'rejected' "
                      f"(this record has only {other!r})", "missing field")
        chosen = record["chosen"]
        conversational = isinstance(chosen, list)
        # TRL's maybe_extract_prompt: a string prompt next to full conversations is ignored, their shared turns
        # are the prompt. (A string prompt before [assistant reply] is a type error, reported by validation.)
        opening = chosen[0] if conversational and chosen and isinstance(chosen[0], dict) else {}
        full = opening.get("role", "assistant") != "assistant"
        implicit = "prompt" not in has or (full and isinstance(record["prompt"], str))
        return ("conversational_" if conversational else "") + ("implicit_" if implicit else "") + "preference"
    if "completion" in has or "label" in has:
        for key in ("prompt", "completion", "label"):
            if key not in has:
                _fail(where, f"'{key}'", "missing: unpaired data (KTO) needs 'prompt', 'completion' and 'label' "
                      "(true: desirable, false: undesirable)", "missing field")
        return ("conversational_" if isinstance(record["completion"], list) else "") + "unpaired"
    hint = (" -- this is SFT data" if has & {"text", "messages"} else
            " -- 'prompt' alone is prompt-only data (GRPO)" if "prompt" in has else "")
    fields = ", ".join(sorted(has)) or "none"
    raise PreferenceError(f"{where}: no preference fields: expected 'chosen' + 'rejected' (and 'prompt', or a prompt "
                          f"they share), or 'prompt' + 'completion' + 'label' (fields: {fields}){hint}",
                          "not a preference record")


def extract_prompt(chosen: str | list, rejected: str | list) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected): the longest shared prefix becomes the prompt, as in TRL's
    `extract_prompt` (a space just before the first difference stays with the completions). Where one
    side is a prefix of the other, TRL puts the last shared item back into both completions; here that
    side's completion is left empty, and validation reports it."""
    n, limit = 0, min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if isinstance(chosen, str) and 0 < n < limit and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _check_messages_reason(messages: Any, where: str, field: str) -> None:
    try:
        _check_messages(messages, where, field)
    except PreferenceError:
        raise
    except DataError as e:
        raise PreferenceError(str(e), "bad message") from None


def _check_completion(value: Any, where: str, key: str, conversational: bool) -> None:
    """A completion is a non-empty string, or messages that start with the assistant's reply and say something."""
    if not conversational:
        if not value.strip():
            _fail(where, f"'{key}'", "empty completion" + (" (nothing after the prompt)" if value == "" else ""),
                  "empty completion")
        return
    if not value:
        _fail(where, f"'{key}'", "empty completion: no message after the prompt", "empty completion")
    _check_messages_reason(value, where, key)
    if value[0]["role"] != "assistant":
        _fail(where, f"'{key}'[0].role", f"a completion starts with the assistant's reply, got {value[0]['role']!r} "
              "(do chosen and rejected differ before the reply? they must share the conversation before it)",
              "bad message")
    for i, m in enumerate(value):
        if m["role"] == "assistant" and not (m.get("content") or "").strip() and not m.get("tool_calls"):
            _fail(where, f"'{key}'[{i}].content", "empty reply", "empty completion")


def _check_prompt(prompt: Any, where: str, conversational: bool) -> None:
    if conversational:
        if not isinstance(prompt, list):
            _fail(where, "'prompt'", f"must be a message list like the completions, got {_type(prompt)}", "wrong type")
        if prompt:  # an empty prompt is allowed (a reply that opens the conversation)
            _check_messages_reason(prompt, where, "prompt")
    elif not isinstance(prompt, str):
        _fail(where, "'prompt'", f"must be a string like the completions, got {_type(prompt)}", "wrong type")


def _as_label(value: Any, where: str) -> bool:
    """KTO's label: a bool (CSV cells hold strings: "true"/"false"/"1"/"0" are read as such)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    _fail(where, "'label'", f"must be true (desirable) or false (undesirable), got {value!r}", "bad label")


def normalize_record(record: dict, where: str = "record") -> dict:
    """Validate a record and return it in explicit form: {"prompt", "chosen", "rejected", ...} or
    {"prompt", "completion", "label": bool, ...}. Raises PreferenceError naming where, field and reason:
    `data.jsonl:7: field 'rejected': missing: a preference pair needs both 'chosen' and 'rejected' ...`."""
    fmt = detect_preference_format(record, where)
    conversational = fmt.startswith("conversational_")
    extra = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected", "completion", "label")}
    if extra.get("tools") is not None:
        if not conversational:
            _fail(where, "'tools'", "only conversational records (message lists) can have tools", "wrong type")
        try:
            _check_tools(extra["tools"], where)
        except DataError as e:
            raise PreferenceError(str(e), "wrong type") from None
    keys = ("completion",) if fmt.endswith("unpaired") else ("chosen", "rejected")
    first = record[keys[0]]
    if not isinstance(first, (str, list)):
        _fail(where, f"'{keys[0]}'", f"must be a string or a message list, got {_type(first)}", "wrong type")
    for key in keys:
        if _type(record[key]) != _type(first):
            _fail(where, f"'{key}'", f"must be {_type(first)} like '{keys[0]}', got {_type(record[key])}", "wrong type")
        if conversational:  # (messages are checked before they are compared)
            _check_messages_reason(record[key], where, key)
    if fmt.endswith("unpaired"):
        _check_prompt(record["prompt"], where, conversational)
        _check_completion(record["completion"], where, "completion", conversational)
        return {"prompt": record["prompt"], "completion": record["completion"],
                "label": _as_label(record["label"], where), **extra}
    chosen, rejected = record["chosen"], record["rejected"]
    if chosen == rejected:
        _fail(where, "'rejected'", "identical to 'chosen': the pair teaches nothing", "identical chosen and rejected")
    if "implicit" in fmt:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
    else:
        prompt = record["prompt"]
        _check_prompt(prompt, where, conversational)
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        _check_completion(value, where, key, conversational)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def is_unpaired(record: dict) -> bool:
    return "label" in record and "completion" in record


def unpair(record: dict) -> list[dict]:
    """An explicit pair -> [chosen with label True, rejected with label False], other fields copied to both."""
    extra = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")}
    return [{"prompt": record["prompt"], "completion": record[key], "label": key == "chosen", **extra}
            for key in ("chosen", "rejected")]


# ----------------------------------------------------------------------------------------------
# 2. HH-RLHF: "\n\nHuman: ...\n\nAssistant: ..." transcripts -> messages

HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: Any, where: str = "record", field: str = "transcript") -> list[dict]:
    """Anthropic's transcript format -> [{"role": "user"|"assistant", "content"}, ...], contents stripped.

    A turn starts at "\\n\\nHuman:" or "\\n\\nAssistant:" (the first may lack the blank line). Text
    that merely contains "Human:" mid-line (a few HH replies do) stays content. Two turns of the same
    role in a row are kept as they are. An empty last reply ("...\\n\\nAssistant: ") gives an empty
    message, which validation reports as an empty completion."""
    if not isinstance(text, str):
        _fail(where, f"'{field}'", f"must be a transcript string, got {_type(text)}",
              "missing field" if text is None else "wrong type")
    body = "\n\n" + text if text.startswith(("Human:", "Assistant:")) else text
    messages, at = [], 0
    for pos in _hh_turns(body):
        if not messages and body[at:pos].strip():
            _fail(where, f"'{field}'", f"text before the first turn: {body[:40]!r} (expected "
                  "'\\n\\nHuman: ...\\n\\nAssistant: ...')", "not an HH-RLHF transcript")
        if messages:
            messages[-1]["content"] = body[at:pos].strip()
        speaker = body[pos + 2:body.index(":", pos)]
        messages.append({"role": HH_ROLES[speaker], "content": ""})
        at = body.index(":", pos) + 1
    if not messages:
        _fail(where, f"'{field}'", "no '\\n\\nHuman:' or '\\n\\nAssistant:' turn: not an HH-RLHF transcript",
              "not an HH-RLHF transcript")
    messages[-1]["content"] = body[at:].strip()
    return messages


def _hh_turns(body: str) -> list[int]:
    """Where each "\\n\\nHuman:" / "\\n\\nAssistant:" marker starts."""
    starts = []
    for speaker in HH_ROLES:
        marker, pos = f"\n\n{speaker}:", -1
        while (pos := body.find(marker, pos + 1)) != -1:
            starts.append(pos)
    return sorted(starts)


def hh_rlhf_to_preference(record: dict, where: str = "record") -> dict:
    """{"chosen": transcript, "rejected": transcript} -> {"prompt": [messages], "chosen": [...], "rejected": [...]}:
    both transcripts parsed into messages, the turns they share the prompt, the rest each completion."""
    if not isinstance(record, dict):
        raise PreferenceError(f"{where}: expected an object of fields (a record), got {type(record).__name__}",
                              "not a preference record")
    chosen = parse_hh_transcript(record.get("chosen"), where, "chosen")
    rejected = parse_hh_transcript(record.get("rejected"), where, "rejected")
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
    rest = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **rest}


CONVERTERS: dict[str, Callable[[dict, str], dict]] = {"hh_rlhf": hh_rlhf_to_preference}
STEPS = (*CONVERTERS, "unpaired")


# ----------------------------------------------------------------------------------------------
# 3. Loading: rows -> converted, validated records, with counts of what was dropped and why


class PreferenceData(NamedTuple):
    records: list[dict]  # explicit pairs, or unpaired records (after convert="...unpaired" or as read)
    where: list[str]  # where[i]: where records[i] came from ("hh.jsonl:17")
    counts: dict  # {"rows", "kept", "records", "dropped": {reason: n}, "formats": {format as read: n}}
    dropped: list[tuple[str, str]]  # (where, message) of every dropped row, in order


def read_preference_rows(source: str) -> list[Row]:
    """read_rows(source), plus `tinyworld:preferences[:SPLIT][@SEED]`: TinyWorld's pairs (SPLIT train or
    test, SEED 0 by default)."""
    source = str(source)
    if source.startswith("tinyworld:preferences"):
        from alignlab.data.world import TinyWorld

        spec, _, seed = source.removeprefix("tinyworld:").partition("@")
        _, _, split = spec.partition(":")
        if spec.partition(":")[0] != "preferences" or split not in ("", "train", "test") or not (seed or "0").isdigit():
            raise DataError(f"{source}: expected tinyworld:preferences[:SPLIT][@SEED] with SPLIT train or test, "
                            "SEED an integer")
        pairs = TinyWorld(seed=int(seed or 0)).preference_pairs(split or "train")
        return [Row(f"{source}: record {i}", r) for i, r in enumerate(pairs)]
    return read_rows(source)


def parse_csv_cells(record: dict, where: str) -> dict:
    """A CSV's chosen/rejected cells that hold a JSON message list (starting "[{") -> the list.
    (alignlab.data.loaders parses such prompt/completion cells itself, not these.)"""
    out = dict(record)
    for key in ("chosen", "rejected"):
        cell = out.get(key)
        if isinstance(cell, str) and cell.lstrip().startswith("[{"):
            try:
                out[key] = json.loads(cell)
            except json.JSONDecodeError as e:
                _fail(where, f"'{key}'", f"not valid JSON ({e.msg}, column {e.colno})", "wrong type")
    return out


def _steps(convert: str) -> list[str]:
    steps = [s.strip() for s in convert.split("+") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or "unpaired" in steps[:-1]:
        raise ValueError(f"convert={convert!r}: expected steps from {', '.join(STEPS)} joined by '+', "
                         "'unpaired' last (e.g. hh_rlhf+unpaired)")
    return steps


def load_preference_data(source: str, convert: str = "", on_error: str = "drop",
                         limit: int | None = None) -> PreferenceData:
    """Rows of `source`, each converted (`convert`: steps of STEPS joined by "+") and validated into an
    explicit record. A bad row is dropped and counted under its reason (on_error="drop") or raised
    (on_error="raise"). No usable row at all is an error either way."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
    steps = _steps(convert)
    rows = read_preference_rows(source)[:limit]
    csv = str(source).removesuffix(".gz").endswith(".csv")
    records, where, dropped = [], [], []
    reasons, formats = Counter(), Counter()
    for at, record in rows:
        try:
            record = parse_csv_cells(record, at) if csv else record
            for step in steps:
                record = CONVERTERS[step](record, at) if step in CONVERTERS else record
            fmt = detect_preference_format(record, at)
            record = normalize_record(record, at)
        except DataError as e:
            if on_error == "raise":
                raise
            reasons[getattr(e, "reason", "invalid record")] += 1
            dropped.append((at, str(e)))
            continue
        formats[fmt] += 1
        out = unpair(record) if "unpaired" in steps and not is_unpaired(record) else [record]
        records += out
        where += [at] * len(out)
    counts = {"rows": len(rows), "kept": len(rows) - len(dropped), "records": len(records),
              "dropped": dict(reasons.most_common()), "formats": dict(formats)}
    data = PreferenceData(records, where, counts, dropped)
    if not records:
        raise DataError(f"{source}: no usable preference records\n{summarize(data)}")
    return data


def summarize(data: PreferenceData, source: str = "", max_shown: int = 5) -> str:
    """A few lines for a recipe to print: rows read, kept, dropped by reason, and the first drops."""
    c = data.counts
    head = f"{source + ': ' if source else ''}{c['rows']} rows, {c['kept']} kept"
    if c["records"] != c["kept"]:
        head += f" ({c['records']} records)"
    formats = ", ".join(f"{n} {fmt}" for fmt, n in c["formats"].items())
    lines = [head + (f" [{formats}]" if formats else "")]
    if c["dropped"]:
        lines.append(f"dropped {len(data.dropped)}: " + ", ".join(f"{why} {n}" for why, n in c["dropped"].items()))
        lines += [f"  {message}" for _, message in data.dropped[:max_shown]]
        if len(data.dropped) > max_shown:
            lines.append(f"  ... and {len(data.dropped) - max_shown} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 4. Tokenisation: prompt ids + completion ids and masks; [chosen; rejected] batches


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.add_bos_token and tokenizer.bos_token_id is not None else []


def encode_completion(tokenizer, prompt: str | list, completion: str | list, tools: list | None = None,
                      chat_template: str | None = None) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, completion_ids, completion_mask): mask 1 on trained tokens (replies and their end of turn).

    Standard: bos? + prompt, then the completion + eos (unless it ends with eos), all of it trained.
    Conversational: encode_chat(prompt + completion, train_from=len(prompt)): the prompt's tokens are the
    template's rendering with the generation prompt (what the model is given), the completion's start
    where the reply does; the template's untrained tail after the last reply is left out."""
    if isinstance(prompt, str):
        p = _bos(tokenizer) + tokenizer.encode(prompt, add_special_tokens=False)
        c = tokenizer.encode(completion, add_special_tokens=False)
        c += [] if c[-1:] == [eos_id(tokenizer)] else [eos_id(tokenizer)]
        return p, c, [1] * len(c)
    ids, mask = encode_chat(tokenizer, prompt + completion, tools, len(prompt), chat_template)
    start = mask.index(1)  # (a completion starts with a reply, and a reply always has a trained token)
    end = len(mask) - mask[::-1].index(1)
    return ids[:start], ids[start:end], mask[start:end]


def _sequence(prompt_ids: list[int], ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """prompt + completion and its next-token labels (as SFT's: labels[t] is the target of position t)."""
    full = prompt_ids + ids
    return full, to_labels(full, [0] * len(prompt_ids) + mask)


@dataclass
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the chosen completion's tokens, after the prompt
    chosen_mask: list[int]  # 1 where a chosen token is trained
    rejected_ids: list[int]
    rejected_mask: list[int]
    length: int = 0  # prompt + the longer completion, in tokens, before truncation
    truncated: bool = False  # the prompt or a completion was cut
    prompt_truncated: bool = False

    def sequence(self, side: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of prompt + chosen or prompt + rejected; labels IGNORE_INDEX on the prompt."""
        return _sequence(self.prompt_ids, getattr(self, f"{side}_ids"), getattr(self, f"{side}_mask"))

    @property
    def chosen_labels(self) -> list[int]:
        return self.sequence("chosen")[1]

    @property
    def rejected_labels(self) -> list[int]:
        return self.sequence("rejected")[1]


@dataclass
class UnpairedExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    label: bool  # True: desirable
    length: int = 0
    truncated: bool = False
    prompt_truncated: bool = False

    def sequence(self) -> tuple[list[int], list[int]]:
        return _sequence(self.prompt_ids, self.completion_ids, self.completion_mask)


class PairTokens(NamedTuple):
    examples: list  # PairExample (tokenize_pairs) or UnpairedExample (tokenize_unpaired)
    counts: dict  # {"kept", "truncated", "prompt_truncated", "dropped": {reason: n}} (+ "desirable", "undesirable")
    dropped: list[tuple[str, str]]  # (where, message) of every dropped record


class _Drop(Exception):
    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def truncate_prompt(ids: list[int], max_prompt_len: int | None, mode: str = "keep_end",
                    bos: int | None = None) -> list[int]:
    """The last max_prompt_len tokens (keep_end: TRL's default for prompts, the part next to the reply;
    a leading bos is kept in front) or the first ones (keep_start)."""
    if mode not in TRUNCATION:
        raise ValueError(f"truncation={mode!r}: expected one of {', '.join(TRUNCATION)}")
    if max_prompt_len is None or len(ids) <= max_prompt_len:
        return ids
    if mode == "keep_start":
        return ids[:max_prompt_len]
    head = ids[:1] if bos is not None and ids[:1] == [bos] and max_prompt_len > 1 else []
    return head + ids[len(ids) - (max_prompt_len - len(head)):]


def _cut(prompt: list[int], sides: list[tuple[list[int], list[int]]], max_len: int | None,
         max_prompt_len: int | None, truncation: str, bos: int | None):
    """Truncate a prompt, then each (completion ids, mask) to the room max_len leaves -> (prompt, sides)."""
    prompt = truncate_prompt(prompt, max_prompt_len, truncation, bos)
    if max_len is not None and len(prompt) >= max_len:
        raise _Drop(f"prompt fills max_len: {len(prompt)} prompt tokens, max_len {max_len} (a max_prompt_len below "
                    "max_len cuts long prompts)", "prompt fills max_len")
    room = None if max_len is None else max_len - len(prompt)
    sides = [(ids[:room], mask[:room]) for ids, mask in sides]  # a cut reply keeps its targets; no eos is invented
    for ids, mask in sides:
        if all(y == IGNORE_INDEX for y in _sequence(prompt, ids, mask)[1]):
            raise _Drop("no target token left (with an empty prompt the first completion token has no position "
                        "to be predicted from)", "no target token")
    return prompt, sides


def _tokenize(records: list[dict], where: list[str] | None, make: Callable[[dict], Any]) -> PairTokens:
    examples, dropped, reasons = [], [], Counter()
    for i, record in enumerate(records):
        at = where[i] if where is not None else f"record {i}"
        record = normalize_record(record, at)
        try:
            examples.append(make(record))
        except _Drop as e:
            reasons[e.reason] += 1
            dropped.append((at, f"{at}: {e}"))
        except (DataError, ChatTemplateError) as e:
            raise type(e)(f"{at}: {e}") from None
    counts = {"kept": len(examples), "truncated": sum(e.truncated for e in examples),
              "prompt_truncated": sum(e.prompt_truncated for e in examples), "dropped": dict(reasons)}
    return PairTokens(examples, counts, dropped)


def tokenize_pairs(tokenizer, records: list[dict], max_len: int | None, max_prompt_len: int | None = None,
                   truncation: str = "keep_end", where: list[str] | None = None,
                   chat_template: str | None = None) -> PairTokens:
    """Every pair -> a PairExample (prompt ids; chosen and rejected ids with their masks). `truncation`
    is how a prompt longer than max_prompt_len is cut (keep_end, as TRL); completions are then cut to
    what max_len leaves. Dropped, counted and located: a prompt that fills max_len, no target token
    left, or chosen and rejected that end up the same tokens (the pair would teach nothing)."""

    def make(r: dict) -> PairExample:
        if is_unpaired(r):
            raise DataError("an unpaired record (prompt/completion/label): tokenize it with tokenize_unpaired")
        tools = r.get("tools")
        prompt, chosen, mask_c = encode_completion(tokenizer, r["prompt"], r["chosen"], tools, chat_template)
        prompt_r, rejected, mask_r = encode_completion(tokenizer, r["prompt"], r["rejected"], tools, chat_template)
        if prompt_r != prompt:  # (both are the same rendering of the same prompt)
            raise ChatTemplateError("the prompt tokenizes differently before chosen and before rejected")
        cut, [(c, mc), (j, mj)] = _cut(prompt, [(chosen, mask_c), (rejected, mask_r)], max_len, max_prompt_len,
                                       truncation, tokenizer.bos_token_id)
        truncated = len(cut) < len(prompt) or len(c) < len(chosen) or len(j) < len(rejected)
        if c == j:
            raise _Drop("chosen and rejected are the same tokens" + (" after truncation" if truncated else ""),
                        "identical tokens")
        return PairExample(cut, c, mc, j, mj, len(prompt) + max(len(chosen), len(rejected)), truncated,
                           len(cut) < len(prompt))

    return _tokenize(records, where, make)


def tokenize_unpaired(tokenizer, records: list[dict], max_len: int | None, max_prompt_len: int | None = None,
                      truncation: str = "keep_end", where: list[str] | None = None,
                      chat_template: str | None = None) -> PairTokens:
    """Unpaired records (KTO) -> UnpairedExamples, truncated and counted as tokenize_pairs does; the
    counts also say how many are desirable and undesirable (KTO weighs the two against each other)."""

    def make(r: dict) -> UnpairedExample:
        if not is_unpaired(r):
            raise DataError("a preference pair: unpair it first (convert='unpaired' or unpair(record))")
        prompt, ids, mask = encode_completion(tokenizer, r["prompt"], r["completion"], r.get("tools"), chat_template)
        cut, [(c, m)] = _cut(prompt, [(ids, mask)], max_len, max_prompt_len, truncation, tokenizer.bos_token_id)
        return UnpairedExample(cut, c, m, r["label"], len(prompt) + len(ids),
                               len(cut) < len(prompt) or len(c) < len(ids), len(cut) < len(prompt))

    out = _tokenize(records, where, make)
    out.counts["desirable"] = sum(e.label for e in out.examples)
    out.counts["undesirable"] = len(out.examples) - out.counts["desirable"]
    return out


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-pad (ids, labels) rows: labels IGNORE_INDEX and attention 0 on padding; lengths = real tokens."""
    T = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(labels)] = torch.tensor(labels)
        attention[i, :len(ids)] = 1
    return {"input_ids": x, "labels": y, "attention_mask": attention, "lengths": attention.sum(1)}


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict:
    """One batch of 2B rows, as TRL concatenates them: rows 0..B-1 prompt + chosen, rows B..2B-1 prompt +
    rejected, right-padded. labels[:, t] is the target of position t (IGNORE_INDEX on the prompt and the
    padding), so a side's log-probability is a sum over its labels. lengths[i] counts row i's real tokens
    (a reward model reads its score at position lengths - 1)."""
    return _pad([e.sequence("chosen") for e in examples] + [e.sequence("rejected") for e in examples], pad_id)


def collate_unpaired(examples: list[UnpairedExample], pad_id: int) -> dict:
    """B rows of prompt + completion as collate_pairs pads them, plus "label" (bool [B], True: desirable)."""
    batch = _pad([e.sequence() for e in examples], pad_id)
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return batch


# ----------------------------------------------------------------------------------------------
# 5. Pair builders: samples and their scores -> pairs (the caller generates and scores)


def _completion(prompt: Any, text: str) -> str | list[dict]:
    """A sample as the prompt's format wants it: a string, or [assistant message] after a message list."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def _distinct(texts: Sequence[str], scores: Sequence[float], stats: Counter) -> list[tuple[str, float]]:
    """(text, score) of the non-empty samples, each text once (its first score)."""
    seen, out = set(), []
    for text, score in zip(texts, scores, strict=True):
        if not isinstance(text, str) or not text.strip():
            stats["empty sample"] += 1
        elif text in seen:
            stats["duplicate sample"] += 1
        else:
            seen.add(text)
            out.append((text, float(score)))
    return out


def _pair(prompt: Any, chosen: tuple[str, float], rejected: tuple[str, float], **extra) -> dict:
    return {"prompt": prompt, "chosen": _completion(prompt, chosen[0]), "rejected": _completion(prompt, rejected[0]),
            "chosen_score": chosen[1], "rejected_score": rejected[1], **extra}


def pairs_from_scores(prompts: Sequence, samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                      margin: float = 0.0, pairs_per_prompt: int = 1, stats: Counter | None = None) -> list[dict]:
    """A judge's scores -> pairs: per prompt the best-scored sample is chosen, the worst rejected (then
    the 2nd best and 2nd worst, ... up to pairs_per_prompt), kept when the scores differ by more than 0
    and by at least `margin`. Ties keep the earlier sample. Empty and repeated samples are skipped.
    Pairs are {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"}, conversational when the
    prompt is a message list. `stats` (a Counter), if given, counts prompts, pairs and why none was made."""
    stats = Counter() if stats is None else stats
    if not len(prompts) == len(samples) == len(scores):
        raise ValueError(f"{len(prompts)} prompts, {len(samples)} sample lists, {len(scores)} score lists")
    pairs = []
    for i, (prompt, texts, values) in enumerate(zip(prompts, samples, scores)):
        if len(texts) != len(values):
            raise ValueError(f"prompt {i}: {len(texts)} samples but {len(values)} scores")
        stats["prompts"] += 1
        ranked = sorted(_distinct(texts, values, stats), key=lambda s: -s[1])  # (stable: ties keep their order)
        made = 0
        for k in range(min(pairs_per_prompt, len(ranked) // 2)):
            best, worst = ranked[k], ranked[-1 - k]
            if best[1] - worst[1] <= 0 or best[1] - worst[1] < margin:
                break
            pairs.append(_pair(prompt, best, worst))
            made += 1
        stats["pairs"] += made
        if not made:
            stats["no pair: fewer than 2 distinct samples" if len(ranked) < 2 else "no pair: scores within margin"] += 1
    return pairs


def pairs_from_verifier(prompts: Sequence, samples_per_prompt: Sequence[Sequence[str]],
                        verify: Callable[[str, Any], bool | float], references: Sequence | None = None,
                        min_margin: float = 0.0, pass_score: float = 1.0, pairs_per_prompt: int = 1,
                        stats: Counter | None = None) -> list[dict]:
    """A verifier -> pairs of a passing sample (chosen) and a failing one (rejected).

    verify(sample, reference) -> bool or a score, with reference = references[i] (e.g. the answer:
    alignlab.eval.tinyworld.verify(output, answer) fits) or, without references, the prompt itself. A
    sample passes when its score >= pass_score (True counts 1). Per prompt, the best passing sample is
    paired with the worst failing one (then the next ones, up to pairs_per_prompt), kept when their
    scores differ by at least min_margin. Prompts whose samples all pass or all fail give no pair
    (counted in `stats`: "no pair: all passed" / "no pair: all failed")."""
    stats = Counter() if stats is None else stats
    if len(prompts) != len(samples_per_prompt) or (references is not None and len(references) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(samples_per_prompt)} sample lists"
                         + ("" if references is None else f", {len(references)} references"))
    pairs = []
    for i, (prompt, texts) in enumerate(zip(prompts, samples_per_prompt)):
        stats["prompts"] += 1
        ref = prompt if references is None else references[i]
        scored = _distinct(texts, [float(verify(t, ref)) if isinstance(t, str) and t.strip() else 0.0 for t in texts],
                           stats)
        passed = sorted((s for s in scored if s[1] >= pass_score), key=lambda s: -s[1])
        failed = sorted((s for s in scored if s[1] < pass_score), key=lambda s: s[1])
        made = 0
        for best, worst in list(zip(passed, failed))[:pairs_per_prompt]:
            if best[1] - worst[1] < min_margin:
                break
            pairs.append(_pair(prompt, best, worst))
            made += 1
        stats["pairs"] += made
        if not made:
            stats["no pair: all failed" if not passed else "no pair: all passed" if not failed
                  else "no pair: scores within margin"] += 1
    return pairs


def persona_pairs(prompts: Sequence, chosen_with_persona: Sequence[str | None], rejected_without: Sequence[str | None],
                  persona: str | None = None, stats: Counter | None = None) -> list[dict]:
    """Replies generated with a persona system prompt (chosen) over replies to the same prompt generated
    without it (rejected): the model learns to act the persona without being told. The training prompt
    is the prompt without the persona: give `persona` and a leading system message holding exactly it is
    removed from a message-list prompt. A missing (None) or empty reply, or two equal replies, give no
    pair (counted in `stats`)."""
    stats = Counter() if stats is None else stats
    if not len(prompts) == len(chosen_with_persona) == len(rejected_without):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen_with_persona)} chosen, {len(rejected_without)} rejected")
    pairs = []
    for prompt, chosen, rejected in zip(prompts, chosen_with_persona, rejected_without):
        stats["prompts"] += 1
        if persona is not None and isinstance(prompt, list) and prompt[:1] == [{"role": "system", "content": persona}]:
            prompt = prompt[1:]
        if not all(isinstance(t, str) and t.strip() for t in (chosen, rejected)):
            stats["no pair: empty reply"] += 1
        elif chosen.strip() == rejected.strip():
            stats["no pair: identical replies"] += 1
        else:
            pairs.append({"prompt": prompt, "chosen": _completion(prompt, chosen),
                          "rejected": _completion(prompt, rejected)})
            stats["pairs"] += 1
    return pairs
