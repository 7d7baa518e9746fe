"""One rollout batch of on-policy RL, in order: prompts -> generate -> score -> log-probs -> advantages.

    prompts = load_prompt_sets(cfg.rollout, tokenizer, recipe="grpo")       # the task, its prompts, held-out ones
    batch = collect_rollouts(policy, tokenizer, prompts, indices, cfg.rollout, rewards, reference, seeds, pad_id,
                             need_old_logps=False, advantages=my_rule)
    batch.tensors -> {"input_ids", "prompt_lens", "completion_ids", "completion_mask", "truncated", "prompt_index",
                      "old_logps"?, "ref_logps"?, + what `advantages` returned: "advantages", "loss_mask", ...}

1. prompts      the records at `indices` (B of them), their token ids
2. generate     G = num_generations completions of each from the current policy, all B*G in ONE batched engine
                call with the KV cache (rl/rollout.py), one seed per completion; or, with rollout.backend=server,
                from an OpenAI-compatible server the policy's LoRA adapter was just pushed to (rl/remote.py)
3. score        every reward function on every completion through the RewardRunner: failures are counted and
                give None; the weighted total is NaN where every part is None (trl's rule)
4. log-probs    without gradients, `logp_batch` rows at a time: pi_old (the sampling policy, when the recipe needs
                it) and pi_ref (when there is a reference), each prompt computed once per group
5. advantages   the recipe's rule, advantages(scores [N], tensors) -> (tensors to add, metrics to add):
                GRPO's group-normalised rewards, RLOO's leave-one-out baseline, PPO's GAE on a critic

RolloutConfig is the `rollout:` block every RL recipe's config shares (GRPO, RLOO, PPO).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignlab.errors import ConfigError
from alignlab.infer import SamplingParams
from alignlab.objectives.rl import zero_variance_groups
from alignlab.rewards import RewardRunner
from alignlab.rewards.prm import check_prm_model
from alignlab.rl.rollout import ENGINES, Rollout, generate_rollouts, rollout_logps
from alignlab.tasks import Task, default_val_source, load_source, task_for
from alignlab.train.reference import Reference


@dataclass
class RolloutConfig:
    """Where prompts come from, how completions are sampled and scored (alignlab/tasks/sources.py for `data`)."""

    data: str = "tinyworld:rl"  # prompts: tinyworld:rl[:LEVELS][:SPLIT][@SEED], gsm8k[:SPLIT], a file, hf:NAME
    val_data: str = ""  # held-out prompts for accuracy; empty: derived from data (TinyWorld / GSM8K test split)
    num_generations: int = 8  # G, completions per prompt
    prompts_per_step: int = 8  # B, prompts per rollout batch: B * G completions
    max_prompts: int = 0  # use only the first N prompts of data (0: all)
    max_prompt_len: int = 256  # longer prompts are dropped (counted)
    max_completion_length: int = 256  # trl's default: 512 on main, 256 through v1.9
    temperature: float = 1.0  # sampling; the log-probs divide the logits by it too (trl)
    top_p: float = 1.0
    top_k: int = 0
    reward_funcs: dict[str, float] = field(default_factory=lambda: {"format": 1.0, "correctness": 1.0})
    reward_timeout_s: float = 10.0  # one call of one reward function; then it counts as timed out (None)
    reward_isolation: str = "thread"  # thread | process (alignlab/rewards/guard.py)
    reward_memory_mb: float | None = None  # a reward call's memory limit (process isolation; None: the default)
    allow_custom_rewards: bool = False  # module:function rewards import and run code named in the config
    prm_model: str = ""  # the `prm` reward's process reward model: alignlab prm train's <out_dir>/model
    eval_prompts: int = 64  # held-out prompts answered greedily at each evaluation (0: no held-out accuracy)
    eval_max_tokens: int = 0  # new tokens a held-out answer may take (0: max_completion_length)
    logp_batch: int = 64  # rows per no-grad forward for pi_old / pi_ref (and PPO's values)
    # where the completions come from: local (this process, rl/rollout.py) | server (an OpenAI-compatible server,
    # rl/remote.py: the LoRA policy is pushed to it every rollout batch; grpo/rloo with method=lora only)
    backend: str = "local"
    # local: static (Engine) | paged (LLMEngine: the G rows share their prompt's blocks). The same seeds give the
    # same tokens on both. static is the default because it was faster on a 2-core AVX-512 CPU (loaded machine):
    # generate_rollouts alone on bench_grpo.py's 5M model, 4 prompts x 8 x 64 tokens, best of 5 interleaved runs:
    # bf16 5.6 s vs 6.6 s (CPU time 4.5 vs 4.8 s), fp32 2.8 vs 3.2 s
    engine: str = "static"
    server_url: str = ""  # server: the API's base URL, e.g. http://127.0.0.1:8000/v1
    server_model: str = ""  # server: the served base model's name (the policy's starting model)
    server_api_key: str | None = None  # server: sent as "Authorization: Bearer KEY" (load/unload need an admin key)
    server_adapter_dir: str = ""  # server: where each step's adapter is written, a directory the server can read
    #                               (its lora_path); empty: a temporary directory on this machine

    def check(self, method: str | None = None) -> None:
        """method: the recipe's (full | lora) where the recipe can roll out through a server; None where it
        cannot (PPO)."""
        if self.backend not in ("local", "server"):
            raise ConfigError(f"rollout.backend must be local or server, got {self.backend!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"rollout.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.backend == "server":
            if method is None:
                raise ConfigError("rollout.backend=server: this recipe rolls out locally only (grpo and rloo with "
                                  "method=lora can use a server)")
            if method != "lora":
                raise ConfigError(f"rollout.backend=server pushes the policy to the server as a LoRA adapter each "
                                  f"step, so it needs method=lora (got method={method}); pushing full weights is "
                                  "not supported")
            if not self.server_url.startswith(("http://", "https://")):
                raise ConfigError(f"rollout.server_url must be the server's http(s) base URL (e.g. "
                                  f"http://127.0.0.1:8000/v1), got {self.server_url!r}")
            if not self.server_model:
                raise ConfigError("rollout.server_model: the name the server serves the base model under is not set")
        if self.num_generations < 1 or self.prompts_per_step < 1:
            raise ConfigError("rollout.num_generations and rollout.prompts_per_step must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0: RL samples (and divides the logits by it)")
        check_prm_model(self.reward_funcs, self.prm_model)
        if "prm" in self.reward_funcs and self.reward_isolation == "process":
            raise ConfigError("reward_funcs prm runs a model: use rollout.reward_isolation=thread (a forked process "
                              "cannot use the GPU, and would load the model again on every call)")
        if self.eval_max_tokens < 0:
            raise ConfigError(f"rollout.eval_max_tokens must be >= 0 (0: max_completion_length), got "
                              f"{self.eval_max_tokens}")
        if self.reward_isolation not in ("thread", "process"):
            raise ConfigError(f"rollout.reward_isolation must be thread or process, got {self.reward_isolation!r}")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_completion_length, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k)

    def eval_tokens(self) -> int:
        """New tokens a held-out answer may take: eval_max_tokens, else the rollouts' max_completion_length."""
        return self.eval_max_tokens or self.max_completion_length


