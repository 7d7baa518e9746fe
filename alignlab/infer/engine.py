"""Batched generation with a KV cache: prefill every prompt at once, then decode one token per step.

    1. prompts, left-padded to [B, L]  ->  prefill: one forward, logits of the last position only
    2. logits -> processors -> next token per row  ->  stop?
    3. enough rows finished?  ->  drop them from the batch and the cache (KVCache.keep_rows)
    4. forward the new tokens [B, 1]; back to 2

Left padding puts the last prompt token of every row in the same cache slot, so each decode step is a
single [B, 1] forward for the whole batch. Padding slots are masked out of attention and positions count
real tokens only, so a padded row computes what it would alone. Rows that finish keep riding along until
enough of them have finished; then the batch is compacted so they stop costing compute. A prompt asked for
several times (n samples, GRPO's groups) is prefilled once, in one of its rows (KVCache.rows), and that row
copied to the others (KVCache.copy_rows). The engine talks to the cache through its methods only.

Stopping: a request ends with finish_reason "stop" on an end-of-sequence id (the tokenizer's and the
model config's, unless ignore_eos), one of its stop_token_ids, or one of its stop strings appearing in the
decoded text (a stop string that is one vocabulary token, such as "<|im_end|>", also stops as that id:
the text skips special tokens); otherwise with "length" after max_new_tokens tokens.

Precision: the engine computes in the model's dtype (load_model(dir, dtype=...) picks it; `alignlab generate
--dtype auto` gives bf16 weights where the CPU runs bf16 natively) or under the caller's autocast; the logits are
cast to fp32 before the processors, so sampling and log-probabilities are fp32 whatever the weights are. On the
CPU each generation multiplies by weights laid out once for oneDNN (`model/linear.py: packed_weights`; an
inference model's frozen weights stay laid out between calls), keeps its KV cache in fp32 (CausalLM.new_cache), and
decodes through model/decode.py's flat one-token step where it applies (same logits, fewer operations).

Speculative decoding: a request whose SamplingParams carry a draft_model runs in infer/speculative.py instead (the
draft guesses num_speculative_tokens tokens, one forward of this model checks them; one request at a time), with
the same stop rules, Completion and log-probs; its counters add up in Engine.speculative_stats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from alignlab.infer import sampling as S
from alignlab.infer import speculative
from alignlab.model.decode import DecodeStep
from alignlab.model.linear import PackedWeights, packed_weights

COMPACT_FRACTION = 0.25  # compact the batch once this fraction of its rows has finished


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; applies to prompt and generated tokens (as in HF)
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings (need a tokenizer)
    seed: int | None = None  # None: drawn from torch's global RNG
    logprobs: bool = False
    top_logprobs: int = 0  # also the log-probs of the k most likely tokens at each step (raw logits, as logprobs)
    prompt_logprobs: bool = False  # also log pi(prompt token | the prompt before it); None for the first token
    ignore_eos: bool = False  # do not stop on end-of-sequence ids (benchmarks, fixed-length rollouts)
    # constrained decoding: an object whose start() gives each request a state with allowed(vocab_size) -> bool
    # mask of the tokens it may draw next, advance(token_id) and done; its end_ids also stop the request
    # (alignlab.tools.guided: a tool call that always fits its schema)
    guide: object | None = None
    # speculative decoding (infer/speculative.py): a smaller CausalLM over the same vocabulary guesses
    # num_speculative_tokens (1..16) tokens a round, this model checks them in one forward; same output distribution
    draft_model: object | None = None
    num_speculative_tokens: int = 0

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = [self.stop_token_ids]
        checks = [(self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
                  (self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (self.top_logprobs >= 0, "top_logprobs must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (all(self.stop), "stop strings must be non-empty"),
                  (self.draft_model is None or 1 <= self.num_speculative_tokens <= speculative.MAX_TOKENS,
                   f"num_speculative_tokens must be in 1..{speculative.MAX_TOKENS} with a draft_model"),
                  (self.draft_model is not None or self.num_speculative_tokens == 0,
                   "num_speculative_tokens needs a draft_model")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class Completion:
    """One request's result.

    token_ids: the generated tokens, including the token that stopped generation (eos / stop token).
    text: the decoded tokens (special tokens skipped) without the stop token or stop string; None
        without a tokenizer.
    logprobs: if requested, log pi(token | prefix) of each generated token under the model's own
        distribution: log_softmax of the raw logits, i.e. temperature 1 and no top-k/top-p/min-p/penalty,
        whatever the sampling settings were. This is the log-probability RL objectives need; it is not the
        probability of the (processed) distribution the token was drawn from.
    finish_reason: "stop" or "length" ("abort" for a request LLMEngine.abort cancelled).
    top_logprobs: if params.top_logprobs = k > 0, per generated token the k most likely tokens and their
        log-probabilities under the same raw distribution, {token id: log-prob}.
    prompt_logprobs: if params.prompt_logprobs, log pi(prompt[i] | prompt[:i]) for each prompt token, None for the
        first (nothing predicts it).
    """

    token_ids: list[int]
    text: str | None
    logprobs: list[float] | None
    finish_reason: str
    prompt_token_ids: list[int]
    top_logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[float | None] | None = None


class _Request:
    """A request's progress while it is in flight."""

    def __init__(self, prompt: list[int], params: SamplingParams, eos: set[int], stop_ids: set[int],
                 device: torch.device):
        self.prompt, self.params = prompt, params
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos) | stop_ids
        self.guide = None if params.guide is None else params.guide.start()
        if self.guide is not None:
            self.stop_ids |= set(params.guide.end_ids)
        seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[dict[int, float]] = []
        self.prompt_logprobs: list[float | None] | None = None
        self.text: str | None = None
        self.finish_reason: str | None = None


