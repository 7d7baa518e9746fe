"""GRPO and RLOO: reinforcement learning with verifiable rewards, G sampled answers per prompt, no value model.

    alignlab grpo --config configs/grpo/tinyworld.yaml [key=value ...] [--resume]
    alignlab rloo --config configs/grpo/tinyworld.yaml            (algorithm=rloo; trl's RLOO default beta=0.05)

One optimizer step:

1. prompts     `prompts_per_step` prompts (B), in seeded epochs (resumable), from `data` (see PROMPT SOURCES)
2. rollouts    G = num_generations completions of each, sampled by the current policy: all B*G in ONE batched
               engine call with the KV cache (alignlab/rl/rollout.py), eval mode, no gradients, the policy's own
               weights (no copy). Completions are masked after their EOS; those that hit max_completion_length are
               flagged truncated (mask_truncated_completions=true leaves them out of the loss, as DAPO's overlong
               filtering). Seeds are fixed per (rollout, completion), so a resumed run samples what the first did.
3. rewards     every reward function of `reward_funcs` on every completion, through RewardRunner (alignlab.rewards):
               a function that raises, hangs past reward_timeout_s or returns the wrong length is warned about once,
               counted (rewards/<name>/errors, timeouts, nones in the metrics) and gives None; the total is the
               weighted sum of the parts that are not None, None when all are. A None total is NaN to the
               advantages: the completion leaves its group's baseline and gets advantage 0 (trl's rule).
4. advantages  grpo: (r - mean_group) / (std_group + 1e-4) (`scale_rewards`: group, batch or none) --
               objectives.rl.group_advantages. rloo: r - mean of the other G-1 (rloo_advantages), with the KL
               folded into the reward when beta != 0 (kl_penalized_rewards, k1, as trl's RLOOTrainer).
               Zero-variance groups (all right, all wrong) have A = 0; dynamic_sampling=true also takes them out of
               the loss's token count (DAPO; the batch is not refilled).
5. update      num_iterations (mu) optimizer steps on the rollout batch, each over grad_accum micro-batches:
               grpo_loss (loss_type dapo | grpo | bnpo | dr_grpo; clip epsilon / epsilon_high; k3 KL times beta)
               or rloo_loss (sequence-level ratio). With mu = 1 the ratio is exactly 1 (pi_old = pi_theta
               detached) and the loss logged is ~0 by design (trl#2703) while its gradient is not; with mu > 1 pi_old
               is recomputed once per rollout, before the first update. Every log-prob forward (the update's,
               pi_old's, pi_ref's) computes each prompt once for its G completions (completion_logps with the rows'
               prompt_index): the same log-probs and gradients for about B*P + B*G*C tokens instead of B*G*(P + C).
6. monitors    per step (trl's names): reward, reward_std, rewards/<f>/mean|std, frac_reward_zero_std, kl, entropy,
               clip_ratio/*, completions/{mean,min,max}_length, completions/{mean,max}_terminated_length,
               completions/clipped_ratio, format_rate, format_ok_wrong, rollout_s; the held-out accuracy (greedy)
               every train.eval_every steps; alarms (alignlab/rl/monitor.py): reward hacking, length growth,
               KL blow-up, entropy collapse, zero-variance batches -- printed once, "alarm/<name>": 1 in metrics.jsonl
7. save        checkpoints (atomic, exact resume: the rollout buffer, sampler, reward-failure counts and monitor
               history ride along), metrics.jsonl, plots/loss.png and plots/rl.png, <out_dir>/model (LoRA:
               adapter/ and the merged model), result.json

The reference (pi_ref, for beta != 0 and for the KL monitor, track_kl): `reference` copy (a frozen copy of the
starting model), lora (the policy with its adapters disabled: method=lora, no second copy), none (beta = 0 only);
auto picks lora for method=lora, else copy. trl's GRPO default beta is 0: no reference is needed to train, and
track_kl=false skips it entirely.

PROMPT SOURCES (`data`, `val_data`):
    tinyworld:rl[:LEVELS][:SPLIT][@SEED]   TinyWorld's verifiable arithmetic prompts, made on the fly; LEVELS "3,4"
                                           or "3-4" (default 1-4; 5 needs the calculator), SPLIT train (default) or
                                           test, SEED the world's (default 0). Scored by alignlab.eval.tinyworld.
    gsm8k[:SPLIT]                          GSM8K from the Hugging Face Hub (openai/gsm8k, config main), split train
                                           (default) or test -- alignlab/data/gsm8k.py
    gsm8k:PATH                             GSM8K rows {"question", "answer"} from a local file
    PATH or hf:NAME[...]                   any prompt-only records in trl's format: {"prompt": messages or text,
                                           "answer": ..., other columns}; the other columns reach the reward
                                           functions by name. Scored with the "any" answer format.
val_data empty: TinyWorld's test split of the same levels, GSM8K's test split for gsm8k[:train], else none.

Reward functions (`reward_funcs`, name: weight): format (the task's format: TinyWorld's exact one, GSM8K's
"Answer:" line after <think>, or any), correctness (the task's answer check against the `answer` column), length
(DAPO's soft overlong penalty over the last quarter of max_completion_length), or "module:function" for any
function in trl's convention, fn(prompts, completions, **columns) -> list[float | None].
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from alignlab.data.sampler import EpochSampler
from alignlab.infer import SamplingParams
from alignlab.lora import LoraOptions, apply_lora, disable_lora, merge_and_unload, save_adapter
from alignlab.model.hf import load_model, resolve_model_dir, save_model
from alignlab.objectives.rl import (
    dynamic_sampling_keep,
    group_advantages,
    grpo_loss,
    kl_k3,
    kl_penalized_rewards,
    mask_truncated,
    rloo_advantages,
    rloo_loss,
    zero_variance_groups,
)
from alignlab.recipes.dpo import Reference
from alignlab.rewards import RewardRunner, RewardStats
from alignlab.rl.monitor import AlarmConfig, RLMonitor, plot_rl_curves
from alignlab.rl.rollout import Rollout, completion_logps, generate_rollouts, rollout_logps
from alignlab.text import load_tokenizer
from alignlab.train import checkpoint as ckpt
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed, unwrap

ALGORITHMS = ("grpo", "rloo")
LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")
REFERENCES = ("auto", "copy", "lora", "none")


@dataclass
class GRPOConfig:
    out_dir: str = "runs/grpo"
    model: str = ""  # the policy's starting point (a model directory, usually after SFT)
    data: str = "tinyworld:rl"  # prompts (see PROMPT SOURCES in the module docstring)
    val_data: str = ""  # held-out prompts for accuracy; empty: derived from data (TinyWorld / GSM8K test split)
    algorithm: str = "grpo"  # grpo | rloo
    num_generations: int = 8  # G, completions per prompt (trl: 8; >= 2)
    prompts_per_step: int = 8  # B, prompts per rollout batch: B * G completions per optimizer step
    max_prompts: int = 0  # use only the first N prompts of data (0: all)
    max_prompt_len: int = 256  # longer prompts are dropped (counted)
    max_completion_length: int = 256  # trl's default: 512 on main, 256 through v1.9
    temperature: float = 1.0  # sampling; the loss divides the logits by it too (trl)
    top_p: float = 1.0
    top_k: int = 0
    loss_type: str = "dapo"  # dapo (trl's default) | grpo | bnpo | dr_grpo
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    epsilon: float = 0.2  # clip range, low side
    epsilon_high: float | None = None  # high side; None = epsilon (DAPO's clip-higher: 0.28)
    delta: float | None = None  # two-sided clipping cap on the ratio (INTELLECT-2); None = off
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0  # k3 KL penalty weight (trl's default 0; rloo folds beta * k1 into the reward)
    normalize_advantages: bool = False  # rloo: standardise advantages over the batch (trl's RLOO option)
    num_iterations: int = 1  # mu: optimizer steps per rollout batch
    mask_truncated_completions: bool = False  # completions without EOS leave the loss
    dynamic_sampling: bool = False  # zero-variance groups leave the loss's token count (DAPO; no refill)
    reward_funcs: dict[str, float] = field(default_factory=lambda: {"format": 1.0, "correctness": 1.0})
    reward_timeout_s: float = 10.0  # one call of one reward function; then it counts as timed out (None)
    reward_isolation: str = "thread"  # thread | process (see alignlab.rewards.guard)
    reference: str = "auto"  # auto | copy | lora | none
    track_kl: bool = True  # compute the KL to the reference for the monitor even when beta = 0
    method: str = "full"  # full | lora
    lora: LoraOptions = field(default_factory=LoraOptions)
    eval_prompts: int = 64  # held-out prompts answered greedily at each evaluation (0: no held-out accuracy)
    logp_batch: int = 64  # rows per no-grad forward for pi_old / pi_ref
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0, eval_every=25,
        save_every=25, keep_last=2))


@dataclass
class RLOOConfig(GRPOConfig):
    """`alignlab rloo`: the same recipe with algorithm=rloo and trl's RLOO default beta (KL in the reward)."""

    out_dir: str = "runs/rloo"
    algorithm: str = "rloo"
    beta: float = 0.05


