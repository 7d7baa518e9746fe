"""Streamed responses: the engine's outputs as server-sent events, one chunk per piece of text.

    data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", ...}}]}
    data: {... "delta": {"content": "Hel"} ...}
    data: {... "delta": {}, "finish_reason": "stop"}
    data: {... "choices": [], "usage": {...}}          (with stream_options.include_usage)
    data: [DONE]

Text goes out as soon as it is safe (responses.TextStream holds back what may still change). Tool calls go out
at the end, one delta per call with its id, name and whole arguments, then finish_reason "tool_calls". An error
after the first chunk is sent as a `data: {"error": {...}}` event, which the openai client raises.
"""

from __future__ import annotations

import contextlib

from alignlab.errors import UserError
from alignlab.serve import responses as R
from alignlab.serve.protocol import APIError, error_body
from alignlab.serve.tools import parse_tool_calls


def stream_error(e: Exception) -> str:
    status = e.status if isinstance(e, APIError) else 400 if isinstance(e, (UserError, ValueError)) else 500
    return R.sse(error_body(status, str(e)))


async def chat_stream(state, meta, ids, params, adapter, forced, parse, logprobs, top, include_usage):
    tok, pieces = state.tokenizer, R.Pieces(state.tokenizer)
    n = len(params)
    streams = [R.TextStream(tok, p.stop, tools=parse) for p in params]
    for s in streams:
        s.in_call = bool(forced)  # the reply starts inside a tool call: nothing to stream as content

    def chunk(j, delta, finish=None, lp=None):
        return R.sse({**meta, "object": "chat.completion.chunk",
                      "choices": [{"index": j, "delta": delta, "logprobs": lp, "finish_reason": finish}]})

    for j in range(n):
        yield chunk(j, {"role": "assistant", "content": ""})
    produced = 0
    try:
        async with contextlib.aclosing(state.backend.stream([ids] * n, params, adapter)) as outputs:
            async for j, out in outputs:
                produced += len(out.new_token_ids)
                piece = streams[j].feed(out.new_token_ids)
                lp = None
                if logprobs and out.new_logprobs:
                    lp = R.chat_logprobs(pieces, out.new_token_ids, out.new_logprobs,
                                         out.new_top_logprobs if top else None)
                if piece or lp:
                    yield chunk(j, {"content": piece}, lp=lp)
                if out.finished:
                    c = out.completion
                    text = forced + (c.text or "")
                    content, calls = parse_tool_calls(text) if parse else (text, [])
                    if calls:
                        rest = streams[j].finish(content or "")
                        if rest:
                            yield chunk(j, {"content": rest})
                        for k, call in enumerate(calls):
                            yield chunk(j, {"tool_calls": [{"index": k, **call}]})
                        yield chunk(j, {}, "tool_calls")
                    else:
                        rest = streams[j].finish(text) if not forced else text
                        if rest:
                            yield chunk(j, {"content": rest})
                        yield chunk(j, {}, c.finish_reason)
        state.metrics.tokens(len(ids), produced)
        if include_usage:
            yield R.sse({**meta, "object": "chat.completion.chunk", "choices": [],
                         "usage": R.usage(len(ids), produced)})
    except Exception as e:
        yield stream_error(e)
    yield R.SSE_DONE


async def completion_stream(state, meta, prompts, seqs, params, adapter, n, echoed, want_lp, top,
                             include_usage, as_ids: bool = False):
    tok, pieces = state.tokenizer, R.Pieces(state.tokenizer, as_ids)
    streams = [R.TextStream(tok, p.stop) for p in params]

    def chunk(k, text, finish=None, lp=None):
        return R.sse({**meta, "object": "text_completion",
                      "choices": [{"index": k, "text": text, "logprobs": lp, "finish_reason": finish}]})

    for k in range(len(seqs)) if echoed else ():
        ptext, plps, ptops = echoed[k // n]
        lp = R.completion_logprobs(pieces, prompts[k // n][0], plps, ptops) if want_lp else None
        yield chunk(k, ptext, lp=lp)
    produced = 0
    try:
        async with contextlib.aclosing(state.backend.stream(seqs, params, adapter)) as outputs:
            async for k, out in outputs:
                produced += len(out.new_token_ids)
                piece = streams[k].feed(out.new_token_ids)
                lp = None
                if want_lp and out.new_logprobs:
                    tops = out.new_top_logprobs if top else [{} for _ in out.new_token_ids]
                    lp = R.completion_logprobs(pieces, out.new_token_ids, out.new_logprobs, tops)
                if out.finished:
                    piece += streams[k].finish(out.completion.text or "")
                if piece or lp or out.finished:
                    yield chunk(k, piece, out.completion.finish_reason if out.finished else None, lp)
        n_prompt = sum(len(ids) for ids, _ in prompts)
        state.metrics.tokens(n_prompt, produced)
        if include_usage:
            yield R.sse({**meta, "object": "text_completion", "choices": [], "usage": R.usage(n_prompt, produced)})
    except Exception as e:
        yield stream_error(e)
    yield R.SSE_DONE
