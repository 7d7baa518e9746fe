"""Rollouts: G completions of every prompt from the current policy, and their per-token log-probs.

    rollout = generate_rollouts(model, tokenizer, prompt_ids, num_generations=8, params=SamplingParams(...),
                                seeds=[...], pad_id=pad)
    logps, entropy = completion_logps(model, rollout.input_ids, rollout.prompt_lens, rollout.completion_ids,
                                      rollout.completion_mask, temperature=1.0, entropy=True)

1. generate   every prompt is repeated G times next to itself (trl's repeat_interleave order: rows i*G .. i*G+G-1
              answer prompt i), and all B*G requests go to one engine call, each request drawing from its own
              seeded generator (so a completion does not depend on its neighbours or on the engine, and a resumed
              run redraws the same ones). The model is in eval mode under no_grad; the weights are the policy's
              own (no copy). engine="static": `alignlab.infer.Engine`, one padded prefill of all B*G rows, then
              one batched decode step per token. engine="paged": `alignlab.infer.LLMEngine` over a paged KV cache,
              where the G requests of a prompt share its blocks (the prompt runs once, its followers fork its
              block table) and finished rows leave the batch; a fresh engine per call, since the weights change
              between rollouts and cached blocks would hold the old policy's keys and values.
2. tensors    sequence = prompt + completion, right-padded: input_ids [N, T] needs no attention mask (attention
              is causal, so padding at the end changes nothing before it). completion_ids [N, C] and
              completion_mask [N, C]: 1 on every generated token up to and including the end-of-sequence token
              that stopped it (trl's mask: EOS is trained, so the model learns to stop), 0 after.
              truncated [N]: the completion hit max_new_tokens without an EOS (finish_reason "length").
3. log-probs  `completion_logps`: log pi(o_t | x, o_<t) of every completion token from ONE forward of the whole
              sequence (the training path, with gradients when enabled), the head applied only to completion
              positions and a chunk of rows at a time (activation checkpointing), so the [N, T, V] logits are
              never held -- a 150k vocabulary times G long completions would not fit. Logits are divided by
              the sampling temperature first, as trl does, so the ratio is against the distribution sampled.
              The engine can return log-probs too, but of the raw logits (temperature 1) and from the cached
              decode path; GRPO recomputes pi_old with this function when it needs it (num_iterations > 1),
              as trl does without vLLM.
              Given `prompt_index`, rows that answer the same prompt (consecutive rows with the same index) share
              it: the prompt runs once and its keys and values serve the group's rows (CausalLM.forward with a
              shared_prefix), the same log-probs and gradients for about B*P + N*C tokens instead of N*(P + C).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from alignlab.infer import Completion, Engine, LLMEngine, SamplingParams
from alignlab.model.kv_cache import SharedPrefix
from alignlab.objectives.logprobs import chunked_token_logps
from alignlab.train.trainer import unwrap


@dataclass
class Rollout:
    """N = B * G completions, the G of a prompt next to each other."""

    input_ids: torch.Tensor  # [N, T] prompt + completion, right-padded with pad_id
    prompt_lens: torch.Tensor  # [N] prompt tokens of each row: completion token j sits at prompt_len + j
    completion_ids: torch.Tensor  # [N, C] generated tokens (EOS included when it stopped), pad after
    completion_mask: torch.Tensor  # [N, C] 1.0 on generated tokens
    truncated: torch.Tensor  # bool [N]: ended by the length limit, not by EOS
    prompt_index: torch.Tensor  # [N] the prompt each completion answers (0 .. B-1)
    texts: list[str] = field(default_factory=list)  # decoded completions (special tokens and the stop token dropped)
    seconds: float = 0.0  # generation time

    @property
    def num_tokens(self) -> int:
        """Generated tokens."""
        return int(self.completion_mask.sum())

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "prompt_lens": self.prompt_lens, "completion_ids": self.completion_ids,
                "completion_mask": self.completion_mask, "truncated": self.truncated,
                "prompt_index": self.prompt_index}


ENGINES = ("static", "paged")


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompt_ids: list[list[int]], num_generations: int, params: SamplingParams,
                      seeds: list[int], pad_id: int, autocast=None, engine: str = "static") -> Rollout:
    """G = num_generations completions of each prompt (token ids), sampled with `params` in one batched engine call.

    seeds: one per completion (len B * G), in the rows' order; params.seed is ignored. autocast: a context manager
    to generate under (bf16 on CUDA), or None. engine: static | paged (the module docstring); the same seeds give
    the same tokens on both.
    """
    G = num_generations
    if len(seeds) != len(prompt_ids) * G:
        raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts x {G} generations")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    repeated = [ids for ids in prompt_ids for _ in range(G)]
    requests = [SamplingParams(**{**params.__dict__, "seed": int(s)}) for s in seeds]
    try:
        with autocast or contextlib.nullcontext():
            if engine == "static":
                outs = Engine(model, tokenizer).generate(repeated, requests)
            else:
                outs = paged_engine(model, tokenizer, prompt_ids, G, params).generate(repeated, requests)
    finally:
        model.train(was_training)
    device = next(model.parameters()).device
    return make_rollout(repeated, outs, G, pad_id, device, time.perf_counter() - start)


def paged_engine(model, tokenizer, prompt_ids: list[list[int]], G: int, params: SamplingParams) -> LLMEngine:
    """An LLMEngine sized for one rollout batch: all B*G rows at once, every prompt prefilled in one step, and
    blocks for each prompt once plus each row's completion (and the copy of a shared last prompt block it writes
    into), so nothing is preempted. No prefix cache: the next rollout runs other weights."""
    bs = 16
    blocks = sum(-(-len(p) // bs) + G * (-(-params.max_new_tokens // bs) + 1) for p in prompt_ids)
    return LLMEngine(model, tokenizer, block_size=bs, num_blocks=blocks, max_num_seqs=len(prompt_ids) * G,
                     max_num_batched_tokens=max(512, sum(map(len, prompt_ids)) + len(prompt_ids) * G),
                     enable_prefix_caching=False)


def make_rollout(prompts: list[list[int]], outs: list[Completion], G: int, pad_id: int, device: torch.device,
                 seconds: float) -> Rollout:
    """The Rollout of N = B * G completions `outs` of `prompts` (one per row, the G of a prompt next to each other):
    token ids, text and finish reason ("length": truncated) are what is read."""
    N = len(outs)
    C = max(1, max(len(o.token_ids) for o in outs))
    T = max(len(p) + len(o.token_ids) for p, o in zip(prompts, outs))
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    completion_ids = torch.full((N, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(N, C)
    for i, (p, o) in enumerate(zip(prompts, outs)):
        seq = p + o.token_ids
        input_ids[i, :len(seq)] = torch.tensor(seq)
        if o.token_ids:
            completion_ids[i, :len(o.token_ids)] = torch.tensor(o.token_ids)
            completion_mask[i, :len(o.token_ids)] = 1.0
    return Rollout(input_ids=input_ids.to(device), prompt_lens=torch.tensor([len(p) for p in prompts], device=device),
                   completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
                   truncated=torch.tensor([o.finish_reason == "length" for o in outs], device=device),
                   prompt_index=torch.arange(N // G, device=device).repeat_interleave(G),
                   texts=[o.text or "" for o in outs], seconds=seconds)


def prompt_groups(prompt_index: torch.Tensor | None) -> torch.Tensor | None:
    """The sizes of the runs of consecutive rows with the same prompt_index ([N] -> [groups]), or None when no
    two neighbouring rows share a prompt (nothing to share: the plain forward is cheaper)."""
    if prompt_index is None or prompt_index.numel() == 0:
        return None
    _, sizes = torch.unique_consecutive(prompt_index, return_counts=True)
    return sizes if len(sizes) < len(prompt_index) else None


def _shared_prompt_hidden(model, input_ids: torch.Tensor, prompt_lens: torch.Tensor, completion_ids: torch.Tensor,
                          group_sizes: torch.Tensor) -> torch.Tensor:
    """[N, C, D]: the hidden states that predict each completion token, each group's prompt computed once (the
    model's shared-prefix forward). The prompts are read from the group's first row, left-padded to end together;
    completion token j is predicted by the prompt's last position (j = 0) or by completion token j - 1."""
    first = group_sizes.cumsum(0) - group_sizes  # each group's first row
    lens = prompt_lens[first]
    group_of_row = torch.arange(len(group_sizes), device=input_ids.device).repeat_interleave(group_sizes)
    in_prompt = torch.arange(input_ids.shape[1], device=input_ids.device) < prompt_lens[:, None]
    differs = (input_ids != input_ids[first][group_of_row]) & in_prompt
    if bool((prompt_lens != lens[group_of_row]).any() | differs.any()):
        raise ValueError("prompt_index: rows of a group do not hold the same prompt")
    P = int(lens.max())
    # left padding: token t of prompt i goes to slot P - len_i + t
    src = torch.arange(P, device=input_ids.device) - (P - lens)[:, None]  # [B, P]
    prompt_mask = src >= 0
    prompts = torch.where(prompt_mask, input_ids[first].gather(1, src.clamp(min=0)), 0)
    return model(prompts, prompt_mask.long(), head=False,
                 shared_prefix=SharedPrefix(completion_ids[:, :-1], group_sizes))