# ----------------------------------------------------------------------------------------------------------------
# 1. Prompts and tasks: where prompts come from, and how a reply is checked


@dataclass
class Task:
    """How replies to a prompt source are checked: the format, the answer, and the matching reward functions."""

    name: str
    format_ok: Callable[[str], bool]
    correct: Callable[[str, str], bool]
    format_reward: Callable
    correctness_reward: Callable


def make_task(name: str) -> Task:
    from alignlab.data import gsm8k
    from alignlab.eval import tinyworld as tw
    from alignlab.rewards import CorrectnessReward, FormatReward, answers_equal, extract_answer, gold_answer

    if name == "tinyworld":
        return Task(name, tw.format_ok, lambda out, gold: tw.verify(out, gold) == 1.0, FormatReward("tinyworld"),
                    CorrectnessReward("tinyworld"))
    if name == "gsm8k":
        return Task(name, gsm8k.format_ok, gsm8k.is_correct, FormatReward("line"), CorrectnessReward("auto"))
    any_format = FormatReward("any")
    return Task(name, any_format.ok, lambda out, gold: answers_equal(extract_answer(out), gold_answer(gold)),
                any_format, CorrectnessReward("auto"))


_WORLD = re.compile(r"tinyworld:rl(?::(?P<a>[^:@]+))?(?::(?P<b>[^:@]+))?(?:@(?P<seed>\d+))?")