# ----------------------------------------------------------------------------------------------------------------
# 1. Prompts


@dataclass
class PromptSet:
    """The training prompts that fit (records and token ids), the task that checks replies, held-out prompts."""

    task: Task
    records: list[dict]
    ids: list[list[int]]
    val_records: list[dict]


def prompt_token_ids(tok, record: dict) -> list[int]:
    """A record's prompt as token ids: chat-templated (with its tools) for messages, encoded for text."""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return tok.encode(prompt, add_special_tokens=True)
    return tok.apply_chat_template(prompt, tools=record.get("tools") or None, add_generation_prompt=True,
                                   tokenize=True)


def tokenize_prompts(tok, records: list[dict], max_prompt_len: int, source: str,
                     recipe: str = "grpo") -> tuple[list[dict], list[list[int]]]:
    """Every prompt as token ids; prompts longer than max_prompt_len are dropped and counted (a chat prompt cut
    short is not the question any more). `recipe` names the run in the message."""
    kept, ids = [], []
    for r in records:
        p = prompt_token_ids(tok, r)
        if len(p) <= max_prompt_len:
            kept.append(r)
            ids.append(p)
    if len(kept) < len(records):
        print(f"{recipe} data: {len(records) - len(kept)} of {len(records)} prompts of {source} are longer than "
              f"max_prompt_len={max_prompt_len} tokens and were dropped")
    if not kept:
        raise ConfigError(f"{source}: no prompt fits rollout.max_prompt_len={max_prompt_len}")
    return kept, ids


