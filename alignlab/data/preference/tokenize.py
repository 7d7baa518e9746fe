"""Tokenising preference data: prompt ids, then each completion's ids and the mask of its trained tokens;
truncation as TRL's DPO; what is dropped, counted and located.

    pairs = tokenize_pairs(tok, data.records, max_len=512, max_prompt_len=256, where=data.where)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from alignlab.data.errors import DataError
from alignlab.data.preference.formats import is_unpaired, normalize_record
from alignlab.data.sft import to_labels
from alignlab.objectives.lm import IGNORE_INDEX
from alignlab.text import ChatTemplateError, encode_chat
from alignlab.text.masks import eos_id

TRUNCATION = ("keep_end", "keep_start")


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
