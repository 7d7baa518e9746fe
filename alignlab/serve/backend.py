"""The engine thread: one background thread drives the engine; the HTTP handlers talk to it through queues.

    handler (asyncio)                          engine thread
    backend.stream(prompts, params) ----->     commands: add_request / abort / call(fn)
          ^                                    loop: run the commands, then engine.step() while there is work,
          |                                          sleep on a condition when there is none
          +---- loop.call_soon_threadsafe ---  each RequestOutput goes to its request's asyncio queue

Every engine call happens on the engine thread, between two steps, so the engine needs no locks: add_request,
abort, loading an adapter and scoring a prompt (echo with log-probs) are commands the thread runs in order.
A handler that stops listening (the client disconnected, the task was cancelled) aborts its requests, which
frees their KV blocks at once. `stop()` lets the requests in flight finish, then ends the thread.

The engine is `alignlab.infer.llm_engine.LLMEngine` (continuous batching over a paged KV cache) when it is
importable, else `StaticEngineCore` below: the same four methods over the static `Engine`, which runs the
waiting requests to completion as one batch per step (requests that arrive meanwhile wait for the next step).

Speculative decoding (`alignlab serve --speculative-model DIR`): the server runs StaticEngineCore with every
request's SamplingParams carrying the draft model, so continuous batching is off in that mode: the engine runs
the waiting requests one after another (infer/speculative.py decodes one request at a time), each to its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import torch

from alignlab.errors import ConfigError
from alignlab.infer import Completion, Engine, SamplingParams, speculative


@dataclass
class RequestOutput:
    """What one step produced for one request (the fields of llm_engine.RequestOutput)."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    new_top_logprobs: list[dict[int, float]] | None
    finished: bool
    finish_reason: str | None
    completion: Completion | None


