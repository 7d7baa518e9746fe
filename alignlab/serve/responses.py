"""OpenAI's response bodies: choices, log-probs in the two endpoints' shapes, usage, and streamed text.

/v1/completions log-probs (with echo the prompt's tokens come first, entry 0 None: it has no prefix):
    {"tokens": ["The", " cat"], "token_logprobs": [None, -2.3], "top_logprobs": [None, {" cat": -2.3}],
     "text_offset": [0, 3]}
/v1/chat/completions log-probs:
    {"content": [{"token": " cat", "logprob": -2.3, "bytes": [32, 99, 97, 116],
                  "top_logprobs": [{"token": " cat", "logprob": -2.3, "bytes": [...]}]}]}
A token's string is its own decoding, so a piece of a multi-byte character shows as U+FFFD.
"""

from __future__ import annotations

import json
import time
import uuid

from alignlab.serve.tools import OPEN, held_back


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class Pieces:
    """Token ids -> their strings, cached (each token decoded alone); with as_ids, vLLM's "token_id:<id>" instead
    (return_tokens_as_token_ids: a client that must know the exact sampled ids, such as an RL trainer, reads them)."""

    def __init__(self, tokenizer, as_ids: bool = False):
        self.tokenizer, self.cache, self.as_ids = tokenizer, {}, as_ids

    def __call__(self, i: int) -> str:
        if self.as_ids:
            return f"token_id:{i}"
        s = self.cache.get(i)
        if s is None:
            s = self.cache[i] = self.tokenizer.decode([i])
        return s


def completion_logprobs(pieces: Pieces, ids: list[int], lps: list[float | None],
                        tops: list[dict[int, float] | None] | None, offset: int = 0) -> dict:
    """The legacy completions shape for tokens `ids`; text_offset counts from `offset`."""
    tokens = [pieces(i) for i in ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    top_out: list[dict[str, float] | None] = []
    for k in range(len(ids)):
        top = tops[k] if tops is not None and k < len(tops) else None
        if top is None:
            top_out.append(None if lps[k] is None else {})
            continue
        d: dict[str, float] = {}
        for tid, lp in top.items():
            s = pieces(tid)
            d[s] = max(d.get(s, lp), lp)
        top_out.append(d)
    return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_out, "text_offset": offsets}


def chat_logprobs(pieces: Pieces, ids: list[int], lps: list[float], tops: list[dict[int, float]] | None) -> dict:
    def entry(i: int, lp: float) -> dict:
        s = pieces(i)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    content = []
    for k, (i, lp) in enumerate(zip(ids, lps)):
        e = entry(i, lp)
        top = tops[k] if tops is not None and k < len(tops) else None
        e["top_logprobs"] = [entry(t, v) for t, v in (top or {}).items()]
        content.append(e)
    return {"content": content}


class TextStream:
    """A completion's text as it grows: each `feed` returns the new text that is safe to send.

    Held back: a trailing incomplete UTF-8 character, a tail that could begin a stop string, and (with tools)
    everything from "<tool_call>" on. `finish` returns what is left of the final text (the engine's, which
    has stop strings cut off), so the pieces concatenate to the completion's text.
    """

    def __init__(self, tokenizer, stops: list[str], tools: bool = False):
        self.tokenizer, self.stops, self.tools = tokenizer, stops, tools
        self.ids: list[int] = []
        self.sent = ""
        self.in_call = False  # "<tool_call>" has appeared: the rest is sent as tool_calls at the end

    def feed(self, ids: list[int]) -> str:
        self.ids += ids
        if self.in_call:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:  # the tokens that complete a stop string may carry text past it
            text = text[:min(hits)]
        hold = max((n for s in self.stops for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])),
                   default=0)
        text = text[:len(text) - hold]
        if self.tools:
            at = text.find(OPEN)
            if at >= 0:
                self.in_call, text = True, text[:at]
            else:
                text = text[:len(text) - held_back(text)]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent):], text
            return piece
        return ""

    def finish(self, final: str) -> str:
        """The rest of `final` (the whole text) after what was sent."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""
