"""Speculative decoding: a small draft model guesses k tokens, the target model checks all of them in one forward.

    1. prefill: the target's and the draft's KV caches take the prompt but its last token x
    2. draft:   d_1 ~ q_1, ..., d_k ~ q_k from the draft, one token per forward (the draft's own KV cache)
    3. verify:  one target forward over [x, d_1, ..., d_k]: its k + 1 rows are p_1, ..., p_{k+1}
    4. accept:  `accept` (sampling) or `accept_greedy` (temperature 0): the first j guesses, then one token y
    5. emit d_1..d_j, y one at a time through the engine's stop rules; roll both caches back to the tokens that
       stay (KVCache.truncate); y is the new x; back to 2

A round costs k draft forwards and one target forward over k + 1 tokens, and yields between 1 and k + 1 tokens,
distributed exactly as the target's own sampling would give them (Leviathan et al. 2023, arXiv:2211.17192; Chen
et al. 2023, arXiv:2302.01318; the argument is in `accept`'s docstring). p_i and q_i are the *processed*
distributions: temperature, top-k, top-p and min-p of sampling.py applied in the engine's order to both models'
logits (`processed`), so the tokens follow the target's sampling distribution with those settings. Greedy
(temperature 0) gives the target's greedy tokens: only its argmaxes decide (`accept_greedy`). They are computed
by a (k + 1)-token forward rather than one-token steps: the same tokens in fp32; in bf16, where a change of shape
changes the rounding, a near tie between two tokens may go the other way, as it may between two batch sizes.

Batch size 1: each request runs alone, one after another. That is the classic setting (the papers' and the
usual latency case): the rows of a batch would accept different numbers of guesses, so their caches would
part and every round would wait for the slowest row. The caches are rolled back, never copied: the keys of the
rejected guesses stay in their slots until the next forward overwrites them.

Near the end a round guesses k' = min(k, tokens still wanted - 1) tokens, so nothing is computed past
max_new_tokens (the request's last token comes from the target alone, k' = 0). Stops (end of sequence,
stop_token_ids, stop strings, max_new_tokens) are the engine's own rules (Engine._record), applied token by
token, so nothing after a stop is emitted even when the target accepted more. Log-probs, when asked for, are the
target's: log_softmax of its raw logits row that predicted the token, as Completion.logprobs always are.

Randomness: every draw (the draft's guesses, the acceptance tests, the residual and bonus tokens) uses the
request's torch.Generator, seeded from SamplingParams.seed, so a seed reproduces a speculative run; it does not
reproduce the plain engine's tokens, which consume the generator differently (the distribution is the same).

Not supported (a ValueError from `check`, rather than a silently different output): guide, repetition_penalty,
top_logprobs, prompt_logprobs. `Stats` counts the guesses, the accepted ones and the forwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from alignlab.infer import sampling as S
from alignlab.model.decode import DecodeStep
from alignlab.model.linear import packed_weights

MAX_TOKENS = 16  # the most guesses a round may make (SamplingParams.num_speculative_tokens)


@dataclass
class Stats:
    """Counters over speculative requests (Engine.speculative_stats sums them over the engine's life)."""

    requests: int = 0
    proposed: int = 0  # the draft's guesses
    accepted: int = 0  # the guesses the target kept
    target_forwards: int = 0  # verification forwards, one per round (the prefills are not counted)
    draft_forwards: int = 0
    tokens: int = 0  # tokens emitted

    @property
    def acceptance_rate(self) -> float:
        """alpha-hat = accepted / proposed."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_target_forward(self) -> float:
        """Tokens emitted per verification forward: accepted guesses + the corrected or bonus token."""
        return self.tokens / self.target_forwards if self.target_forwards else float("nan")

    @property
    def accepted_per_target_forward(self) -> float:
        return self.accepted / self.target_forwards if self.target_forwards else float("nan")

    def as_dict(self) -> dict:
        return {"requests": self.requests, "proposed": self.proposed, "accepted": self.accepted,
                "acceptance_rate": self.acceptance_rate, "target_forwards": self.target_forwards,
                "draft_forwards": self.draft_forwards, "tokens": self.tokens,
                "tokens_per_target_forward": self.tokens_per_target_forward}


# --- the rule: pure functions ----------------------------------------------------------------------------------------

def processed(logits: torch.Tensor, params) -> torch.Tensor:
    """The logits [T, V] as the engine samples from them: temperature -> top-k -> top-p -> min-p (sampling.py),
    in fp32; softmax of the result is the distribution a token is drawn from. Both models go through this, so
    q_i and p_i are what each model would sample with these settings."""
    x = S.temperature(logits.float(), params.temperature)
    x = S.top_k(x, params.top_k)
    x = S.top_p(x, params.top_p)
    return S.min_p(x, params.min_p)


def accept(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Algorithm 2).

    tokens [k]: the draft's guesses, x_i drawn from q_i; q [k, V]: the draft's distributions; p [k + 1, V]: the
    target's, p_i over the same prefix as q_i and p_{k+1} after all k guesses. For i = 1..k, in order:

        accept x_i with probability min(1, p_i(x_i) / q_i(x_i))     (u_i ~ U[0, 1): iff u_i q_i(x_i) < p_i(x_i))
        at the first rejection:  y ~ norm(max(0, p_i - q_i)), and stop
        all k accepted:          y ~ p_{k+1}                        (the bonus token)

    Returns (j, y): the first j guesses stay, then y. Why the emitted token at step i is distributed as p_i: v comes
    out accepted with probability q_i(v) min(1, p_i(v) / q_i(v)) = min(q_i(v), p_i(v)); a rejection happens with
    probability sum_u (q_i(u) - min(q_i(u), p_i(u))) = sum_u max(0, p_i(u) - q_i(u)) = Z (both sum to 1), and then
    gives v with probability max(0, p_i(v) - q_i(v)) / Z; in all min(q_i(v), p_i(v)) + max(0, p_i(v) - q_i(v)) =
    p_i(v). Given that x_i was accepted, the next step starts from the prefix the target would have drawn, so by
    induction every emitted token follows the target.
    """
    k = tokens.shape[0]
    rows = torch.arange(k, device=tokens.device)
    p_x, q_x = p[rows, tokens], q[rows, tokens]  # [k]: each guess's probability under both models
    u = torch.rand(k, generator=generator, device=p.device)
    keep = u * q_x < p_x  # [k]: u < p / q, without dividing
    j = k if bool(keep.all()) else int((~keep).int().argmax())  # guesses before the first rejection
    if j == k:
        return k, int(S.sample(p[k].log()[None], [generator])[0])  # the bonus token
    residual = (p[j] - q[j]).clamp(min=0)  # [V]; a rejection implies some p_j(v) > q_j(v)
    if not bool(residual.sum() > 0):  # only rounding can get here: p_j = q_j
        residual = p[j]
    return j, int(S.sample(residual.log()[None], [generator])[0])


def accept_greedy(tokens: torch.Tensor, logits: torch.Tensor) -> tuple[int, int]:
    """Greedy (temperature 0): with y_i = argmax_v p_i(v) the target's choice after the first i - 1 guesses,

        accept x_i while x_i = y_i;   at the first x_j+1 != y_j+1 (or after all k): emit y_{j+1}

    so the tokens are exactly the target's greedy tokens. tokens [k], logits [k + 1, V] (the target's rows).
    Returns (j, y_{j+1})."""
    k = tokens.shape[0]
    best = logits.argmax(dim=-1)  # [k + 1]
    same = tokens == best[:k]  # [k]
    j = k if bool(same.all()) else int((~same).int().argmax())
    return j, int(best[j])


def check(model, params) -> None:
    """ValueError where speculative decoding cannot serve `params` (which carry a draft_model) for `model`."""
    off = [name for name, on in (("guide", params.guide is not None),
                                 ("repetition_penalty", params.repetition_penalty != 1.0),
                                 ("top_logprobs", params.top_logprobs > 0),
                                 ("prompt_logprobs", params.prompt_logprobs)) if on]
    if off:
        raise ValueError(f"{', '.join(off)}: not supported with speculative decoding (draft_model)")
    draft = params.draft_model
    vocab = getattr(getattr(draft, "config", None), "vocab_size", None)
    if vocab is None or not callable(getattr(draft, "new_cache", None)):
        raise ValueError("draft_model must be a CausalLM (alignlab.model.hf.load_model)")
    if vocab != model.config.vocab_size:
        raise ValueError(f"draft_model's vocab_size {vocab} differs from the target's {model.config.vocab_size}: "
                         "the draft must share the target's tokenizer")
    where, here = next(draft.parameters()).device, next(model.parameters()).device
    if where != here:
        raise ValueError(f"draft_model is on {where}, the target on {here}")


# --- the loop --------------------------------------------------------------------------------------------------------

class _OneRow:
    """A one-request stand-in for the engine's batch, so Engine._record applies its stop rules to each token."""

    def __init__(self, request):
        self.rows, self.top_logprobs = [request], None


def generate(engine, requests: list, stats: Stats) -> Iterator[None]:
    """Run the engine's requests (engine._Request, params with a draft_model) one after another, yielding after
    each round (for Engine.stream); counts into `stats`."""
    for r in requests:
        yield from _generate_one(engine, r, stats)


def _generate_one(engine, r, stats: Stats) -> Iterator[None]:
    p, target, draft = r.params, engine.model, r.params.draft_model
    if p.max_new_tokens == 0:
        engine._finish(r, "length")
        return
    P, new = len(r.prompt), p.max_new_tokens
    for m in (target, draft):
        if m.config.pos == "learned" and P + new - 1 > m.config.max_seq_len:  # the last token is never fed back
            raise ValueError(f"prompt + max_new_tokens exceeds the model's {m.config.max_seq_len} positions")
    stats.requests += 1
    # each cache holds at most the sequence but its last token, plus k' - 1 guesses: k' < tokens still wanted
    tcache, dcache = target.new_cache(1, P + new), draft.new_cache(1, P + new)
    packs = engine.packs  # keyed by layer: one store lays out both models' weights
    packs.new_generation()
    with torch.inference_mode():
        step = DecodeStep.plan(draft, dcache, packs)  # the draft's one-token forwards, where it applies
    seq = list(r.prompt)
    one = _OneRow(r)
    with packed_weights(packs):
        _prefill(target, draft, seq, tcache, dcache, engine.device)  # 1
    while r.finish_reason is None:
        k = min(p.num_speculative_tokens, new - len(r.tokens) - 1)
        with packed_weights(packs):
            tokens, logprobs = _round(target, draft, step, r, seq, tcache, dcache, k, stats, engine.device)  # 2-4
        for i, t in enumerate(tokens):  # 5
            engine._record(one, [t], None if logprobs is None else [logprobs[i]])
            seq.append(t)
            stats.tokens += 1
            if r.finish_reason is not None:
                break
        yield


@torch.inference_mode()
def _prefill(target, draft, seq: list[int], tcache, dcache, device):
    """Both caches take the prompt but its last token (that one goes in with the first round's guesses)."""
    if len(seq) > 1:
        ids = torch.tensor([seq[:-1]], device=device)  # [1, P - 1]
        target(ids, cache=tcache, last_only=True)
        draft(ids, cache=dcache, last_only=True)


@torch.inference_mode()
def _round(target, draft, step, r, seq: list[int], tcache, dcache, k: int, stats: Stats, device):
    """One round: k guesses, one verification, the acceptance; returns the tokens to emit (j + 1 of them) and
    their log-probs under the target's raw logits (None unless asked for). Rolls both caches back."""
    p, greedy = r.params, r.params.temperature == 0
    guesses, qs = [], []
    pending = seq[dcache.lengths[0]:]  # what the draft has not seen: x, and after an all-accepted round d_k too
    for _ in range(k):  # 2
        n = dcache.lengths[0]
        ids = torch.tensor([pending], device=device)  # [1, T]
        if len(pending) == 1 and step is not None and step.fits(dcache):
            logits = step(ids, torch.tensor([[n]], device=device), dcache)
        else:
            logits = draft(ids, cache=dcache, last_only=True)
        x = logits[0, -1].float()[None]  # [1, V]
        if greedy:
            guess = int(x.argmax())
        else:
            x = processed(x, p)
            qs.append(x.softmax(dim=-1)[0])  # q_i [V]
            guess = int(S.sample(x, [r.generator])[0])
        guesses.append(guess)
        pending = [guess]
    stats.draft_forwards += k
    ids = torch.tensor([[seq[-1], *guesses]], device=device)  # 3: [1, k + 1]
    logits = target(ids, cache=tcache)[0].float()  # [k + 1, V]: row i predicts the token after guess i
    stats.target_forwards += 1
    tokens = torch.tensor(guesses, dtype=torch.long, device=device)  # [k]
    if greedy:  # 4
        j, y = accept_greedy(tokens, logits)
    else:
        V = logits.shape[-1]
        q = torch.stack(qs) if qs else logits.new_zeros(0, V)  # [k, V]
        j, y = accept(tokens, q, processed(logits, p).softmax(dim=-1), r.generator)
    stats.proposed += k
    stats.accepted += j
    n = len(seq)
    tcache.truncate(n + j)  # the sequence but its new last token y: seq[:-1], x, d_1..d_j
    dcache.truncate(min(dcache.lengths[0], n + j))
    out = guesses[:j] + [y]
    logprobs = None
    if p.logprobs:
        logprobs = S.token_logprobs(logits[:j + 1], torch.tensor(out, device=device)).tolist()
    return out, logprobs
