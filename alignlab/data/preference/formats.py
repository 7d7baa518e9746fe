"""Preference records: which format a record is, validation field by field, the explicit form every
other module sees (`normalize_record`), pairs -> unpaired KTO records (`unpair`), yes/no fields (KTO's
label, SafeDPO's safety labels), and Anthropic's HH-RLHF transcripts -> messages.

Errors are PreferenceErrors (DataErrors) that name where, the field and a short reason they are counted
under: `data.jsonl:7: field 'rejected': missing: a preference pair needs both 'chosen' and 'rejected' ...`.
"""

from __future__ import annotations

from typing import Any

from alignlab.data.errors import DataError
from alignlab.data.sft import check_messages, check_tools

FORMATS = ("preference", "implicit_preference", "unpaired")  # each also as "conversational_" + it

# ----------------------------------------------------------------------------------------------
# Formats, validation, normalisation


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
        check_messages(messages, where, field)
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


BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_bool(value: Any) -> bool | None:
    """A yes/no field as files hold it: a bool, the int 0 or 1, or a string true/false, 1/0 or yes/no in any
    case (a CSV cell is a string: "False" must not read as True). None if it is none of these."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return BOOLEANS.get(value.strip().lower())
    return None


def _as_label(value: Any, where: str) -> bool:
    """KTO's label: true (desirable) or false (undesirable), as parse_bool reads it."""
    label = parse_bool(value)
    if label is None:
        _fail(where, "'label'", f"must be true (desirable) or false (undesirable), got {value!r}", "bad label")
    return label


def unsafe_label(record: dict, side: str, where: str = "record") -> bool:
    """SafeDPO's safety label of a pair's `side` ("chosen" or "rejected"): the field "<side>_unsafe", true when
    that answer is unsafe; absent (or None, an empty CSV cell) is safe. Read strictly (parse_bool): anything
    else raises a PreferenceError naming where and the field."""
    key = f"{side}_unsafe"
    value = record.get(key)
    if value is None:
        return False
    flag = parse_bool(value)
    if flag is None:
        _fail(where, f"'{key}'", f"must be true (unsafe) or false (safe): true/false, 1/0 or yes/no, got {value!r}",
              "bad safety label")
    return flag


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
            check_tools(extra["tools"], where)
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
# HH-RLHF: "\n\nHuman: ...\n\nAssistant: ..." transcripts -> messages

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