class _Batch:
    """The rows currently in the KV cache and their per-row tensors (rebuilt when the batch is compacted)."""

    def __init__(self, rows: list[_Request], mask: torch.Tensor | None, pos: torch.Tensor,
                 seen: torch.Tensor | None):
        self.rows, self.mask, self.pos, self.seen = rows, mask, pos, seen
        p = [r.params for r in rows]
        dev = pos.device
        self.logprobs = any(q.logprobs for q in p)
        self.top = max(q.top_logprobs for q in p)  # k of the row that wants the most
        self.top_logprobs: list[dict[int, float]] | None = None  # this step's, when some row wants them
        self.penalty = _param([q.repetition_penalty for q in p], 1.0, dev)
        self.sampled = [i for i, q in enumerate(p) if q.temperature > 0]
        s = [p[i] for i in self.sampled]
        self.sampled_idx = torch.tensor(self.sampled, dtype=torch.long, device=dev)
        self.generators = [rows[i].generator for i in self.sampled]
        self.temperature = _param([q.temperature for q in s], 1.0, dev)
        self.top_k = _param([q.top_k for q in s], 0, dev)
        self.top_p = _param([q.top_p for q in s], 1.0, dev)
        self.min_p = _param([q.min_p for q in s], 0.0, dev)

    def keep(self, idx: torch.Tensor) -> _Batch:
        mask = None if self.mask is None else self.mask[idx]
        if mask is not None and bool(mask.all()):
            mask = None  # the padded rows are gone
        seen = None if self.seen is None else self.seen[idx]
        return _Batch([self.rows[i] for i in idx.tolist()], mask, self.pos[idx], seen)


def completion(r: _Request) -> Completion:
    """A finished request's result, with the log-probs it asked for."""
    p = r.params
    return Completion(r.tokens, r.text, r.logprobs if p.logprobs else None, r.finish_reason, r.prompt,
                      r.top_logprobs if p.top_logprobs else None, r.prompt_logprobs if p.prompt_logprobs else None)