def load_prompt_sets(cfg: RolloutConfig, tok, train_records: list[dict] | None = None,
                     val_records: list[dict] | None = None, recipe: str = "grpo") -> PromptSet:
    """The training prompts of cfg.data (or the given records) that fit max_prompt_len, their token ids, the task,
    and up to eval_prompts held-out prompts with an answer (the given ones, cfg.val_data, or the test split that
    goes with cfg.data; a seeded sample)."""
    if train_records is None:
        task, train_records = load_source(cfg.data, cfg.max_prompts)
    else:
        task = task_for(cfg.data)
    records, ids = tokenize_prompts(tok, train_records, cfg.max_prompt_len, cfg.data or "records", recipe)
    if val_records is None:
        val_source = cfg.val_data or default_val_source(cfg.data)
        val_records = load_source(val_source)[1] if val_source and cfg.eval_prompts else []
    if len(val_records) > cfg.eval_prompts:
        val_records = random.Random(0).sample(val_records, cfg.eval_prompts)
    val_records = [r for r in val_records if r.get("answer") is not None]
    return PromptSet(task, records, ids, val_records)


# ----------------------------------------------------------------------------------------------------------------
# The rollout batch


def rollout_seeds(seed: int, rollout_index: int, n: int) -> list[int]:
    """One sampling seed per completion, fixed by the run's seed and the rollout batch's index (exact resume)."""
    base = (seed * 1_000_003 + rollout_index) * 65_537
    return [(base + i) % 2**62 for i in range(n)]


@dataclass
class RolloutBatch:
    tensors: dict[str, torch.Tensor]  # [N, ...] rows, the G completions of a prompt next to each other
    scores: torch.Tensor  # [N] float32, the weighted reward totals, NaN where unscored
    metrics: dict[str, float]


def score(runner: RewardRunner, records: list[dict], rollout: Rollout, G: int) -> tuple[torch.Tensor, dict]:
    """Every reward function on every completion (G per record), in trl's convention: prompts, completions (text,
    or an assistant message for chat prompts) and the records' other columns by name, plus completion_ids.
    Returns (the weighted totals [N], float32, NaN where None; the per-function values)."""
    prompts = [r["prompt"] for r in records for _ in range(G)]
    completions = [t if isinstance(p, str) else [{"role": "assistant", "content": t}]
                   for p, t in zip(prompts, rollout.texts)]
    names = sorted({k for r in records for k in r if k != "prompt"})
    columns = {k: [r.get(k) for r in records for _ in range(G)] for k in names}
    lengths = rollout.completion_mask.sum(-1).long().tolist()
    columns["completion_ids"] = [ids[:n] for ids, n in zip(rollout.completion_ids.tolist(), lengths)]
    per_fn = runner(prompts, completions, **columns)
    totals = runner.total(per_fn)
    return torch.tensor([math.nan if t is None else t for t in totals], dtype=torch.float32), per_fn


