"""An OpenAI-compatible HTTP server over alignlab's engine (FastAPI): what `alignlab serve` runs.

    GET  /v1/models                 the base model (under each --served-model-name) and its LoRA adapters
    POST /v1/completions            prompt: a string, strings, token ids or lists of ids; echo, logprobs, stream
    POST /v1/chat/completions       messages through the chat template; tools and Hermes tool calls; stream
    POST /v1/load_lora_adapter      {"lora_name", "lora_path"} (vLLM's body; admin key)
    POST /v1/unload_lora_adapter    {"lora_name"}
    POST /tokenize, /detokenize     vLLM's tokenizer endpoints; GET /tokenizer_info (lm-eval reads eos_token)
    GET  /health, /metrics, /       liveness, Prometheus text, a chat page

A request's "model" picks the base model or an adapter, as in vLLM; base and adapter requests share batches.
Generation runs on the engine thread (backend.py); a handler turns the request into token ids and
SamplingParams, awaits the outputs and writes them as JSON or as server-sent events (`data: {...}` chunks,
then `data: [DONE]`). Bad input answers 4xx with OpenAI's error body (protocol.py); a request that would
overflow --max-num-seqs + --max-queue answers 429; a client that disconnects aborts its request.
Completions of token ids get no BOS added (lm-evaluation-harness scores exactly the ids it sends); string
prompts are encoded with the tokenizer's special tokens. With echo and logprobs, the prompt's log-probs come
from one forward over it on the engine thread (backend.score), entry 0 None.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from alignlab.errors import UserError
from alignlab.serve import prompts as P
from alignlab.serve import responses as R
from alignlab.serve import stream as S
from alignlab.serve.backend import Backend, score
from alignlab.serve.metrics import Metrics
from alignlab.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoadLoraRequest,
    TokenizeRequest,
    UnloadLoraRequest,
    error_body,
)
from alignlab.serve.tenants import Tenants
from alignlab.serve.tools import parse_tool_calls, tool_mode

PAGE = Path(__file__).with_name("static") / "index.html"
ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter",
          "/v1/unload_lora_adapter", "/tokenize", "/detokenize", "/tokenizer_info", "/health", "/metrics", "/")


@dataclass
class ServerState:
    """Everything the handlers share."""

    backend: Backend
    tokenizer: object
    model_names: list[str]  # the base model's served names; the first is the parent of every adapter
    max_model_len: int
    vocab_size: int
    model_path: str = ""
    adapters: object | None = None  # a MultiLora, or None where adapters cannot be served
    adapter_paths: dict[str, str] = field(default_factory=dict)
    tenants: Tenants = field(default_factory=Tenants)
    metrics: Metrics = field(default_factory=Metrics)
    capacity: int | None = None  # sequences in flight before 429 (max_num_seqs + max_queue); None: no limit
    in_flight: int = 0
    created: int = field(default_factory=R.now)

    def resolve(self, name: str, allowed: set[str] | None) -> str | None:
        """The adapter a request's "model" names (None: the base model); 404 for a name this key cannot see."""
        if name in self.model_names and Tenants.may_use(allowed, self.model_names):
            return None
        if name in self.adapter_paths and Tenants.may_use(allowed, [name]):
            return name
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")

    def reserve(self, n: int) -> _Reservation:
        if self.capacity is not None and self.in_flight + n > self.capacity:
            raise APIError(429, f"the server is full ({self.in_flight} sequences in flight, room for "
                                f"{self.capacity}); retry later", code="queue_full")
        self.in_flight += n
        return _Reservation(self, n)


class _Reservation:
    def __init__(self, state: ServerState, n: int):
        self.state, self.n = state, n

    def release(self):
        self.state.in_flight -= self.n
        self.n = 0


