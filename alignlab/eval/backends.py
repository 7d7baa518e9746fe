"""What `alignlab eval` asks of a model, two ways: a local checkpoint through the engine, or any OpenAI-compatible URL.

    model = open_model("runs/pipeline/sft/model")               # LocalModel
    model = open_model("http://127.0.0.1:8000/v1", name="tiny")  # RemoteModel: alignlab serve, vLLM, ...
    model.generate([GenRequest(prompt, max_tokens=256)])         # -> texts; a prompt is text or chat messages
    model.loglikelihood([("Question: ...\\nAnswer:", " Paris")])  # -> [(log p(continuation | context), greedy?)]

Log-likelihoods follow lm-evaluation-harness: trailing spaces of the context move to the continuation, the pair is
encoded as one text with no special tokens (no BOS), the continuation is the tokens after the context's, and
`greedy` says whether each of them was the model's top choice. Over a URL that is one /v1/completions request per
pair with `echo`, `logprobs: 1` and `max_tokens: 1` on the token ids (`/tokenize` encodes them), as lm-eval's
`local-completions` sends it, so alignlab and lm-eval score the same served model alike.

A RemoteModel sends up to `concurrency` requests at once and retries what a server may answer later (connection
errors, 408, 429, 5xx) with backoff; any other error is raised with the server's message.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.errors import UserError


@dataclass(frozen=True)
class GenRequest:
    prompt: str | list  # text to continue, or chat messages
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int = 0

    def key(self) -> str:
        return json.dumps({"gen": asdict(self)}, sort_keys=True)


class EngineModel:
    """A loaded CausalLM and its tokenizer, run by alignlab's engine in this process. `name` keys the cache."""

    def __init__(self, model, tokenizer, name: str = "in-memory model", batch_size: int = 32):
        from alignlab.infer import Engine

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.engine = Engine(model, tokenizer)  # lays bf16 weights out once for every generate() call
        self.name = self.label = name

    def generate(self, requests: list[GenRequest]) -> list[str]:
        from alignlab.infer import SamplingParams

        out = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i:i + self.batch_size]
            ids = [self.tokenizer.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=True)
                   if isinstance(r.prompt, list) else self.tokenizer.encode(r.prompt, add_special_tokens=True)
                   for r in chunk]
            params = [SamplingParams(max_new_tokens=r.max_tokens, temperature=r.temperature, seed=r.seed,
                                     stop=list(r.stop)) for r in chunk]
            out += [c.text for c in self.engine.generate(ids, params)]
        return out

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        import torch

        out = []
        with torch.no_grad():
            for context, continuation in pairs:
                whole, n_ctx = encode_pair(lambda t: self.tokenizer.encode(t, add_special_tokens=False),
                                           context, continuation)
                ids = torch.tensor([whole[-(self.model.config.max_seq_len + 1):]])
                logp = self.model(ids[:, :-1]).float().log_softmax(-1)[0]
                target = ids[0, 1:]
                n = len(whole) - n_ctx
                lp = logp[-n:].gather(-1, target[-n:, None])[:, 0]
                out.append((float(lp.sum()), bool((logp[-n:].argmax(-1) == target[-n:]).all())))
        return out


class LocalModel(EngineModel):
    """A checkpoint directory (or Hub id), loaded in the precision `dtype` resolves to for inference."""

    def __init__(self, path: str, dtype: str = "auto", batch_size: int = 32):
        from alignlab.model.hf import load_model, resolve_model_dir
        from alignlab.model.precision import resolve_precision
        from alignlab.text import load_tokenizer

        resolved = Path(resolve_model_dir(path))
        precision = resolve_precision(dtype, "cpu", "infer")
        from alignlab.quant import is_quantized, load_quantized

        if is_quantized(resolved):  # its layers dequantise to fp32 as they run
            model = load_quantized(resolved)
        else:
            model = load_model(resolved, dtype=precision.dtype).requires_grad_(False).eval()
        super().__init__(model, load_tokenizer(resolved), batch_size=batch_size)
        weights = sorted(resolved.glob("*.safetensors")) or sorted(resolved.glob("*.bin"))
        stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
        self.name = json.dumps({"local": str(resolved), "weights": stamp, "dtype": str(precision.dtype)})
        self.label = f"{resolved} ({precision.why})"


def encode_pair(encode, context: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of context + continuation, how many of them are the context's), lm-eval's way: trailing spaces of
    the context go to the continuation, and the continuation is what follows the context's own encoding."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    if not ctx:
        raise UserError("a log-likelihood context must not be empty")
    return whole, len(ctx)


class RemoteModel:
    """Any OpenAI-compatible server: chat prompts go to /v1/chat/completions, text to /v1/completions."""

    RETRY = {408, 429, 500, 502, 503, 504}

    def __init__(self, url: str, name: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 4, timeout_s: float = 600.0):
        import httpx

        self.base = url.rstrip("/").removesuffix("/v1") + "/v1"
        self.root = self.base.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout_s)
        self.concurrency, self.retries = concurrency, retries
        self.served = name or self._first_model()
        self.name = json.dumps({"url": self.base, "model": self.served})
        self.label = f"{self.served} at {self.base}"

    def _first_model(self) -> str:
        models = self._call("GET", f"{self.base}/models").get("data") or []
        if not models:
            raise UserError(f"{self.base}/models lists no model; pass --served-model-name")
        return models[0]["id"]

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, url, json=body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise UserError(f"{url}: {type(e).__name__}: {e}") from None
            else:
                if r.status_code < 400:
                    return r.json()
                if r.status_code not in self.RETRY or attempt == self.retries:
                    raise UserError(f"{url}: HTTP {r.status_code}: {r.text[:500]}")
            time.sleep(min(30.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def generate(self, requests: list[GenRequest]) -> list[str]:
        def one(r: GenRequest) -> str:
            body = {"model": self.served, "max_tokens": r.max_tokens, "temperature": r.temperature, "seed": r.seed}
            if r.stop:
                body["stop"] = list(r.stop)
            if isinstance(r.prompt, list):
                reply = self._call("POST", f"{self.base}/chat/completions", {**body, "messages": r.prompt})
                return reply["choices"][0]["message"].get("content") or ""
            reply = self._call("POST", f"{self.base}/completions", {**body, "prompt": r.prompt})
            return reply["choices"][0]["text"]

        return self._map(one, requests)

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        def encode(text: str) -> list[int]:
            return self._call("POST", f"{self.root}/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]

        def one(pair) -> tuple[float, bool]:
            whole, n_ctx = encode_pair(encode, *pair)
            reply = self._call("POST", f"{self.base}/completions", {
                "model": self.served, "prompt": [whole], "max_tokens": 1, "temperature": 0, "logprobs": 1,
                "echo": True, "seed": 1234})
            lp = reply["choices"][0]["logprobs"]
            n = len(whole) - n_ctx
            token_lps = lp["token_logprobs"][n_ctx:n_ctx + n]
            greedy = all(max(top, key=top.get) == tok
                         for top, tok in zip(lp["top_logprobs"][n_ctx:n_ctx + n], lp["tokens"][n_ctx:n_ctx + n]))
            return float(sum(token_lps)), greedy

        return self._map(one, pairs)


def open_model(where: str, name: str | None = None, api_key: str | None = None, dtype: str = "auto",
               concurrency: int = 8):
    """A RemoteModel for an http(s) URL, else a LocalModel for a directory or Hub id."""
    if where.startswith(("http://", "https://")):
        return RemoteModel(where, name=name, api_key=api_key, concurrency=concurrency)
    return LocalModel(where, dtype=dtype)
