"""Rollouts from an OpenAI-compatible server: the LoRA policy is pushed to it every rollout batch, and the
completions come back over HTTP (rollout.backend=server).

    remote = ServerRollouts("http://127.0.0.1:8000/v1", "base", tok)         # checks that the server serves "base"
    rollout = remote(policy, tok, prompt_ids, G, params, seeds, pad_id)     # the Rollout generate_rollouts returns
    remote.close()                                                          # unloads the last adapter

This is how vLLM-backed trainers scale generation out: the trainer keeps the weights and the optimizer, the server
keeps a KV cache and batches. A LoRA adapter is a few megabytes, so it travels as files (trl's vLLM server mode
syncs full weights over NCCL instead, which this does not do). One call:

1. push      the policy's adapter is written in PEFT's format (lora/peft_io.py: save_adapter) to
             <adapter_dir>/<name>; the previous adapter is unloaded (POST /v1/unload_lora_adapter {"lora_name"})
             and its files deleted; the new one is loaded (POST /v1/load_lora_adapter {"lora_name", "lora_path"},
             vLLM's bodies). Every rollout batch gets a fresh name, alignlab-rollout-<run>-<k>: alignlab's and
             vLLM's prefix caches name cached blocks by adapter name, so a reused name could serve blocks that the
             previous policy computed.
2. sample    one POST /v1/completions per prompt, all sent at once so that the server batches them: the prompt
             as token ids (no BOS is added), model = the adapter's name, n = G, temperature, top_p, top_k,
             max_tokens, seed, and logprobs=0 with return_tokens_as_token_ids=true, so that each sampled token
             comes back as "token_id:<id>" (vLLM's extension). alignlab serve seeds choice j of a request seeded s
             with s + j, which is generate_rollouts' seed for row i*G + j (rollout_seeds are consecutive), so the
             same policy samples the same tokens through the server as locally. vLLM draws a request's n choices
             from one seeded generator: other samples of the same distribution. Seeds that are not consecutive
             within a group go as G requests with n = 1.
3. read      each choice's token ids, text and finish_reason ("length": truncated) -> the same Rollout as local
             generation (rl/rollout.py: make_rollout), so scoring, log-probs and the loss are unchanged. A server
             that returns token strings rather than ids (no return_tokens_as_token_ids) gets its text
             re-tokenized, with EOS appended where it stopped, and a warning: those ids spell the same text but
             need not be the tokens it sampled, so the update is then slightly off-policy.

Errors (the server unreachable, a 4xx or 5xx answer) raise UserError naming the URL and the server's message.
vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for the load and unload endpoints, and the server must read the
adapter directory (rollout.server_adapter_dir on a shared filesystem when it runs on another machine).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from alignlab.errors import UserError
from alignlab.infer import Completion, SamplingParams
from alignlab.lora.peft_io import save_adapter
from alignlab.rl.collect import RolloutConfig
from alignlab.rl.rollout import Rollout, make_rollout
from alignlab.train.trainer import unwrap

TOKEN_ID = "token_id:"  # vLLM's spelling of a token under return_tokens_as_token_ids


class ServerRollouts:
    """generate_rollouts through an OpenAI-compatible server; one pushed adapter at a time."""

    def __init__(self, url: str, model: str, tokenizer, api_key: str | None = None, adapter_dir: str = "",
                 base_model_path: str | None = None, timeout_s: float = 600.0, max_concurrency: int = 64,
                 warn: Callable[[str], None] = print):
        self.url, self.model, self.tokenizer, self.warn = url.rstrip("/"), model, tokenizer, warn
        self.base_model_path, self.max_concurrency = base_model_path, max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0))
        try:
            served = self.models()
        except UserError:
            self.http.close()
            raise
        if model not in served:
            self.http.close()
            raise UserError(f"{self.url}/models: the server does not serve {model!r} (rollout.server_model); it "
                            f"serves {', '.join(served) or 'nothing'}")
        self.own_dir = not adapter_dir  # a temporary directory, removed at close
        self.adapter_dir = Path(adapter_dir or tempfile.mkdtemp(prefix="alignlab-rollouts-")).resolve()
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        self.run, self.pushes = uuid.uuid4().hex[:8], 0
        self.loaded: str | None = None  # the adapter on the server now
        self.warned = False

    # --- HTTP ----------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        url = self.url + path
        try:
            r = self.http.request(method, url, json=body)
        except httpx.HTTPError as e:
            raise UserError(f"{url}: no answer from the server ({type(e).__name__}: {e}); is it running at "
                            f"rollout.server_url={self.url}?") from None
        if r.status_code >= 400:
            raise UserError(f"{url} answered {r.status_code}: {_message(r)}")
        return r

    def models(self) -> list[str]:
        """The ids GET /models lists (the base model's names and the adapters loaded)."""
        return [m["id"] for m in self._call("GET", "/models").json().get("data", [])]

    # --- 1. push ---------------------------------------------------------------------------------------------------

    def push(self, policy) -> str:
        """Write the policy's adapter, swap it in for the previous one on the server; returns its name."""
        self.pushes += 1
        name = f"alignlab-rollout-{self.run}-{self.pushes}"
        path = save_adapter(unwrap(policy), self.adapter_dir / name, base_model_name_or_path=self.base_model_path)
        self.unload()
        self._call("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        self.loaded = name
        return name

    def unload(self) -> None:
        """Unload the adapter pushed last and delete its files."""
        if self.loaded is None:
            return
        name, self.loaded = self.loaded, None
        self._call("POST", "/unload_lora_adapter", {"lora_name": name})
        shutil.rmtree(self.adapter_dir / name, ignore_errors=True)

    # --- 2. sample, 3. read ----------------------------------------------------------------------------------------

    def __call__(self, policy, tokenizer, prompt_ids: list[list[int]], num_generations: int,
                 params: SamplingParams, seeds: list[int], pad_id: int, autocast=None) -> Rollout:
        """generate_rollouts' contract (autocast is the server's business); Rollout.seconds counts the push too."""
        start = time.perf_counter()
        outs = self.sample(self.push(policy), prompt_ids, num_generations, params, seeds)
        repeated = [ids for ids in prompt_ids for _ in range(num_generations)]
        device = next(policy.parameters()).device
        return make_rollout(repeated, outs, num_generations, pad_id, device, time.perf_counter() - start)

    def sample(self, name: str, prompt_ids: list[list[int]], num_generations: int, params: SamplingParams,
               seeds: list[int]) -> list[Completion]:
        """G completions of each prompt from the served model `name` (the adapter `push` returned), the G of a
        prompt next to each other; one seed per completion."""
        G = num_generations
        if len(seeds) != len(prompt_ids) * G:
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts x {G} generations")
        bodies, prompts = [], []  # one request per prompt (n = G), or per completion where seeds are not consecutive
        for i, ids in enumerate(prompt_ids):
            group = [int(s) for s in seeds[i * G:(i + 1) * G]]
            consecutive = group == list(range(group[0], group[0] + G))
            for seed, n in ([(group[0], G)] if consecutive else [(s, 1) for s in group]):
                bodies.append(request_body(name, ids, n, seed, params))
                prompts.append(ids)
        workers = max(1, min(len(bodies), self.max_concurrency))
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(lambda b: self._call("POST", "/completions", b).json(), bodies))
        return [self._completion(choice, ids, params.max_new_tokens)
                for ids, answer in zip(prompts, answers)
                for choice in sorted(answer["choices"], key=lambda c: c["index"])]

    def _completion(self, choice: dict, prompt: list[int], max_tokens: int) -> Completion:
        """A choice as the engine's Completion: its sampled token ids, or its text re-tokenized (module docstring)."""
        tokens = (choice.get("logprobs") or {}).get("tokens")
        text, reason = choice.get("text") or "", choice.get("finish_reason")
        if tokens is not None and all(t.startswith(TOKEN_ID) for t in tokens):
            ids = [int(t[len(TOKEN_ID):]) for t in tokens]
        else:
            if not self.warned:
                self.warned = True
                self.warn(f"{self.url}/completions returned token strings, not token ids "
                          "(return_tokens_as_token_ids): the rollouts' token ids are their texts re-tokenized, which "
                          "need not be the tokens the server sampled")
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if reason == "stop" and self.tokenizer.eos_token_id is not None:
                ids.append(self.tokenizer.eos_token_id)
            ids = ids[:max_tokens]
        return Completion(ids, text, None, reason, prompt)

    # --- the end ---------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Unload the last adapter (a warning if the server is gone), delete the adapter files, close the client."""
        try:
            self.unload()
        except UserError as e:
            self.warn(f"rollout server: could not unload the last adapter: {e}")
        if self.own_dir:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
        self.http.close()

    def __enter__(self) -> ServerRollouts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request_body(model: str, prompt: list[int], n: int, seed: int, params: SamplingParams) -> dict:
    """A /v1/completions body: n samples of one token-id prompt, their token ids in the log-probs."""
    body = {"model": model, "prompt": prompt, "n": n, "seed": seed, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k or -1,
            "min_p": params.min_p, "repetition_penalty": params.repetition_penalty, "ignore_eos": params.ignore_eos,
            "logprobs": 0, "return_tokens_as_token_ids": True}
    if params.stop:
        body["stop"] = params.stop
    if params.stop_token_ids:
        body["stop_token_ids"] = params.stop_token_ids
    return body


def _message(r: httpx.Response) -> str:
    """The server's error message: OpenAI's {"error": {"message"}}, vLLM's older {"message"}, or the text."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500] or r.reason_phrase
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(body)[:500]


def server_rollouts(cfg: RolloutConfig, tokenizer, base_model_path: str | None = None,
                    warn: Callable[[str], None] = print) -> ServerRollouts | None:
    """The rollout function for cfg.backend=server (checked against the server), None for local rollouts."""
    if cfg.backend != "server":
        return None
    return ServerRollouts(cfg.server_url, cfg.server_model, tokenizer, cfg.server_api_key, cfg.server_adapter_dir,
                          base_model_path, warn=warn)
