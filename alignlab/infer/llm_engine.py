"""LLMEngine: generation for a stream of requests, over a paged KV cache with continuous batching.

Requests arrive and leave at any time; each `step()` is one scheduler iteration:

    1. schedule: which sequences run this step and how many tokens each (scheduler.py): decodes, then
       prompt chunks, within max_num_batched_tokens; may preempt when the block pool runs dry
    2. forward: the decodes as one [B, 1] batch, the prompt chunks as one right-padded [B, T] batch, each row
       at its own positions, reading and writing its own blocks (paged.py: PagedRows)
    3. the full blocks just computed are named for the prefix cache (before any is freed, so that a finished
       request's blocks stay cached)
    4. sequences whose tokens are all in the cache draw their next token from the last logits: the static
       engine's processors, per-request generators and stop rules (engine.py), so a request gives the same
       tokens here as there whatever else shares its steps; followers of a prompt fork its blocks and draw
       from its logits; finished requests free their blocks

One thread drives an engine: add_request, abort and step are not thread-safe.

Outputs match the static Engine's (same SamplingParams, same Completion, same seeds). With adapters (a
lora.multi.MultiLora), each request may name a LoRA adapter; the scheduler keeps at most adapters.max_loras
distinct ones running, and every forward runs inside adapters.rows(slots), one slot per row.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from alignlab.errors import UserError
from alignlab.infer.engine import Completion, Engine, SamplingParams, _Batch, completion
from alignlab.infer.paged import PagedKVCache
from alignlab.infer.scheduler import Chunk, Scheduler, Sequence
from alignlab.model.linear import packed_weights

DEFAULT_TOKENS_PER_SEQ = 512  # num_blocks=None: room for max_num_seqs sequences of this many tokens


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]  # tokens produced this step (usually one)
    new_logprobs: list[float] | None  # their log-probs if params.logprobs
    new_top_logprobs: list[dict[int, float]] | None  # if params.top_logprobs > 0
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort"
    completion: Completion | None  # the whole result once finished


class LLMEngine:
    """Continuous-batching generation from a CausalLM; with a tokenizer, prompts may be strings."""

    def __init__(self, model, tokenizer=None, *, block_size: int = 16, num_blocks: int | None = None,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 512, enable_prefix_caching: bool = True,
                 adapters=None):
        for name, value in [("block_size", block_size), ("max_num_seqs", max_num_seqs),
                            ("max_num_batched_tokens", max_num_batched_tokens), ("num_blocks", num_blocks or 1)]:
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        self.model, self.tokenizer, self.adapters = model, tokenizer, adapters
        self.engine = Engine(model, tokenizer)  # request checks, stop rules and sampling, as the static engine has them
        self.device = self.engine.device
        c = model.config
        if num_blocks is None:
            tokens = max(max_num_seqs * DEFAULT_TOKENS_PER_SEQ, min(c.max_seq_len, 32768))
            num_blocks = math.ceil(tokens / block_size)
        self.cache = PagedKVCache.for_model(model, num_blocks, block_size, enable_prefix_caching)
        max_loras = None if adapters is None else adapters.max_loras
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_num_batched_tokens, max_loras)
        self.requests: dict[str, Sequence] = {}
        self._outputs: list[RequestOutput] = []  # finished outside a step (aborts, max_new_tokens=0)
        self._ids = itertools.count()

    # --- public API ----------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: list[int] | str, params: SamplingParams | None = None,
                    adapter: str | None = None) -> None:
        """Queue a request; it starts at a coming step. UserError if it can never run."""
        if request_id in self.requests:
            raise UserError(f"request_id {request_id!r} is already in flight")
        params = params or SamplingParams()
        if params.draft_model is not None:  # speculative decoding runs one request at a time, on the static Engine
            raise UserError(f"request {request_id!r}: speculative decoding (draft_model) needs the static Engine")
        try:
            (req,) = self.engine._requests([prompt], params)
        except (TypeError, ValueError) as e:
            raise UserError(f"request {request_id!r}: {e}") from e
        if adapter is not None:
            if self.adapters is None:
                raise UserError(f"request {request_id!r} names adapter {adapter!r} but the engine has no adapters")
            if adapter not in self.adapters.names():
                raise UserError(f"request {request_id!r}: unknown adapter {adapter!r}; loaded: "
                                f"{self.adapters.names()}")
        total, c = len(req.prompt) + params.max_new_tokens, self.model.config
        if c.pos == "learned" and total - 1 > c.max_seq_len:  # the last token is never fed back
            raise UserError(f"request {request_id!r}: prompt ({len(req.prompt)} tokens) + max_new_tokens "
                            f"({params.max_new_tokens}) exceeds the model's {c.max_seq_len} positions")
        blocks = self.cache.blocks_for(max(len(req.prompt), total - 1))  # the last token is never cached
        if blocks > self.cache.num_blocks:
            raise UserError(f"request {request_id!r}: prompt ({len(req.prompt)} tokens) + max_new_tokens "
                            f"({params.max_new_tokens}) needs {blocks} KV blocks, the pool "
                            f"has {self.cache.num_blocks} (num_blocks x block_size {self.cache.block_size})")
        seq = Sequence(request_id, req.prompt, adapter, share=not params.prompt_logprobs, data=req)
        if params.max_new_tokens == 0 and not params.prompt_logprobs:
            self.engine._finish(req, "length")
            self._outputs.append(self._output(seq, []))
            return
        if not self.scheduler.has_unfinished():
            self.engine.packs.new_generation()  # trainable weights may have changed while the engine was idle
        self.requests[request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Cancel a request: its blocks are freed at once; the next step reports it finished ("abort")."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.abort(request_id)
        self.engine._finish(seq.data, "abort")
        self._outputs.append(self._output(seq, []))

    def reset_prefix_cache(self) -> None:
        """Forget the cached prompt blocks. Call it after changing the weights (an RL loop between rollouts) or
        after loading other weights under an adapter name already used: cached blocks are named by tokens and
        adapter name only."""
        self.cache.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._outputs)

    def stats(self) -> dict[str, int]:
        """KV blocks (total, used, free, cached, wasted slots) and the scheduler's counters."""
        return self.scheduler.stats()

    def generate(self, prompts: list[list[int]] | list[str],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 adapters: str | list[str | None] | None = None) -> list[Completion]:
        """Add every prompt, step until all are done, return their completions in order (drives the engine:
        do not mix with requests added elsewhere, whose outputs it would consume)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("prompts must be a list of prompts (token-id lists or strings)")
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        adapters = adapters if isinstance(adapters, list) else [adapters] * len(prompts)
        if not len(params) == len(adapters) == len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams, {len(adapters)} adapters")
        ids = [f"generate-{next(self._ids)}" for _ in prompts]
        for i, p, q, a in zip(ids, prompts, params, adapters):
            self.add_request(i, p, q, a)
        done: dict[str, Completion] = {}
        while self.has_unfinished():
            done.update((o.request_id, o.completion) for o in self.step() if o.finished)
        return [done[i] for i in ids]

    # --- one step ------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One scheduler iteration; returns the outputs of the requests that advanced (or finished)."""
        outputs, self._outputs = self._outputs, []
        chunks = self.scheduler.schedule()  # 1
        if not chunks:
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler made no progress")  # a bug, never a user's request
            return outputs
        with torch.inference_mode(), packed_weights(self.engine.packs):
            ready, logits = self._forward(chunks)  # 2
            for c in chunks:  # 3
                c.seq.num_computed += c.n
                self.cache.commit(c.seq.table, c.seq.token_ids, c.seq.num_computed, c.seq.adapter)
            rows, where = [], []
            for i, seq in enumerate(ready):  # 4: whoever waited for these prompts comes along
                group = [seq] + (self.scheduler.fork_followers(seq) if seq.num_generated == 0 else [])
                rows += group
                where += [i] * len(group)
            if len(where) > len(ready):
                logits = logits[torch.tensor(where, device=logits.device)]
            outputs += self._sample(rows, logits)
        return outputs

    def _forward(self, chunks: list[Chunk]) -> tuple[list[Sequence], torch.Tensor]:
        """Run the chunks (decodes and prompt chunks as two batches); return the sequences whose tokens are now
        all in the cache, and their last logits [R, V] in fp32."""
        slots = None
        if self.adapters is not None:
            slots = dict(zip([c.seq for c in chunks], self.adapters.activate([c.seq.adapter for c in chunks])))
            chunks = sorted(chunks, key=lambda c: slots[c.seq])  # rows grouped by adapter: no gather in the kernel
        ready, hidden = [], []
        for group in ([c for c in chunks if c.n == 1], [c for c in chunks if c.n > 1]):
            if not group:
                continue
            if slots is None:
                h = self._run(group)
            else:
                with self.adapters.rows([slots[c.seq] for c in group]):
                    h = self._run(group)
            for c, row in zip(group, h):
                if c.start + c.n == len(c.seq.token_ids):
                    ready.append(c.seq)
                    hidden.append(row[c.n - 1])
        if not ready:
            return ready, None
        if slots is None:
            return ready, self.model.lm_head(torch.stack(hidden)).float()
        with self.adapters.rows([slots[s] for s in ready]):
            return ready, self.model.lm_head(torch.stack(hidden)).float()

    def _run(self, group: list[Chunk]) -> torch.Tensor:
        """One forward over the group's rows; final hidden states [B, T, dim] (right-padded rows)."""
        B, T = len(group), max(c.n for c in group)
        ids = torch.zeros(B, T, dtype=torch.long)
        for b, c in enumerate(group):
            ids[b, :c.n] = torch.tensor(c.seq.token_ids[c.start:c.start + c.n])
        starts = torch.tensor([c.start for c in group])
        pos = starts[:, None] + torch.arange(T)  # the row's own positions (padding: past its end, unused)
        if self.model.config.pos == "learned":
            pos = pos.clamp(max=self.model.config.max_seq_len - 1)
        rows = self.cache.rows([c.seq.table for c in group], [c.start for c in group], [c.n for c in group])
        hidden = self.model(ids.to(self.device), position_ids=pos.to(self.device), cache=rows, head=False)
        for b, c in enumerate(group):
            if c.seq.data.params.prompt_logprobs and c.start < c.seq.num_prompt - 1:
                self._prompt_logprobs(c, hidden[b, :c.n])
        return hidden

    def _prompt_logprobs(self, c: Chunk, hidden: torch.Tensor):
        """Record log pi(prompt[t + 1] | prompt[:t + 1]) for the chunk's positions t (once, even if recomputed)."""
        req, P = c.seq.data, c.seq.num_prompt
        if req.prompt_logprobs is None:
            req.prompt_logprobs = [None]
        first = len(req.prompt_logprobs) - 1  # the next position to record
        last = min(c.start + c.n, P - 1)  # positions [first, last) predict prompt tokens
        if first >= last:
            return
        h = hidden[first - c.start:last - c.start]
        lp = self.model.lm_head(h).float().log_softmax(dim=-1)
        target = torch.tensor(c.seq.token_ids[first + 1:last + 1], device=lp.device)
        req.prompt_logprobs += lp.gather(1, target[:, None])[:, 0].tolist()

    def _sample(self, rows: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        """Draw each row's next token (the static engine's processors and stop rules) and report it."""
        outputs = []
        done = [s for s in rows if s.num_generated >= s.data.params.max_new_tokens]  # max_new_tokens=0: prompt only
        for s in done:
            self.engine._finish(s.data, "length")
        if len(done) < len(rows):
            keep = [i for i, s in enumerate(rows) if s not in done]
            live = [rows[i] for i in keep]
            if len(keep) < len(rows):
                logits = logits[torch.tensor(keep, device=logits.device)]
            seen = None
            if any(s.data.params.repetition_penalty != 1.0 for s in live):
                seen = torch.zeros(len(live), logits.shape[-1], dtype=torch.bool, device=logits.device)
                for i, s in enumerate(live):
                    seen[i, torch.tensor(s.token_ids, device=logits.device)] = True
            batch = _Batch([s.data for s in live], None, torch.empty(0, device=self.device), seen)
            tokens, logprobs = self.engine._choose(logits, batch)
            self.engine._record(batch, tokens.tolist(), logprobs)
            for s in live:
                s.token_ids.append(s.data.tokens[-1])
                outputs.append(self._output(s, [s.data.tokens[-1]]))
        outputs += [self._output(s, []) for s in done]
        for s in rows:
            if s.data.finish_reason is not None:
                self.scheduler.finish(s)
                self.requests.pop(s.request_id, None)
        return outputs

    def _output(self, seq: Sequence, new: list[int]) -> RequestOutput:
        req, p = seq.data, seq.data.params
        finished = req.finish_reason is not None
        return RequestOutput(seq.request_id, new,
                             req.logprobs[-len(new):] if p.logprobs and new else ([] if p.logprobs else None),
                             req.top_logprobs[-len(new):] if p.top_logprobs and new else
                             ([] if p.top_logprobs else None),
                             finished, req.finish_reason, completion(req) if finished else None)