class _Stream(StreamingResponse):
    """A streamed response that closes its generator (aborting its requests) and runs `on_close` however it
    ends, even when the client left before the first chunk."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.on_close()


class _CountRequests:
    """ASGI middleware counting answered requests by path and status (pure ASGI: streaming stays untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            self.metrics.request(path if path in ROUTES else "other", status[0])


async def _unless_disconnected(request: Request, work):
    """Await `work`, cancelling it (and so aborting its requests) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return Response(status_code=499)  # nobody is listening
    return task.result()


class _Choice:
    """One sequence's outputs gathered."""

    def __init__(self):
        self.ids: list[int] = []
        self.lps: list[float] = []
        self.tops: list[dict[int, float]] = []
        self.completion = None

    def add(self, out):
        self.ids += out.new_token_ids
        self.lps += out.new_logprobs or []
        self.tops += out.new_top_logprobs or []
        if out.finished:
            self.completion = out.completion
            if out.completion is not None:
                self.ids = list(out.completion.token_ids)
                if out.completion.logprobs is not None and len(self.lps) != len(self.ids):
                    self.lps = list(out.completion.logprobs)

    @property
    def text(self) -> str:
        return self.completion.text or ""

    @property
    def finish_reason(self) -> str:
        return self.completion.finish_reason


async def _gather(state: ServerState, prompts, params, adapter) -> list[_Choice]:
    choices = [_Choice() for _ in prompts]
    async with contextlib.aclosing(state.backend.stream(prompts, params, adapter)) as outputs:
        async for i, out in outputs:
            choices[i].add(out)
    return choices


def _engine_error(e: Exception) -> APIError:
    """An error the engine raised for one request: the request's fault (400) or a bug (500)."""
    if isinstance(e, (UserError, ValueError)):
        return APIError(400, str(e))
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


# --- the app -------------------------------------------------------------------------------------------------------

async def _complete(request: Request, state: ServerState, prompts, params, adapter, reservation):
    """Every prompt's completion, or a Response when the client left first; the engine's errors as 4xx; the
    queue slots released either way."""
    try:
        return await _unless_disconnected(request, _gather(state, prompts, params, adapter))
    except (UserError, ValueError, RuntimeError) as e:
        raise _engine_error(e) from None
    finally:
        reservation.release()


def create_app(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.backend.start()
        yield
        await asyncio.to_thread(state.backend.stop)  # after uvicorn let the requests in flight finish

    app = FastAPI(title="alignlab", lifespan=lifespan)
    app.add_middleware(_CountRequests, metrics=state.metrics)
    tok = state.tokenizer

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, loc = f"the body is not valid JSON: {err.get('ctx', {}).get('error', msg)}", []
        where = ".".join(loc)
        return JSONResponse(error_body(400, f"{where}: {msg}" if where else msg, param=where or None), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return JSONResponse(error_body(400, str(e)), status_code=400)

    def allowed(request: Request) -> set[str] | None:
        return state.tenants.allowed(request.headers.get("authorization"))

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        if not PAGE.is_file():  # an install without the package's static files
            raise APIError(404, f"the chat page {PAGE} is not installed")
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/metrics")
    async def metrics(request: Request):
        if state.tenants.keys is not None:
            state.tenants.require_admin(request.headers.get("authorization"))
        waiting, running = state.backend.counts()
        stats = state.backend.stats
        gauges = {"requests_waiting": ("sequences queued or in prefill", waiting),
                  "requests_running": ("sequences producing tokens", running),
                  "requests_in_flight": ("sequences admitted (waiting + running + finishing)", state.in_flight),
                  "kv_blocks_in_use": ("KV-cache blocks in use", stats.get("used")),
                  "kv_blocks_total": ("KV-cache blocks in the pool", stats.get("total")),
                  "kv_blocks_cached": ("free KV-cache blocks kept for the prefix cache", stats.get("cached")),
                  "engine_preemptions": ("sequences preempted (blocks freed, recomputed later)",
                                         stats.get("preemptions")),
                  "prefix_cache_hit_tokens": ("prompt tokens found in the prefix cache",
                                              stats.get("prefix_hit_tokens")),
                  "adapters_loaded": ("LoRA adapters being served", len(state.adapter_paths))}
        return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        keys = allowed(request)
        card = {"object": "model", "created": state.created, "owned_by": "alignlab",
                "max_model_len": state.max_model_len}
        data = []
        if Tenants.may_use(keys, state.model_names):
            data += [{"id": n, **card, "root": state.model_path or n, "parent": None} for n in state.model_names]
        data += [{"id": n, **card, "root": p, "parent": state.model_names[0]}
                 for n, p in state.adapter_paths.items() if Tenants.may_use(keys, [n])]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        adapter = state.resolve(body.model, allowed(request))
        render_tools, forced, guide = tool_mode(body.tools, body.tool_choice, tok)
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if render_tools else None
        ids = P.chat_prompt(tok, body.messages, tools, body.add_generation_prompt, forced, body.chat_template_kwargs)
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = P.max_tokens(asked, len(ids), state.max_model_len, "messages")
        top = body.top_logprobs or 0
        params = [P.sampling_params(body, max_tokens, None if body.seed is None else body.seed + j, body.logprobs, top)
                  for j in range(body.n)]
        for p in params:
            p.guide = guide
        state.metrics.model(body.model)
        parse = bool(render_tools or forced)
        meta = {"id": R.new_id("chatcmpl"), "created": R.now(), "model": body.model}
        reservation = state.reserve(body.n)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            gen = S.chat_stream(state, meta, ids, params, adapter, forced, parse, body.logprobs, top, include_usage)
            return _Stream(gen, reservation.release)
        choices = await _complete(request, state, [ids] * body.n, params, adapter, reservation)
        if isinstance(choices, Response):
            return choices
        out = []
        pieces = R.Pieces(tok)
        for j, c in enumerate(choices):
            text = forced + c.text
            content, calls = parse_tool_calls(text) if parse else (text, [])
            message = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            lp = R.chat_logprobs(pieces, c.ids, c.lps, c.tops if top else None) if body.logprobs else None
            out.append({"index": j, "message": message, "logprobs": lp,
                        "finish_reason": "tool_calls" if calls else c.finish_reason})
        n_out = sum(len(c.ids) for c in choices)
        state.metrics.tokens(len(ids), n_out)
        return {**meta, "object": "chat.completion", "choices": out, "usage": R.usage(len(ids), n_out)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = state.resolve(body.model, allowed(request))
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of must equal n", param="best_of")
        prompts = P.completion_prompts(tok, state.vocab_size, body.prompt)
        want_lp = body.logprobs is not None
        top = body.logprobs or 0
        seqs, params = [], []
        for ids, _ in prompts:
            max_tokens = P.max_tokens(body.max_tokens, len(ids), state.max_model_len, "prompt")
            for j in range(body.n):
                seqs.append(ids)
                params.append(P.sampling_params(body, max_tokens, None if body.seed is None else body.seed + j,
                                              want_lp, top))
        state.metrics.model(body.model)
        echoed = []  # per prompt: (text, token log-probs, top log-probs) when echoing
        if body.echo:
            for ids, text in prompts:
                lps = tops = None
                if want_lp:
                    lps, tops = await state.backend.call(score, state.backend.model, ids, top, state.adapters,
                                                         adapter)
                echoed.append((text if text is not None else tok.decode(ids), lps, tops))
        meta = {"id": R.new_id("cmpl"), "created": R.now(), "model": body.model}
        reservation = state.reserve(len(seqs))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            gen = S.completion_stream(state, meta, prompts, seqs, params, adapter, body.n, echoed, want_lp, top,
                                     include_usage, body.return_tokens_as_token_ids)
            return _Stream(gen, reservation.release)
        choices = await _complete(request, state, seqs, params, adapter, reservation)
        if isinstance(choices, Response):
            return choices
        pieces, out = R.Pieces(tok, body.return_tokens_as_token_ids), []
        for k, c in enumerate(choices):
            p = k // body.n
            text, lp = c.text, None
            ids, lps, tops = c.ids, c.lps, c.tops if top else [{} for _ in c.ids]
            if body.echo:
                ptext, plps, ptops = echoed[p]
                text = ptext + text
                if want_lp:
                    ids, lps, tops = prompts[p][0] + ids, plps + lps, ptops + tops
            if want_lp:
                lp = R.completion_logprobs(pieces, ids, lps, tops)
            out.append({"index": k, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
        n_prompt = sum(len(ids) for ids, _ in prompts)
        n_out = sum(len(c.ids) for c in choices)
        state.metrics.tokens(n_prompt, n_out)
        return {**meta, "object": "text_completion", "choices": out, "usage": R.usage(n_prompt, n_out)}

    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: LoadLoraRequest, request: Request):
        state.tenants.require_admin(request.headers.get("authorization"))
        if state.adapters is None:
            raise APIError(400, "this server cannot serve LoRA adapters for this model", param="lora_name")
        if body.lora_name in state.model_names or body.lora_name in state.adapter_paths:
            raise APIError(400, f"the name {body.lora_name!r} is already served", param="lora_name")
        await state.backend.call(state.adapters.load, body.lora_name, body.lora_path)
        state.adapter_paths[body.lora_name] = body.lora_path
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: UnloadLoraRequest, request: Request):
        state.tenants.require_admin(request.headers.get("authorization"))
        if body.lora_name not in state.adapter_paths:
            raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name")
        if state.backend.in_use(body.lora_name):
            raise APIError(400, f"adapter {body.lora_name!r} is in use by requests in flight; retry later",
                           param="lora_name")
        await state.backend.call(state.adapters.unload, body.lora_name)
        del state.adapter_paths[body.lora_name]
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        keys = allowed(request)
        if body.model is not None:
            state.resolve(body.model, keys)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give either prompt or messages", param="prompt")
        if body.prompt is not None:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            ids = P.chat_prompt(tok, body.messages, None, body.add_generation_prompt)
        return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        keys = allowed(request)
        if body.model is not None:
            state.resolve(body.model, keys)
        return {"prompt": tok.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        allowed(request)
        template = tok.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "unk_token": tok.unk_token, "add_bos_token": tok.add_bos_token,
                "model_max_length": state.max_model_len, "chat_template": template}

    return app