def _world_spec(source: str) -> tuple[tuple[int, ...], str, int]:
    """tinyworld:rl[:LEVELS][:SPLIT][@SEED] -> (levels, split, seed)."""
    from alignlab.data.world import LEVELS, MATH_LEVELS

    m = _WORLD.fullmatch(source)
    bad = ValueError(f"{source}: expected tinyworld:rl[:LEVELS][:SPLIT][@SEED], e.g. tinyworld:rl:3,4 or "
                     "tinyworld:rl:3-4:test@0 (levels 1-5, split train or test)")
    if m is None:
        raise bad
    levels, split = MATH_LEVELS, "train"
    for part in (m["a"], m["b"]):
        if part is None:
            continue
        if part in ("train", "test"):
            split = part
        elif re.fullmatch(r"\d(-\d)?(,\d(-\d)?)*", part):
            picked: list[int] = []
            for item in part.split(","):
                lo, _, hi = item.partition("-")
                picked += range(int(lo), int(hi or lo) + 1)
            levels = tuple(sorted(set(picked)))
            if not set(levels) <= set(LEVELS):
                raise bad
        else:
            raise bad
    return tuple(levels), split, int(m["seed"] or 0)


def load_prompts(source: str, limit: int = 0) -> tuple[list[dict], str]:
    """(records {"prompt", "answer", ...}, task name) from a prompt source spec (module docstring)."""
    from alignlab.data.errors import DataError

    if source.startswith("tinyworld:rl"):
        from alignlab.data.world import TinyWorld

        levels, split, seed = _world_spec(source)
        world = TinyWorld(seed=seed)
        records, task = [r for lv in levels for r in world.rl_prompts(split, level=lv)], "tinyworld"
    elif source == "gsm8k" or source.startswith("gsm8k:"):
        from alignlab.data.gsm8k import load_gsm8k

        records, task = load_gsm8k(source.partition(":")[2] or "train"), "gsm8k"
    else:
        from alignlab.data.loaders import read_rows

        rows = read_rows(source)
        for where, r in rows:
            if not isinstance(r.get("prompt"), (str, list)) or not r["prompt"]:
                raise DataError(f"{where}: a prompt-only record needs a 'prompt' (messages or text), got {sorted(r)}")
        records, task = [r for _, r in rows], "generic"
    return (records[:limit] if limit else records), task


def default_val_source(source: str) -> str:
    """The held-out prompts that go with a training source: TinyWorld's test split, GSM8K's test split, else ""."""
    if source.startswith("tinyworld:rl"):
        levels, _, seed = _world_spec(source)
        return f"tinyworld:rl:{','.join(map(str, levels))}:test@{seed}"
    if source in ("gsm8k", "gsm8k:train"):
        return "gsm8k:test"
    return ""


def prompt_token_ids(tok, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tok.encode(prompt, add_special_tokens=True)
    return tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)


def tokenize_prompts(tok, records: list[dict], max_prompt_len: int, source: str,
                     recipe: str = "grpo") -> tuple[list[dict], list[list[int]]]:
    """Chat-template (or encode) every prompt; prompts longer than max_prompt_len are dropped and counted (a chat
    prompt cut short is not the question any more). `recipe` names the run in the message."""
    kept, ids = [], []
    for r in records:
        p = prompt_token_ids(tok, r["prompt"]) if not r.get("tools") else tok.apply_chat_template(
            r["prompt"], tools=r["tools"], add_generation_prompt=True, tokenize=True)
        if len(p) <= max_prompt_len:
            kept.append(r)
            ids.append(p)
    if len(kept) < len(records):
        print(f"{recipe} data: {len(records) - len(kept)} of {len(records)} prompts of {source} are longer than "
              f"max_prompt_len={max_prompt_len} tokens and were dropped")
    if not kept:
        raise ValueError(f"{source}: no prompt fits max_prompt_len={max_prompt_len}")
    return kept, ids


def load_prompt_sets(cfg: GRPOConfig, tok, train_records: list[dict] | None = None,
                     val_records: list[dict] | None = None,
                     recipe: str = "grpo") -> tuple[Task, list[dict], list[list[int]], list[dict]]:
    """Step 1 of a run (GRPO's and PPO's): (task, records, prompt_ids, val_records) -- the training prompts of
    cfg.data (or the given records) that fit max_prompt_len, their token ids, and up to eval_prompts held-out
    prompts with an answer (the given ones, cfg.val_data, or the test split that goes with cfg.data; a seeded
    sample)."""
    if train_records is None:
        train_records, task_name = load_prompts(cfg.data, cfg.max_prompts)
    else:
        task_name = "tinyworld" if cfg.data.startswith("tinyworld:rl") else \
            "gsm8k" if cfg.data.startswith("gsm8k") else "generic"
    task = make_task(task_name)
    records, prompt_ids = tokenize_prompts(tok, train_records, cfg.max_prompt_len, cfg.data or "records", recipe)
    if val_records is None:
        val_source = cfg.val_data or default_val_source(cfg.data)
        val_records = load_prompts(val_source)[0] if val_source and cfg.eval_prompts else []
    if len(val_records) > cfg.eval_prompts:
        val_records = random.Random(0).sample(val_records, cfg.eval_prompts)
    val_records = [r for r in val_records if r.get("answer") is not None]
    return task, records, prompt_ids, val_records