def completion_logps(model, input_ids: torch.Tensor, prompt_lens: torch.Tensor, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float = 1.0, entropy: bool = False,
                     chunk: int | None = None, prompt_index: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log pi(o_t | x, o_<t) of the completions [N, C] (0 where the mask is 0), and their entropies
    (nats, no gradient) when `entropy`.

    One forward of input_ids [N, T] for the final hidden states; the hidden state at position prompt_len + j - 1
    predicts completion token j. The head (model.lm_head, through `unwrap`) is applied to the masked positions
    only, `chunk` rows at a time; with gradients on and more than one chunk, each chunk under activation
    checkpointing (its logits are recomputed in the backward instead of kept).

    prompt_index [N] (Rollout.prompt_index): consecutive rows with the same index answer the same prompt, which
    is then computed once for all of them (`_shared_prompt_hidden`); the result is the same. A group may be cut
    (a micro-batch that starts or ends inside it): it is shared by the rows present. Without it, or when no two
    neighbouring rows share a prompt, the plain forward of input_ids.
    """
    N, C = completion_ids.shape
    rows = completion_mask.reshape(-1).nonzero().squeeze(1)
    group_sizes = prompt_groups(prompt_index)
    if group_sizes is not None:
        hidden = _shared_prompt_hidden(model, input_ids, prompt_lens, completion_ids, group_sizes)  # [N, C, D]
        h = hidden.reshape(N * C, -1)[rows]
    else:
        hidden = model(input_ids, head=False)  # [N, T, D]
        T, D = hidden.shape[1], hidden.shape[2]
        pos = (prompt_lens[:, None] - 1 + torch.arange(C, device=hidden.device)).clamp(max=T - 1)  # [N, C]
        h = hidden.gather(1, pos[..., None].expand(N, C, D)).reshape(N * C, D)[rows]
    y = completion_ids.reshape(-1)[rows]
    weight = unwrap(model).lm_head.weight
    logps, entropies = chunked_token_logps(h, weight, y, temperature, entropy, chunk)
    flat = hidden.new_zeros(N * C, dtype=torch.float32).index_put((rows,), logps)
    ent = None
    if entropy:
        ent = torch.zeros(N * C, device=hidden.device).index_put((rows,), entropies).view(N, C)
    return flat.view(N, C), ent


@torch.no_grad()
def rollout_logps(model, rollout: Rollout | dict, temperature: float, micro_batch: int, autocast=None) -> torch.Tensor:
    """completion_logps of a whole rollout without gradients, micro_batch rows at a time, in eval mode (pi_old,
    pi_ref), each prompt computed once per group when the rollout has its prompt_index. Returns [N, C]."""
    t = rollout.tensors() if isinstance(rollout, Rollout) else rollout
    was_training = model.training
    model.eval()
    out, index = [], t.get("prompt_index")
    try:
        with autocast or contextlib.nullcontext():
            for s in range(0, t["input_ids"].shape[0], micro_batch):
                sl = slice(s, s + micro_batch)
                lp, _ = completion_logps(model, t["input_ids"][sl], t["prompt_lens"][sl], t["completion_ids"][sl],
                                         t["completion_mask"][sl], temperature,
                                         prompt_index=None if index is None else index[sl])
                out.append(lp)
    finally:
        model.train(was_training)
    return torch.cat(out)