@torch.inference_mode()
def score(model, ids: list[int], top: int = 0, adapters=None, adapter: str | None = None
          ) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """log pi(ids[t] | ids[:t]) for every position (None for t = 0, which has no prefix), and the `top` most
    likely tokens at each position as {id: log-prob} (None at t = 0), from one forward over the whole sequence.

    Log-probs are of the raw logits (temperature 1, no truncation), as Completion.logprobs are.
    """
    dev = next(model.parameters()).device
    x = torch.tensor([ids], device=dev)
    if adapter is not None:
        with adapters.rows(adapters.activate([adapter])):
            logits = model(x)[0, :-1].float()  # (T - 1, V): position t predicts ids[t + 1]
    else:
        logits = model(x)[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1)
    token = lp.gather(1, x[0, 1:, None])[:, 0].tolist()
    tops: list[dict[int, float] | None] = [None]
    if top > 0:
        v, i = lp.topk(min(top, lp.shape[-1]), dim=-1)
        tops += [dict(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
    else:
        tops += [{} for _ in token]
    return [None, *token], tops


class StaticEngineCore:
    """LLMEngine's add_request / abort / step / has_unfinished over the static Engine.

    Each step generates every waiting request to completion (base-model requests as one batch, each adapter's
    request alone under its slot) and returns one finished RequestOutput per request, holding all its tokens
    (and their log-probs and top log-probs, when asked for).

    With a draft_model, every request decodes speculatively (num_speculative_tokens guesses a round, one request
    at a time); a request asking for what that path does not support (top_logprobs, repetition_penalty, a guide)
    is refused when it is added.
    """

    def __init__(self, model, tokenizer, adapters=None, draft_model=None, num_speculative_tokens: int = 0):
        self.model, self.adapters = model, adapters
        self.engine = Engine(model, tokenizer)
        self.waiting: dict[str, tuple[list[int], SamplingParams, str | None]] = {}
        self.speculative = {} if draft_model is None else dict(draft_model=draft_model,
                                                                num_speculative_tokens=num_speculative_tokens)

    def add_request(self, request_id: str, prompt: list[int] | str, params: SamplingParams,
                    adapter: str | None = None) -> None:
        if self.speculative:
            params = replace(params, **self.speculative)
        (req,) = self.engine._requests([prompt], params)  # the engine's checks now, not in a later batch
        if adapter is not None and (self.adapters is None or adapter not in self.adapters.names()):
            raise ValueError(f"request {request_id!r}: unknown adapter {adapter!r}")
        self.waiting[request_id] = (req.prompt, params, adapter)

    def abort(self, request_id: str) -> None:
        self.waiting.pop(request_id, None)  # nothing runs between steps

    def has_unfinished(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list[RequestOutput]:
        todo, self.waiting = self.waiting, {}
        base = [rid for rid, (_, _, a) in todo.items() if a is None]
        runs = [base] if base else []
        runs += [[rid] for rid, (_, _, a) in todo.items() if a is not None]
        outputs = []
        for rids in runs:
            prompts = [todo[r][0] for r in rids]
            params = [todo[r][1] for r in rids]
            adapter = todo[rids[0]][2]
            if adapter is None:
                done = self.engine.generate(prompts, params)
            else:
                with self.adapters.rows(self.adapters.activate([adapter])):
                    done = self.engine.generate(prompts, params)
            for rid, c in zip(rids, done):
                outputs.append(RequestOutput(rid, c.token_ids, c.logprobs, c.top_logprobs, True, c.finish_reason, c))
        return outputs


def make_core(model, tokenizer, adapters=None, max_num_seqs: int = 64, engine: str = "auto", draft_model=None,
              num_speculative_tokens: int = 0, block_size: int = 16, max_num_batched_tokens: int = 512):
    """engine "continuous": LLMEngine (continuous batching, paged KV cache of block_size-token blocks, at most
    max_num_batched_tokens tokens a step); "static": StaticEngineCore;
    "auto": LLMEngine where alignlab has it. With a draft_model (speculative decoding): StaticEngineCore
    ("continuous" is refused), each request's params carrying the draft and num_speculative_tokens."""
    if engine not in ("auto", "continuous", "static"):
        raise ValueError(f"engine must be auto, continuous or static, not {engine!r}")
    if draft_model is not None or num_speculative_tokens:
        if engine == "continuous":
            raise ConfigError("speculative decoding runs on the static engine, not the continuous one")
        try:  # the checks a request would meet, once now: k's range, the draft's vocabulary and device
            speculative.check(model, SamplingParams(draft_model=draft_model,
                                                    num_speculative_tokens=num_speculative_tokens))
        except ValueError as e:
            raise ConfigError(f"speculative decoding: {e}") from None
        return StaticEngineCore(model, tokenizer, adapters, draft_model, num_speculative_tokens)
    if engine != "static":
        try:
            from alignlab.infer.llm_engine import LLMEngine
        except ImportError:
            if engine == "continuous":
                raise
        else:
            return LLMEngine(model, tokenizer, max_num_seqs=max_num_seqs, adapters=adapters, block_size=block_size,
                             max_num_batched_tokens=max_num_batched_tokens)
    return StaticEngineCore(model, tokenizer, adapters)


class Backend:
    """Runs an engine core on one thread; coroutines submit requests and read their outputs."""

    def __init__(self, core, model=None, adapters=None):
        self.core, self.model, self.adapters = core, model, adapters
        self._cv = threading.Condition()
        self._commands: deque[Callable[[], None]] = deque()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, int]] = {}
        self._live: dict[str, list] = {}  # request id -> [adapter, has produced a token]
        self._ids = itertools.count()
        self._stopping = False
        self.stats: dict[str, int] = {}  # the engine's counters (KV blocks, ...) after its latest step
        self._thread = threading.Thread(target=self._run, name="alignlab-engine", daemon=True)

    # --- the asyncio side --------------------------------------------------------------------------

    def start(self) -> Backend:
        if not self._thread.is_alive():
            self._thread.start()
        return self

    async def stream(self, prompts: list[list[int]], params: list[SamplingParams], adapter: str | None = None
                     ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Generate for every (prompt, params); yields (its index, an output) as outputs arrive, until all are
        finished. Leaving early (an exception, a cancelled task, a closed generator) aborts the unfinished."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        base = f"r{next(self._ids)}"
        rids = [f"{base}-{i}" for i in range(len(prompts))]
        with self._cv:
            for i, (rid, prompt, p) in enumerate(zip(rids, prompts, params)):
                self._sinks[rid] = (loop, queue, i)
                self._live[rid] = [adapter, False]
                self._commands.append(lambda rid=rid, prompt=prompt, p=p: self._add(rid, prompt, p, adapter))
            self._cv.notify()
        left = set(rids)
        try:
            while left:
                i, out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                if out.finished:
                    left.discard(rids[i])
                yield i, out
        finally:
            if left:
                self.abort(list(left))
            with self._cv:
                for rid in rids:
                    self._sinks.pop(rid, None)

    def abort(self, request_ids: list[str]) -> None:
        with self._cv:
            for rid in request_ids:
                self._sinks.pop(rid, None)
                self._commands.append(lambda rid=rid: self._abort(rid))
            self._cv.notify()

    async def call(self, fn: Callable, *args):
        """fn(*args), run on the engine thread between two steps (adapters, scoring)."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # handed to the awaiting coroutine
                    future.set_exception(e)

        with self._cv:
            self._commands.append(run)
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def counts(self) -> tuple[int, int]:
        """(sequences waiting for their first token, sequences producing tokens)."""
        with self._cv:
            started = sum(s for _, s in self._live.values())
            return len(self._live) - started, started

    def in_use(self, adapter: str) -> bool:
        with self._cv:
            return any(a == adapter for a, _ in self._live.values())

    def stop(self, timeout: float | None = None) -> None:
        """Finish the requests in flight, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the engine thread -------------------------------------------------------------------------

    def _run(self):
        while True:
            with self._cv:
                while not self._commands and not self.core.has_unfinished() and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._commands and not self.core.has_unfinished():
                    return
                commands, self._commands = self._commands, deque()
            for command in commands:
                command()
            if self.core.has_unfinished():
                try:
                    outputs = self.core.step()
                except Exception as e:  # a bug in the engine: fail every request in flight, keep serving
                    self._fail_all(e)
                    continue
                for out in outputs:
                    self._deliver(out.request_id, out)
            if hasattr(self.core, "stats"):  # read here, on the thread that changes them
                self.stats = dict(self.core.stats())

    def _add(self, rid: str, prompt: list[int], params: SamplingParams, adapter: str | None):
        if rid not in self._sinks:  # aborted before it started
            self._forget(rid)
            return
        try:
            self.core.add_request(rid, prompt, params, adapter=adapter)
        except Exception as e:
            self._deliver(rid, e)

    def _abort(self, rid: str):
        with self._cv:
            live = self._live.pop(rid, None) is not None
        if live:
            self.core.abort(rid)

    def _deliver(self, rid: str, out):
        with self._cv:
            sink = self._sinks.get(rid)
            finished = isinstance(out, BaseException) or out.finished
            if rid in self._live:
                if finished:
                    del self._live[rid]
                else:
                    self._live[rid][1] = True
        if sink is not None:
            loop, queue, i = sink
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (i, out))
            except RuntimeError:  # the event loop is closed
                pass

    def _forget(self, rid: str):
        with self._cv:
            self._live.pop(rid, None)

    def _fail_all(self, error: Exception):
        with self._cv:
            rids = list(self._live)
        for rid in rids:
            try:
                self.core.abort(rid)
            except Exception:
                pass
            self._deliver(rid, error)