def top_logprobs(logits: torch.Tensor, k: int) -> list[dict[int, float]]:
    """Per row, the k most likely tokens under log_softmax(logits) [B, V] (raw logits), most likely first."""
    values, ids = logits.float().log_softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def _prompt_logprobs(rows: list[_Request], logits: torch.Tensor, where: list[int]):
    """log pi(prompt[i] | prompt[:i]) of the rows that ask, from the prefill's logits [distinct prompts, L, V] of
    left-padded prompts (row i's prompt is prompt number where[i])."""
    L = logits.shape[1]
    for r, j in zip(rows, where):
        if r.params.prompt_logprobs:
            P = len(r.prompt)
            lp = logits[j, L - P:L - 1].float().log_softmax(dim=-1)  # [P - 1, V]: position t predicts token t + 1
            target = torch.tensor(r.prompt[1:], device=lp.device)
            r.prompt_logprobs = [None] + lp.gather(1, target[:, None])[:, 0].tolist()


def _param(values: list, off, device):
    """None if every row has the neutral value, a number if all rows agree, else a tensor [rows]."""
    if all(v == off for v in values):
        return None
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, device=device)


class Engine:
    """Generates from a CausalLM; with a tokenizer, prompts may be strings and completions carry text."""

    def __init__(self, model, tokenizer=None):
        self.model, self.tokenizer = model, tokenizer
        eos = model.config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer is not None:
            eos += list(tokenizer.eos_token_ids or [])
        self.eos_token_ids = sorted(set(eos))
        self.device = next(model.parameters()).device
        self.packs = PackedWeights()
        self.speculative_stats = speculative.Stats()  # summed over the speculative requests this engine ran

    # --- public API ----------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]] | list[str],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[Completion]:
        """Complete every prompt; one SamplingParams for all, or one per prompt."""
        requests = self._requests(prompts, params)
        for _ in self._run(requests):
            pass
        return [completion(r) for r in requests]

    def stream(self, prompt: list[int] | str, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the completion's text piece by piece; the pieces concatenate to Completion.text.

        A piece is yielded only once it decodes cleanly: text ending in an incomplete UTF-8 sequence
        (U+FFFD) is held back, and so is a tail that could be the start of a stop string.
        """
        if self.tokenizer is None:
            raise ValueError("stream() needs a tokenizer")
        (req,) = self._requests([prompt], params)
        emitted = ""
        for _ in self._run([req]):
            if req.finish_reason is not None:
                break
            text = self._safe_prefix(self._decode(req.tokens), req.params.stop)
            if len(text) > len(emitted) and text.startswith(emitted):
                yield text[len(emitted):]
                emitted = text
        if req.text.startswith(emitted) and len(req.text) > len(emitted):
            yield req.text[len(emitted):]

    # --- setup ---------------------------------------------------------------------------------------

    def _requests(self, prompts, params) -> list[_Request]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("prompts must be a list of prompts (token-id lists or strings)")
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        vocab = self.model.config.vocab_size
        requests = []
        for prompt, p in zip(prompts, params):
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise ValueError("string prompts need a tokenizer")
                prompt = self.tokenizer.encode(prompt, add_special_tokens=True)
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise ValueError("empty prompt")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(f"prompt token ids must be in [0, {vocab})")
            if p.stop and self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer")
            if p.draft_model is not None:
                speculative.check(self.model, p)
            requests.append(_Request(prompt, p, set(self.eos_token_ids), self._stop_string_ids(p.stop),
                                     self.device))
        return requests

    # --- the loop ------------------------------------------------------------------------------------

    def _run(self, requests: list[_Request]) -> Iterator[None]:
        """Generate for all requests, yielding after each step (outside inference mode, for stream())."""
        if any(r.params.draft_model is not None for r in requests):  # speculative: each alone, first
            yield from speculative.generate(self, [r for r in requests if r.params.draft_model is not None],
                                            self.speculative_stats)
            requests = [r for r in requests if r.params.draft_model is None]
        for r in requests:
            if r.params.max_new_tokens == 0:
                self._finish(r, "length")
        live = [r for r in requests if r.finish_reason is None]
        if not live:
            return
        max_new = max(r.params.max_new_tokens for r in live)
        L = max(len(r.prompt) for r in live)
        c = self.model.config
        longest = max(len(r.prompt) + r.params.max_new_tokens for r in live)
        if c.pos == "learned" and longest - 1 > c.max_seq_len:  # the last token is never fed back
            raise ValueError(f"prompt + max_new_tokens exceeds the model's {c.max_seq_len} positions")
        cache = self.model.new_cache(len(live), L + max_new)
        packs = self.packs  # the weights laid out once for the CPU's products (model/linear.py)
        packs.new_generation()
        with torch.inference_mode():
            step = DecodeStep.plan(self.model, cache, packs)  # the flat one-token step, where it applies
        with packed_weights(packs):
            batch, logits = self._prefill(live, L, max_new, cache)  # 1
        while True:
            tokens, logprobs = self._choose(logits, batch)  # 2
            done = self._record(batch, tokens.tolist(), logprobs)
            yield
            if done == len(batch.rows):
                return
            if done >= max(1, COMPACT_FRACTION * len(batch.rows)):  # 3
                tokens, batch = self._compact(tokens, batch, cache)
            with packed_weights(packs):
                logits = self._decode_step(tokens, batch, cache, step)  # 4

    @torch.inference_mode()
    def _prefill(self, rows: list[_Request], L: int, max_new: int, cache):
        B, dev = len(rows), self.device
        ids = torch.zeros(B, L, dtype=torch.long)
        real = torch.zeros(B, L, dtype=torch.bool)
        for i, r in enumerate(rows):  # left padding: the prompt ends at column L - 1
            ids[i, L - len(r.prompt):] = torch.tensor(r.prompt)
            real[i, L - len(r.prompt):] = True
        ids, real = ids.to(dev), real.to(dev)
        mask = None
        if not bool(real.all()):  # one buffer for the whole generation; each step passes a view of it
            mask = torch.ones(B, L + max_new, dtype=torch.bool, device=dev)
            mask[:, :L] = real
        seen = None
        if any(r.params.repetition_penalty != 1.0 for r in rows):
            seen = S.seen_mask(ids, self.model.config.vocab_size, real)
        pos = real.sum(dim=1, keepdim=True)  # position of each row's first new token
        batch = _Batch(rows, mask, pos, seen)
        attn = None if mask is None else mask[:, :L]
        order: dict[tuple[int, ...], int] = {}  # each distinct prompt -> its number
        where = [order.setdefault(tuple(r.prompt), len(order)) for r in rows]
        last_only = not any(r.params.prompt_logprobs for r in rows)  # else every position's logits
        if len(order) == B:
            logits = self.model(ids, attention_mask=attn, cache=cache, last_only=last_only)
            _prompt_logprobs(rows, logits, where)
            return batch, logits[:, -1].float()
        # repeated prompts (n samples of one prompt, GRPO's groups): prefill each in its first row, copy that row
        once = [where.index(j) for j in range(len(order))]  # the first row of each distinct prompt
        logits = self.model(ids[once], attention_mask=None if attn is None else attn[once], cache=cache.rows(once),
                            last_only=last_only)
        _prompt_logprobs(rows, logits, where)
        others = [i for i in range(B) if once[where[i]] != i]
        cache.copy_rows([once[where[i]] for i in others], others)
        return batch, logits[torch.tensor(where, device=dev), -1].float()

    @torch.inference_mode()
    def _compact(self, tokens: torch.Tensor, batch: _Batch, cache):
        """Drop finished rows from the cache and the batch (one copy of the cache, cheaper steps after)."""
        keep = [i for i, r in enumerate(batch.rows) if r.finish_reason is None]
        cache.keep_rows(keep)
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        return tokens[idx], batch.keep(idx)

    @torch.inference_mode()
    def _decode_step(self, tokens: torch.Tensor, batch: _Batch, cache, step: DecodeStep | None = None) -> torch.Tensor:
        attn = None if batch.mask is None else batch.mask[:, :max(cache.lengths) + 1]
        pos = batch.pos
        if self.model.config.pos == "learned":  # finished rows run on past the table; their outputs are unused
            pos = pos.clamp(max=self.model.config.max_seq_len - 1)
        if step is not None and step.fits(cache):
            logits = step(tokens[:, None], pos, cache, attn)
        else:
            logits = self.model(tokens[:, None], attention_mask=attn, position_ids=pos, cache=cache)
        batch.pos += 1
        return logits[:, -1].float()

    @torch.inference_mode()
    def _choose(self, logits: torch.Tensor, b: _Batch):
        """The next token of every row, and its log-probability under the raw logits if any row wants it."""
        raw = logits
        if b.penalty is not None:
            logits = S.repetition_penalty(logits, b.seen, b.penalty)
        guided = [i for i, r in enumerate(b.rows) if r.guide is not None and r.finish_reason is None]
        if guided:  # constrained decoding: what the guide does not allow cannot be drawn
            logits = logits.clone() if logits is raw else logits
            for i in guided:
                allowed = b.rows[i].guide.allowed(logits.shape[-1]).to(logits.device)
                if not bool(allowed.any()):
                    raise ValueError("the guide allows no token here: the vocabulary cannot spell what it needs")
                logits[i].masked_fill_(~allowed, float("-inf"))
        if len(b.sampled) < len(b.rows):
            tokens = S.greedy(logits)
        if b.sampled:
            x = logits if len(b.sampled) == len(b.rows) else logits[b.sampled_idx]
            if b.temperature is not None:
                x = S.temperature(x, b.temperature)
            if b.top_k is not None:
                x = S.top_k(x, b.top_k)
            if b.top_p is not None:
                x = S.top_p(x, b.top_p)
            if b.min_p is not None:
                x = S.min_p(x, b.min_p)
            drawn = S.sample(x, b.generators)
            if len(b.sampled) == len(b.rows):
                tokens = drawn
            else:
                tokens[b.sampled_idx] = drawn
        if b.seen is not None:
            b.seen.scatter_(1, tokens[:, None], True)
        b.top_logprobs = top_logprobs(raw, b.top) if b.top else None
        return tokens, (S.token_logprobs(raw, tokens).tolist() if b.logprobs else None)

    def _record(self, batch: _Batch, tokens: list[int], logprobs: list[float] | None) -> int:
        """Append each live row's token, apply the stop rules; returns how many rows are finished."""
        done = 0
        for i, (r, t) in enumerate(zip(batch.rows, tokens)):
            if r.finish_reason is not None:
                done += 1
                continue
            r.tokens.append(t)
            if r.guide is not None and t not in r.stop_ids:
                r.guide.advance(t)
            if logprobs is not None:
                r.logprobs.append(logprobs[i])
            if batch.top_logprobs is not None and r.params.top_logprobs:
                r.top_logprobs.append(dict(list(batch.top_logprobs[i].items())[:r.params.top_logprobs]))
            if t in r.stop_ids:
                self._finish(r, "stop", drop_last=True)
            elif r.params.stop and self._stop_string(r):
                self._finish(r, "stop")
            elif len(r.tokens) >= r.params.max_new_tokens:
                self._finish(r, "length")
            done += r.finish_reason is not None
        return done

    # --- text ----------------------------------------------------------------------------------------

    def _stop_string_ids(self, stops: list[str]) -> set[int]:
        """Ids of the stop strings that are one token (e.g. "<|im_end|>"): the decoded text skips special
        tokens, so those only match as ids. They stay stop strings too (a string may also span tokens)."""
        to_id = getattr(self.tokenizer, "token_to_id", None)
        ids = [to_id(s) for s in stops] if to_id is not None else []
        return {i for i in ids if i is not None}

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _stop_string(self, r: _Request) -> bool:
        """If a stop string occurs in the text so far, cut the text before its first occurrence."""
        text = self._decode(r.tokens)
        hits = [i for i in (text.find(s) for s in r.params.stop) if i >= 0]
        if hits:
            r.text = text[:min(hits)]
        return bool(hits)

    def _finish(self, r: _Request, reason: str, drop_last: bool = False):
        r.finish_reason = reason
        if self.tokenizer is not None and r.text is None:
            r.text = self._decode(r.tokens[:-1] if drop_last else r.tokens)

    @staticmethod
    def _safe_prefix(text: str, stops: list[str]) -> str:
        """text without a trailing incomplete UTF-8 sequence or a tail that may begin a stop string."""
        text = text.rstrip("\ufffd")
        hold = max((n for s in stops for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])),
                   default=0)
        return text[:len(text) - hold]