def collect_rollouts(policy, tokenizer, prompts: PromptSet, indices: list[int], cfg: RolloutConfig,
                     runner: RewardRunner, reward_names: list[str], reference: Reference | None, seeds: list[int],
                     pad_id: int, need_old_logps: bool,
                     advantages: Callable[[torch.Tensor, dict], tuple[dict, dict]], autocast=None,
                     remote: Callable[..., Rollout] | None = None) -> RolloutBatch:
    """One rollout batch: steps 1-5 of the module docstring, in that order. remote: where rollout.backend=server,
    the server's rollout function (rl/remote.py: ServerRollouts), called as generate_rollouts is."""
    G = cfg.num_generations

    # 1. prompts
    records = [prompts.records[i] for i in indices]
    prompt_ids = [prompts.ids[i] for i in indices]

    # 2. generate: B * G completions in one batched engine call (or one server round), one seed per completion
    if remote is not None:
        rollout = remote(policy, tokenizer, prompt_ids, G, cfg.sampling(), seeds, pad_id)
    else:
        rollout = generate_rollouts(policy, tokenizer, prompt_ids, G, cfg.sampling(), seeds, pad_id, autocast,
                                    engine=cfg.engine)
    batch = rollout.tensors()

    # 3. score: every reward function on every completion, failures counted and turned into None
    scores, per_fn = score(runner, records, rollout, G)

    # 4. log-probs of the sampling policy (pi_old) and of the reference, without gradients
    if need_old_logps:
        batch["old_logps"] = rollout_logps(policy, batch, cfg.temperature, cfg.logp_batch, autocast)
    if reference is not None:
        with reference.model(policy) as ref:
            batch["ref_logps"] = rollout_logps(ref, batch, cfg.temperature, cfg.logp_batch, autocast)

    # 5. advantages: the recipe's rule
    added, extra = advantages(scores, batch)
    batch.update(added)

    metrics = rollout_metrics(scores, per_fn, reward_names, G if G > 1 else len(scores), rollout,
                              [r.get("answer") for r in records for _ in range(G)], prompts.task)
    for name, key in zip(reward_names, runner.names):
        s = runner.stats[key]
        metrics.update({f"rewards/{name}/errors": s.errors, f"rewards/{name}/timeouts": s.timeouts,
                        f"rewards/{name}/nones": s.nones})
    metrics.update(extra)
    metrics.update({"rollout_s": rollout.seconds,
                    "rollout_tokens_per_s": rollout.num_tokens / max(rollout.seconds, 1e-9),
                    "num_generated_tokens": rollout.num_tokens})
    return RolloutBatch(batch, scores, metrics)


def _nan_mean(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return x.double().mean().item() if x.numel() else float("nan")


def _nan_std(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return x.double().std().item() if x.numel() > 1 else float("nan")


def rollout_metrics(rewards: torch.Tensor, per_fn: dict[str, list], names: list[str], G: int, rollout: Rollout,
                    answers: list, task: Task) -> dict[str, float]:
    """What one rollout batch did (trl's metric names where trl has one); groups of G completions."""
    grouped = rewards.view(-1, G)
    zero = zero_variance_groups(rewards, G)
    m = {"reward": _nan_mean(rewards), "reward_std": _nan_mean(torch.tensor([_nan_std(g) for g in grouped])),
         "frac_reward_zero_std": zero.float().mean().item(), "groups/zero_std": int(zero.sum()),
         "rewards/unscored": int(rewards.isnan().sum())}
    for name, key in zip(names, per_fn):
        r = torch.tensor([math.nan if v is None else v for v in per_fn[key]], dtype=torch.float64)
        m[f"rewards/{name}/mean"], m[f"rewards/{name}/std"] = _nan_mean(r), _nan_std(r)
    lengths, truncated = rollout.lengths.cpu().float(), rollout.truncated.cpu()
    done = lengths[~truncated]
    m.update({"completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
              "completions/max_length": lengths.max().item(),
              "completions/mean_terminated_length": done.mean().item() if done.numel() else float("nan"),
              "completions/max_terminated_length": done.max().item() if done.numel() else float("nan"),
              "completions/clipped_ratio": truncated.float().mean().item(),
              "completions/terminated": int((~truncated).sum()), "completions/clipped": int(truncated.sum())})
    fmt = [task.format_ok(t) for t in rollout.texts]
    m["format_rate"] = sum(fmt) / len(fmt)
    if all(a is not None for a in answers):
        right = [task.correct(t, a) for t, a in zip(rollout.texts, answers)]
        m["accuracy"] = sum(right) / len(right)
        m["format_ok_wrong"] = sum(f and not c for f, c in zip(fmt, right)) / len(right)
    return m