def build_reward_funcs(spec: dict[str, float], task: Task, max_completion_length: int) -> tuple[list, list, list]:
    """(functions, weights, names) from {name: weight}: built-ins format | correctness | length, or module:function."""
    from alignlab.rewards import length_penalty

    fns, weights, names = [], [], []
    for name, weight in spec.items():
        if name == "format":
            fn = task.format_reward
        elif name == "correctness":
            fn = task.correctness_reward
        elif name == "length":
            fn = length_penalty(max_completion_length, max(1, max_completion_length // 4))
        elif ":" in name:
            module, _, attr = name.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"reward_funcs: cannot import {name!r} ({e})") from None
            if not callable(fn):
                raise ValueError(f"reward_funcs: {name!r} is not callable")
        else:
            raise ValueError(f"reward_funcs: unknown reward {name!r}; built-ins are format, correctness and length, "
                             "or give module:function")
        fns.append(fn)
        weights.append(float(weight))
        names.append(name.rpartition(":")[2] if ":" in name else name)
    if not fns:
        raise ValueError("reward_funcs is empty: GRPO needs at least one reward function")
    return fns, weights, names


def reward_runner(cfg: GRPOConfig, task: Task, warn: Callable[[str], None]) -> tuple[RewardRunner, list[str]]:
    """(runner, names): cfg.reward_funcs behind a RewardRunner (reward_timeout_s, reward_isolation; failures warned
    about through `warn` and counted)."""
    fns, weights, names = build_reward_funcs(cfg.reward_funcs, task, cfg.max_completion_length)
    return RewardRunner(fns, weights, timeout_s=cfg.reward_timeout_s, isolation=cfg.reward_isolation,
                        warn=warn), names


def describe_rewards(runner: RewardRunner, names: list[str]) -> str:
    """"format (format_reward[tinyworld]) x 1, ...": each reward function, what it is, its weight."""
    from alignlab.rewards import reward_name

    return ", ".join(f"{n} ({reward_name(f)}) x {w:g}" for n, f, w in zip(names, runner.fns, runner.weights))


# ----------------------------------------------------------------------------------------------------------------
# 2-3. The reference


class TokenReference(Reference):
    """dpo.Reference (a frozen copy, or the policy with its adapters disabled), giving per-token log-probs of
    rollouts."""

    @torch.no_grad()
    def token_logps(self, model, batch: dict, temperature: float, micro_batch: int, autocast=None) -> torch.Tensor:
        if self.kind == "copy":
            return rollout_logps(self.copy, batch, temperature, micro_batch, autocast)
        with disable_lora(unwrap(model)):
            return rollout_logps(model, batch, temperature, micro_batch, autocast)


# ----------------------------------------------------------------------------------------------------------------
# 4-6. Rollouts, rewards and advantages, as the Trainer's data source


def _nan_mean(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return x.double().mean().item() if x.numel() else float("nan")


def _nan_std(x: torch.Tensor) -> float:
    x = x[~x.isnan()]
    return x.double().std().item() if x.numel() > 1 else float("nan")


def rollout_metrics(rewards: torch.Tensor, per_fn: dict[str, list], names: list[str], G: int, lengths: torch.Tensor,
                    truncated: torch.Tensor, texts: list[str], answers: list, task: Task) -> dict[str, float]:
    """What one rollout batch did (trl's metric names where trl has one)."""
    grouped = rewards.view(-1, G)
    group_std = [_nan_std(g) for g in grouped]
    zero = zero_variance_groups(rewards, G)
    m = {"reward": _nan_mean(rewards), "reward_std": _nan_mean(torch.tensor(group_std)),
         "frac_reward_zero_std": zero.float().mean().item(), "groups/zero_std": int(zero.sum()),
         "rewards/unscored": int(rewards.isnan().sum())}
    for name, key in zip(names, per_fn):
        r = torch.tensor([math.nan if v is None else v for v in per_fn[key]], dtype=torch.float64)
        m[f"rewards/{name}/mean"], m[f"rewards/{name}/std"] = _nan_mean(r), _nan_std(r)
    lengths = lengths.float()
    done = lengths[~truncated]
    m.update({"completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
              "completions/max_length": lengths.max().item(),
              "completions/mean_terminated_length": done.mean().item() if done.numel() else float("nan"),
              "completions/max_terminated_length": done.max().item() if done.numel() else float("nan"),
              "completions/clipped_ratio": truncated.float().mean().item(),
              "completions/terminated": int((~truncated).sum()), "completions/clipped": int(truncated.sum())})
    fmt = [task.format_ok(t) for t in texts]
    m["format_rate"] = sum(fmt) / len(fmt)
    if all(a is not None for a in answers):
        right = [task.correct(t, a) for t, a in zip(texts, answers)]
        m["accuracy"] = sum(right) / len(right)
        m["format_ok_wrong"] = sum(f and not c for f, c in zip(fmt, right)) / len(right)
    return m


def _autocast(train: TrainConfig, device: torch.device):
    bf16 = train.dtype == "bf16" or (train.dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class RolloutSource:
    """The Trainer's data: micro-batches of rollouts. Every num_iterations * grad_accum calls it samples a new
    rollout batch (prompts -> completions -> rewards -> advantages); each optimizer step then takes its grad_accum
    micro-batches in order. state_dict holds everything a resumed run needs to continue exactly: the prompt
    sampler, the current rollout batch, the position in it, the reward functions' failure counts and the monitor."""

    def __init__(self, cfg: GRPOConfig, model, tok, records: list[dict], prompt_ids: list[list[int]],
                 runner: RewardRunner, names: list[str], task: Task, reference: TokenReference | None, pad_id: int,
                 monitor: RLMonitor):
        self.cfg, self.model, self.tok, self.records, self.prompt_ids = cfg, model, tok, records, prompt_ids
        self.runner, self.names, self.task, self.reference, self.pad_id = runner, names, task, reference, pad_id
        self.monitor = monitor
        self.device = next(model.parameters()).device
        self.autocast = _autocast(cfg.train, self.device)
        self.sampler = EpochSampler(len(records), cfg.prompts_per_step, cfg.train.seed, what="prompts")
        self.params = SamplingParams(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                     top_p=cfg.top_p, top_k=cfg.top_k)
        self.buffer: dict | None = None
        self.cursor = 0  # micro-batches taken from the current rollout batch
        self.rollouts = 0  # rollout batches sampled so far
        self.zero_variance_batches = 0
        self.metrics: dict = {}  # the current rollout batch's metrics
        self.fresh = False  # the metrics are not logged yet
        self.columns = sorted({k for r in records for k in r if k != "prompt"})

    # --- one rollout batch ------------------------------------------------------------------------------------

    def seeds(self, n: int) -> list[int]:
        base = (self.cfg.train.seed * 1_000_003 + self.rollouts) * 65_537
        return [(base + i) % 2**62 for i in range(n)]

    def score(self, records: list[dict], rollout: Rollout) -> tuple[torch.Tensor, dict[str, list]]:
        """Every reward function on every completion of the rollout (G per record), failures counted and turned
        into None: (the weighted totals [N], float32, NaN where None; the per-function values)."""
        G = self.cfg.num_generations
        prompts = [r["prompt"] for r in records for _ in range(G)]
        completions = [t if isinstance(p, str) else [{"role": "assistant", "content": t}]
                       for p, t in zip(prompts, rollout.texts)]
        columns = {k: [r.get(k) for r in records for _ in range(G)] for k in self.columns}
        lengths = rollout.completion_mask.sum(-1).long().tolist()
        columns["completion_ids"] = [ids[:n] for ids, n in zip(rollout.completion_ids.tolist(), lengths)]
        per_fn = self.runner(prompts, completions, **columns)
        totals = self.runner.total(per_fn)
        return torch.tensor([math.nan if t is None else t for t in totals], dtype=torch.float32), per_fn

    def batch_metrics(self, rewards: torch.Tensor, per_fn: dict[str, list], group: int, rollout: Rollout,
                      records: list[dict], extra: dict | None = None) -> dict[str, float]:
        """What the rollout batch did: rollout_metrics (groups of `group` completions), the reward functions'
        failure counts, `extra` (a recipe's own), the zero-variance batches so far and the rollout's speed."""
        G = self.cfg.num_generations
        metrics = rollout_metrics(rewards, per_fn, self.names, group, rollout.lengths.cpu(), rollout.truncated.cpu(),
                                  rollout.texts, [r.get("answer") for r in records for _ in range(G)], self.task)
        if metrics["frac_reward_zero_std"] == 1.0:
            self.zero_variance_batches += 1
        for name, key in zip(self.names, self.runner.names):
            s = self.runner.stats[key]
            metrics.update({f"rewards/{name}/errors": s.errors, f"rewards/{name}/timeouts": s.timeouts,
                            f"rewards/{name}/nones": s.nones})
        metrics.update(extra or {})
        metrics.update({"zero_variance_batches": self.zero_variance_batches, "rollout_s": rollout.seconds,
                        "rollout_tokens_per_s": rollout.num_tokens / max(rollout.seconds, 1e-9),
                        "num_generated_tokens": rollout.num_tokens})
        return metrics

    def sample_rollout(self) -> tuple[list[dict], Rollout, dict]:
        """The next prompts_per_step prompts, num_generations completions of each from the current policy, seeded
        by the rollout: (the prompts' records, the rollout, its tensors)."""
        G = self.cfg.num_generations
        idx = self.sampler.next_indices()
        records = [self.records[i] for i in idx]
        rollout = generate_rollouts(self.model, self.tok, [self.prompt_ids[i] for i in idx], G, self.params,
                                    self.seeds(len(idx) * G), self.pad_id, self.autocast)
        self.rollouts += 1
        return records, rollout, rollout.tensors()

    def collect(self) -> tuple[dict, dict]:
        cfg, G = self.cfg, self.cfg.num_generations
        records, rollout, batch = self.sample_rollout()

        # rewards: every function on every completion, failures counted and turned into None
        rewards, per_fn = self.score(records, rollout)

        # log-probs of the sampling policy (pi_old) and of the reference, once per rollout batch, without gradients
        mask = batch["completion_mask"]
        need_old = cfg.num_iterations > 1 or (cfg.algorithm == "rloo" and cfg.beta != 0)
        old = rollout_logps(self.model, batch, cfg.temperature, cfg.logp_batch, self.autocast) if need_old else None
        ref = None
        if self.reference is not None:
            ref = self.reference.token_logps(self.model, batch, cfg.temperature, cfg.logp_batch, self.autocast)

        # advantages
        r = rewards.to(self.device)
        if cfg.algorithm == "grpo":
            advantages = group_advantages(r, G, scale=cfg.scale_rewards)
        else:
            if cfg.beta != 0:
                r = kl_penalized_rewards(r, old, ref, mask, cfg.beta)
            advantages = rloo_advantages(r, G, normalize=cfg.normalize_advantages)
        loss_mask = mask
        if cfg.mask_truncated_completions:
            loss_mask = mask_truncated(loss_mask, batch["truncated"])
        if cfg.dynamic_sampling:
            loss_mask = loss_mask * dynamic_sampling_keep(rewards, G).to(self.device)[:, None]
        batch.update(advantages=advantages, loss_mask=loss_mask)
        if cfg.num_iterations > 1:
            batch["old_logps"] = old
        if ref is not None:
            batch["ref_logps"] = ref

        return batch, self.batch_metrics(rewards, per_fn, G, rollout, records)

    # --- the Trainer's interface ------------------------------------------------------------------------------

    def next_batch(self) -> dict:
        ga = self.cfg.train.grad_accum
        if self.buffer is None or self.cursor >= ga * self.cfg.num_iterations:
            self.buffer, self.metrics = self.collect()
            self.cursor, self.fresh = 0, True
        part = self.cursor % ga
        self.cursor += 1
        return self.micro_batch(part, ga)

    def micro_batch(self, part: int, parts: int) -> dict:
        """Rows part/parts of the rollout batch, trimmed to their own longest sequence and completion. A part may
        cut a group of G; the rows of it that the part holds still share their prompt's forward."""
        b = self.buffer
        rows = torch.tensor_split(torch.arange(b["input_ids"].shape[0], device=self.device), parts)[part]
        lengths = b["completion_mask"][rows].sum(-1).long()
        T = int((b["prompt_lens"][rows] + lengths).max())
        C = max(1, int(lengths.max()))
        out = {}
        for k, v in b.items():
            v = v[rows]
            if k == "input_ids":
                v = v[:, :T]
            elif v.dim() == 2:
                v = v[:, :C]
            out[k] = v
        return out

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "cursor": self.cursor, "rollouts": self.rollouts,
                "buffer": None if self.buffer is None else {k: v.cpu() for k, v in self.buffer.items()},
                "metrics": self.metrics, "fresh": self.fresh, "zero_variance_batches": self.zero_variance_batches,
                "reward_stats": {k: asdict(s) for k, s in self.runner.stats.items()},
                "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.cursor, self.rollouts, self.fresh = state["cursor"], state["rollouts"], state["fresh"]
        self.buffer = None if state["buffer"] is None else {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.metrics, self.zero_variance_batches = dict(state["metrics"]), state["zero_variance_batches"]
        for k, s in state["reward_stats"].items():
            if k in self.runner.stats:
                self.runner.stats[k] = RewardStats(**s)
        self.monitor.load_state_dict(state["monitor"])


# ----------------------------------------------------------------------------------------------------------------
# 5. The update: the Trainer's loss_fn


def rl_step(cfg: GRPOConfig):
    """(model, micro-batch, normaliser) -> (loss, metrics). The normaliser is the step's count from `rl_weight`:
    loss-mask tokens for dapo (grpo_loss's num_tokens: one token mean over the whole step), completions for rloo
    (a mean over the step's completions)."""

    def step(model, batch: dict, normaliser: float):
        logps, entropy = completion_logps(model, batch["input_ids"], batch["prompt_lens"], batch["completion_ids"],
                                          batch["completion_mask"], cfg.temperature, entropy=True,
                                          prompt_index=batch.get("prompt_index"))  # each prompt once per group
        old, ref, mask = batch.get("old_logps"), batch.get("ref_logps"), batch["loss_mask"]
        if cfg.algorithm == "grpo":
            loss, metrics = grpo_loss(logps, old, ref if cfg.beta != 0 else None, batch["advantages"], mask,
                                      cfg.loss_type, cfg.epsilon, cfg.epsilon_high, cfg.beta, cfg.delta,
                                      cfg.importance_sampling_level, cfg.max_completion_length, num_tokens=normaliser,
                                      grad_accum_steps=cfg.train.grad_accum)
        else:
            loss, metrics = rloo_loss(logps, old, batch["advantages"], mask, cfg.epsilon, cfg.epsilon_high)
            loss = loss * logps.shape[0] / normaliser
        cm = batch["completion_mask"]
        n = cm.sum().clamp(min=1)
        with torch.no_grad():
            metrics["entropy"] = ((entropy * cm).sum() / n).item()
            if ref is not None:  # over every completion token, whatever the loss mask
                metrics["kl"] = ((kl_k3(logps, ref) * cm).sum() / n).item()
        return loss, metrics

    return step


def rl_weight(cfg: GRPOConfig) -> Callable[[dict], float]:
    if cfg.algorithm == "rloo":
        return lambda b: b["input_ids"].shape[0]
    return lambda b: float(b["loss_mask"].sum())


class RLTrainer(Trainer):
    """The shared Trainer, plus: each step's metrics get the rollout batch's metrics (on the step that sampled it)
    and the monitor's alarms."""

    def __init__(self, *args, monitor: RLMonitor, **kwargs):
        super().__init__(*args, **kwargs)
        self.monitor = monitor

    def train_step(self) -> dict:
        out = super().train_step()
        if self.data.fresh:
            out.update(self.data.metrics)
            self.data.fresh = False
        out.update(self.monitor.observe(self.step, out))
        return out


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def _check(cfg: GRPOConfig) -> str:
    """Validate the config; returns the resolved reference kind."""
    for name, value, allowed in (("algorithm", cfg.algorithm, ALGORITHMS), ("loss_type", cfg.loss_type, LOSS_TYPES),
                                 ("scale_rewards", cfg.scale_rewards, SCALES), ("reference", cfg.reference, REFERENCES),
                                 ("method", cfg.method, ("full", "lora")),
                                 ("importance_sampling_level", cfg.importance_sampling_level, ("token", "sequence"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not cfg.model:
        raise ValueError("model: the model directory to start from is not set (model=path/to/model)")
    if cfg.num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 (a group needs a baseline), got {cfg.num_generations}")
    if cfg.prompts_per_step < 1 or cfg.num_iterations < 1:
        raise ValueError("prompts_per_step and num_iterations must be >= 1")
    if cfg.prompts_per_step * cfg.num_generations < cfg.train.grad_accum:
        raise ValueError(f"train.grad_accum={cfg.train.grad_accum} micro-batches need at least as many completions; "
                         f"prompts_per_step * num_generations = {cfg.prompts_per_step * cfg.num_generations}")
    if cfg.temperature <= 0:
        raise ValueError("temperature must be > 0: GRPO samples (and divides the logits by it)")
    return resolve_reference(cfg.reference, cfg.method, cfg.track_kl, "beta", cfg.beta)


def run(cfg: GRPOConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    from alignlab.config import save_config

    reference_kind = _check(cfg)
    device, out, model_dir, tok = open_run(cfg)

    # 1. prompts (and the task that checks replies to them); held-out prompts for accuracy
    task, records, prompt_ids, val_records = load_prompt_sets(cfg, tok, train_records, val_records)
    print(f"grpo data: {len(records):,} prompts ({task.name}), {cfg.prompts_per_step} x {cfg.num_generations} "
          f"completions per step; {len(val_records)} held-out prompts"
          + ("" if val_records else " (no held-out accuracy: the reward-hacking alarms need it)"))

    # 2-3. the policy and the reference
    set_seed(cfg.train.seed)
    model = load_policy(cfg, model_dir, device)
    longest = max(map(len, prompt_ids)) + cfg.max_completion_length
    if longest > model.config.max_seq_len:
        print(f"warning: prompts of up to {max(map(len, prompt_ids))} tokens + max_completion_length="
              f"{cfg.max_completion_length} exceed the model's {model.config.max_seq_len} positions")
    pad_id = tok.padding_id
    reference = None if reference_kind == "none" else TokenReference(reference_kind, model)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # 4-6. rollouts, rewards, advantages, monitors
    runner, names = reward_runner(cfg, task, warn=tqdm.write)
    monitor = RLMonitor(cfg.alarms, warn=tqdm.write)
    data = RolloutSource(cfg, model, tok, records, prompt_ids, runner, names, task, reference, pad_id, monitor)
    print(f"reward functions: {describe_rewards(runner, names)}; reference: {reference_kind}")

    # 7. held-out accuracy, greedy: before the first step, every train.eval_every steps
    trainer: RLTrainer | None = None
    evaluate, sample = held_out_evaluator(tok, task, val_records, cfg.max_completion_length, monitor,
                                          step=lambda: trainer.step if trainer else 0)
    trainer = RLTrainer(cfg.train, model, data, rl_step(cfg), out, evaluate=evaluate, sample=sample,
                        weight_fn=rl_weight(cfg), run_config=asdict(cfg), monitor=monitor)
    start = start_metrics(model, evaluate, cfg.train, device, out, resume)
    result = trainer.fit(resume=resume)
    finish_run(result, cfg, out, start, monitor, runner, names, records, title=f"{cfg.algorithm} {out.name}")

    # 8. the model directory
    if result["status"] == "finished":
        save_policy(trainer.export_model(), cfg, out, tok, model_meta(cfg.algorithm, cfg, result), result)
        summary = write_result(out, result, monitor)
        print(f"{cfg.algorithm}: {result['step']} steps ({result['train_seconds']:.0f} s), {summary}; "
              f"model: {result['model_dir']}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# The pieces of a run that PPO's (alignlab/recipes/ppo.py) shares


def resolve_reference(reference: str, method: str, track_kl: bool, penalty: str, coef: float) -> str:
    """The reference kind (copy | lora | none): auto is lora for method=lora, else copy; none when the KL penalty
    (`penalty` = coef: beta, kl_coef) is 0 and track_kl is off."""
    reference = reference if reference != "auto" else ("lora" if method == "lora" else "copy")
    if reference == "lora" and method != "lora":
        raise ValueError("reference=lora needs method=lora: the reference is the model with its adapters disabled")
    if coef != 0 and reference == "none":
        raise ValueError(f"{penalty}={coef} needs a reference model (reference=copy, or lora with method=lora)")
    if coef == 0 and not track_kl:
        reference = "none"
    return reference


def open_run(cfg: GRPOConfig) -> tuple[torch.device, Path, Path, object]:
    """(device, out_dir, the starting model's directory, its tokenizer); torch's threads per cfg.threads."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_dir = resolve_model_dir(cfg.model)
    return resolve_device(cfg.train.device), Path(cfg.out_dir), model_dir, load_tokenizer(model_dir)


def load_policy(cfg: GRPOConfig, model_dir: Path, device: torch.device) -> torch.nn.Module:
    """The policy's starting point in float32 on `device`, with LoRA adapters for method=lora."""
    model = load_model(model_dir, dtype=torch.float32)
    if cfg.method == "lora":
        apply_lora(model, cfg.lora.to_config())
    return model.to(device)


def held_out_evaluator(tok, task: Task, val_records: list[dict], max_new_tokens: int, monitor: RLMonitor,
                       step: Callable[[], int],
                       policy: Callable = lambda m: m) -> tuple[Callable | None, Callable | None]:
    """The Trainer's (evaluate, sample) for the held-out prompts, (None, None) without any. evaluate(model): greedy
    replies of policy(model) to every held-out prompt; val/accuracy, val/format_rate, val/format_ok_wrong, plus
    what the monitor's evaluation alarms say at step(). sample: the last evaluation's first three replies."""
    from alignlab.eval.world_suite import generate_replies

    if not val_records:
        return None, None
    shown: list[str] = []

    def evaluate(m) -> dict:
        replies = generate_replies(policy(m), tok, [r["prompt"] for r in val_records], max_new_tokens)
        fmt = [task.format_ok(o) for o in replies]
        right = [task.correct(o, r["answer"]) for o, r in zip(replies, val_records)]
        n = len(replies)
        metrics = {"val/accuracy": sum(right) / n, "val/format_rate": sum(fmt) / n,
                   "val/format_ok_wrong": sum(f and not c for f, c in zip(fmt, right)) / n}
        shown[:] = [f"{_prompt_text(r['prompt'])} -> {o}" for r, o in zip(val_records[:3], replies)]
        return {**metrics, **monitor.observe_eval(step(), metrics)}

    return evaluate, lambda m: list(shown)


def start_metrics(model, evaluate: Callable | None, train: TrainConfig, device: torch.device, out: Path,
                  resume: bool) -> dict:
    """The held-out metrics before the first step, printed; {} without held-out prompts or when resuming from a
    checkpoint (finish_run then takes them from the monitor's step-0 evaluation)."""
    if evaluate is None or (resume and ckpt.latest_checkpoint(out / "checkpoints") is not None):
        return {}
    model.eval()
    with torch.no_grad(), _autocast(train, device):
        start = {k: v for k, v in evaluate(model).items() if k.startswith("val/")}
    model.train()
    print("at the start: " + ", ".join(f"{k} {v:.3f}" for k, v in start.items()))
    return start


def finish_run(result: dict, cfg: GRPOConfig, out: Path, start: dict, monitor: RLMonitor, runner: RewardRunner,
               names: list[str], records: list[dict], title: str, **extra) -> dict:
    """After the training loop: into result the start metrics (the monitor's step-0 evaluation when this process
    did not measure them), the alarms raised, the reward functions' failures, the number of prompts and `extra`;
    plots/rl.png with train.plot."""
    if not start and monitor.evals and monitor.evals[0]["step"] == 0:
        start = {k: v for k, v in monitor.evals[0].items() if k != "step"}
    result.update(start=start, alarms=dict(monitor.raised),
                  reward_failures={n: asdict(runner.stats[k]) for n, k in zip(names, runner.names)},
                  prompts=len(records), **extra)
    if cfg.train.plot:
        plot_rl_curves(out / "metrics.jsonl", out / "plots" / "rl.png", title=title, start=start)
    return result


def model_meta(stage: str, cfg: GRPOConfig, result: dict) -> dict:
    """The exported model's provenance: its stage, parent, the run's config and its result."""
    return {"stage": stage, "parent": cfg.model, "config": asdict(cfg),
            "metrics": {k: v for k, v in result.items() if k not in ("last_checkpoint", "reward_failures")}}


def save_policy(policy, cfg: GRPOConfig, out: Path, tok, meta: dict, result: dict) -> None:
    """<out>/model: the trained policy (for method=lora: its adapters to <out>/adapter, then merged into it); the
    directories into result (adapter_dir, model_dir)."""
    if cfg.method == "lora":
        result["adapter_dir"] = str(save_adapter(policy, out / "adapter", policy.lora_config,
                                                 base_model_name_or_path=cfg.model))
        policy = merge_and_unload(policy)
    result["model_dir"] = str(save_model(policy, out / "model", tokenizer=tok, meta=meta))


def write_result(out: Path, result: dict, monitor: RLMonitor) -> str:
    """<out>/result.json; returns the run's summary: the held-out accuracy from the start to the end, the alarms."""
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    acc = (f"held-out accuracy {result['start'].get('val/accuracy', math.nan):.1%} -> {result['val/accuracy']:.1%}"
           if "val/accuracy" in result else "no held-out prompts")
    return acc + (f"; alarms: {', '.join(monitor.raised)}" if monitor.raised else "")


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
