"""GRPO and RLOO: reinforcement learning with verifiable rewards, G sampled answers per prompt, no value model.

    alignlab grpo --config configs/grpo/tinyworld.yaml [key=value ...] [--resume]
    alignlab rloo --config configs/grpo/tinyworld.yaml            (algorithm=rloo; trl's RLOO default beta=0.05)

One rollout batch (`rollout_batch`, which calls alignlab/rl/collect.py's collect_rollouts), then num_iterations
optimizer steps on it (`grpo_step`):

1. prompts     rollout.prompts_per_step prompts (B), in seeded epochs (resumable), from rollout.data: a prompt
               source (alignlab/tasks/sources.py: tinyworld:rl:3-4, gsm8k, a file of prompt-only records)
2. rollouts    G = rollout.num_generations completions of each from the current policy, all B*G in one batched
               engine call with the KV cache, eval mode, no gradients, the policy's own weights. Seeds are fixed
               per (rollout, completion), so a resumed run samples what the first did. Completions without EOS are
               flagged truncated (mask_truncated_completions=true leaves them out of the loss, DAPO's filter).
               rollout.backend=server (method=lora): from an OpenAI-compatible server instead, the policy's adapter
               pushed to it before each rollout batch (alignlab/rl/remote.py); held-out evaluation stays local.
3. rewards     every function of rollout.reward_funcs on every completion, through RewardRunner: one that raises,
               hangs past reward_timeout_s or returns the wrong length is warned about once, counted and gives
               None; the total is the weighted sum of the parts that are not None (trl's rule), NaN when all are.
4. log-probs   pi_old when num_iterations > 1 (or for RLOO's KL in the reward), pi_ref when there is a reference
5. advantages  grpo: (r - mean_group) / (std_group + 1e-4), scale_rewards group | batch | none (Dr. GRPO);
               rloo: r - mean of the other G-1, with beta * k1 folded into the reward (trl's RLOOTrainer).
               Zero-variance groups get A = 0; dynamic_sampling=true also takes them out of the token count (DAPO).
6. update      num_iterations (mu) optimizer steps on the batch, each over train.grad_accum micro-batches:
               grpo_loss (loss_type dapo | grpo | bnpo | dr_grpo; clip epsilon / epsilon_high; k3 KL times beta)
               or rloo_loss (sequence-level ratio). With mu = 1, pi_old = pi_theta detached: the logged loss is ~0
               by design (trl#2703), its gradient is not. Every log-prob forward computes each prompt once for its
               G completions (completion_logps with the rows' prompt_index).
7. monitors    per step (trl's names): reward, reward_std, rewards/<f>/mean|std, frac_reward_zero_std, kl, entropy,
               clip_ratio/*, completions/*, format_rate, accuracy, rollout_s; greedy held-out accuracy every
               train.eval_every steps; alarms (alignlab/rl/monitor.py): reward hacking, length growth, KL blow-up,
               entropy collapse, zero-variance batches -- printed once, "alarm/<name>": 1 in metrics.jsonl
8. save        checkpoints (atomic, exact resume: the rollout buffer, sampler, reward-failure counts and monitor
               ride along), metrics.jsonl, plots/loss.png and plots/rl.png, <out_dir>/model (LoRA: adapter/ and the
               merged model), result.json

The reference (pi_ref, for beta != 0 and the KL monitor): reference=copy (a frozen copy of the starting model),
lora (the policy with its adapters disabled: method=lora, no second copy), none (beta = 0 only); auto picks lora
for method=lora, else copy. trl's GRPO default beta is 0, and track_kl=false then skips the reference entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from alignlab.config import save_config
from alignlab.data.sampler import EpochSampler
from alignlab.errors import ConfigError
from alignlab.lora import LoraOptions
from alignlab.model.hf import resolve_model_dir
from alignlab.objectives.rl import (
    ClipConfig,
    dynamic_sampling_keep,
    group_advantages,
    grpo_loss,
    kl_k3,
    kl_penalized_rewards,
    mask_truncated,
    rloo_advantages,
    rloo_loss,
)
from alignlab.rewards.registry import describe_rewards
from alignlab.rl.buffer import RolloutBuffer
from alignlab.rl.collect import (
    PromptSet,
    RolloutBatch,
    RolloutConfig,
    collect_rollouts,
    load_prompt_sets,
    rollout_seeds,
)
from alignlab.rl.monitor import AlarmConfig, RLMonitor
from alignlab.rl.remote import server_rollouts
from alignlab.rl.rollout import completion_logps
from alignlab.rl.run import (
    finish_run,
    held_out_evaluator,
    load_policy,
    model_meta,
    reward_runner,
    rl_title,
    save_policy,
    start_metrics,
    write_result,
)
from alignlab.text import load_tokenizer
from alignlab.train.reference import Reference, resolve_reference
from alignlab.train.trainer import TrainConfig, Trainer, autocast_for, resolve_device, set_seed

ALGORITHMS = ("grpo", "rloo")
LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")
RLOO_DEFAULTS = {"out_dir": "runs/rloo", "algorithm": "rloo", "beta": 0.05}  # `alignlab rloo`


@dataclass
class GRPOConfig:
    out_dir: str = "runs/grpo"
    model: str = ""  # the policy's starting point (a model directory, usually after SFT)
    algorithm: str = "grpo"  # grpo | rloo
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # prompts, sampling, rewards (rl/collect.py)
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
    reference: str = "auto"  # auto | copy | lora | none
    track_kl: bool = True  # compute the KL to the reference for the monitor even when beta = 0
    method: str = "full"  # full | lora
    lora: LoraOptions = field(default_factory=LoraOptions)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0, eval_every=25,
        save_every=25, keep_last=2))

    def clip(self) -> ClipConfig:
        return ClipConfig(self.loss_type, self.epsilon, self.epsilon_high, self.beta, self.delta,
                          self.importance_sampling_level, self.rollout.max_completion_length)


def rloo_config(**fields) -> GRPOConfig:
    """`alignlab rloo`'s config: the same recipe with algorithm=rloo and trl's RLOO default beta (KL in the reward)."""
    return GRPOConfig(**{**RLOO_DEFAULTS, **fields})


def check(cfg: GRPOConfig) -> str:
    """Validate the config; returns the resolved reference kind."""
    for name, value, allowed in (("algorithm", cfg.algorithm, ALGORITHMS), ("loss_type", cfg.loss_type, LOSS_TYPES),
                                 ("scale_rewards", cfg.scale_rewards, SCALES),
                                 ("method", cfg.method, ("full", "lora")),
                                 ("importance_sampling_level", cfg.importance_sampling_level, ("token", "sequence"))):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not cfg.model:
        raise ConfigError("model: the model directory to start from is not set (model=path/to/model)")
    cfg.rollout.check(cfg.method)
    r = cfg.rollout
    if r.num_generations < 2:
        raise ConfigError(f"rollout.num_generations must be >= 2 (a group needs a baseline), got {r.num_generations}")
    if cfg.num_iterations < 1:
        raise ConfigError("num_iterations must be >= 1")
    if r.prompts_per_step * r.num_generations < cfg.train.grad_accum:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} micro-batches need at least as many completions; "
                          f"rollout.prompts_per_step * rollout.num_generations = "
                          f"{r.prompts_per_step * r.num_generations}")
    return resolve_reference(cfg.reference, cfg.method, cfg.track_kl, "beta", cfg.beta)


# ----------------------------------------------------------------------------------------------------------------
# Steps 4-5 and 6: the advantages of a rollout batch, the loss of a micro-batch


def advantages_rule(cfg: GRPOConfig) -> Callable[[torch.Tensor, dict], tuple[dict, dict]]:
    """collect_rollouts' step 5: (scores [N], the batch's tensors) -> ({"advantages", "loss_mask"}, {})."""
    G = cfg.rollout.num_generations

    def advantages(scores: torch.Tensor, batch: dict) -> tuple[dict, dict]:
        mask = batch["completion_mask"]
        r = scores.to(mask.device)
        if cfg.algorithm == "grpo":
            adv = group_advantages(r, G, scale=cfg.scale_rewards)
        else:
            if cfg.beta != 0:
                r = kl_penalized_rewards(r, batch["old_logps"], batch["ref_logps"], mask, cfg.beta)
            adv = rloo_advantages(r, G, normalize=cfg.normalize_advantages)
        loss_mask = mask
        if cfg.mask_truncated_completions:
            loss_mask = mask_truncated(loss_mask, batch["truncated"])
        if cfg.dynamic_sampling:
            loss_mask = loss_mask * dynamic_sampling_keep(scores, G).to(mask.device)[:, None]
        return {"advantages": adv, "loss_mask": loss_mask}, {}

    return advantages


def grpo_step(cfg: GRPOConfig):
    """The Trainer's loss_fn: (model, micro-batch, normaliser) -> (loss, metrics). The normaliser is the step's
    count from `grpo_weight`: loss-mask tokens for dapo (grpo_loss's num_tokens: one token mean over the whole
    step), completions for rloo (a mean over the step's completions)."""
    clip = cfg.clip()

    def step(model, batch: dict, normaliser: float):
        logps, entropy = completion_logps(model, batch["input_ids"], batch["prompt_lens"], batch["completion_ids"],
                                          batch["completion_mask"], cfg.rollout.temperature, entropy=True,
                                          prompt_index=batch.get("prompt_index"))  # each prompt once per group
        old = batch.get("old_logps") if cfg.num_iterations > 1 else None  # mu = 1: pi_old = pi_theta detached
        ref, mask = batch.get("ref_logps"), batch["loss_mask"]
        if cfg.algorithm == "grpo":
            loss, metrics = grpo_loss(logps, old, ref if cfg.beta != 0 else None, batch["advantages"], mask, clip,
                                      num_tokens=normaliser, grad_accum_steps=cfg.train.grad_accum)
        else:
            loss, metrics = rloo_loss(logps, old, batch["advantages"], mask, clip)
            loss = loss * logps.shape[0] / normaliser
        cm = batch["completion_mask"]
        n = cm.sum().clamp(min=1)
        with torch.no_grad():
            metrics["entropy"] = ((entropy * cm).sum() / n).item()
            if ref is not None:  # over every completion token, whatever the loss mask
                metrics["kl"] = ((kl_k3(logps, ref) * cm).sum() / n).item()
        return loss, metrics

    return step


def grpo_weight(cfg: GRPOConfig) -> Callable[[dict], float]:
    if cfg.algorithm == "rloo":
        return lambda b: b["input_ids"].shape[0]
    return lambda b: float(b["loss_mask"].sum())


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def run(cfg: GRPOConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    reference_kind = check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, out, model_dir = resolve_device(cfg.train.device), Path(cfg.out_dir), resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    r = cfg.rollout

    # 1. prompts, the task that checks replies to them, held-out prompts for accuracy
    prompts: PromptSet = load_prompt_sets(r, tok, train_records, val_records, recipe=cfg.algorithm)
    print(f"{cfg.algorithm} data: {len(prompts.records):,} prompts ({prompts.task.name}), {r.prompts_per_step} x "
          f"{r.num_generations} completions per step; {len(prompts.val_records)} held-out prompts"
          + ("" if prompts.val_records else " (no held-out accuracy: the reward-hacking alarms need it)"))

    # 2. the policy and the reference
    set_seed(cfg.train.seed)
    model = load_policy(model_dir, cfg.method, cfg.lora, device)
    longest = max(map(len, prompts.ids)) + r.max_completion_length
    if longest > model.config.max_seq_len:
        print(f"warning: prompts of up to {max(map(len, prompts.ids))} tokens + max_completion_length="
              f"{r.max_completion_length} exceed the model's {model.config.max_seq_len} positions")
    reference = None if reference_kind == "none" else Reference(reference_kind, model)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # 3-5. rollout batches: prompts -> completions -> rewards -> log-probs -> advantages
    runner, names = reward_runner(r, prompts.task, warn=tqdm.write, device=device)  # a `prm` reward: on device
    monitor = RLMonitor(cfg.alarms, warn=tqdm.write)
    autocast = autocast_for(cfg.train.dtype, device)
    need_old = cfg.num_iterations > 1 or (cfg.algorithm == "rloo" and cfg.beta != 0)
    remote = server_rollouts(r, tok, cfg.model, warn=tqdm.write)  # None: rollouts in this process

    def rollout_batch(indices: list[int], index: int) -> RolloutBatch:
        seeds = rollout_seeds(cfg.train.seed, index, len(indices) * r.num_generations)
        return collect_rollouts(model, tok, prompts, indices, r, runner, names, reference, seeds, tok.padding_id,
                                need_old, advantages_rule(cfg), autocast, remote)

    sampler = EpochSampler(len(prompts.records), r.prompts_per_step, cfg.train.seed, what="prompts")
    data = RolloutBuffer(rollout_batch, sampler, runner, monitor, device, parts=cfg.train.grad_accum,
                         passes=cfg.num_iterations)
    print(f"reward functions: {describe_rewards(runner, names)}; reference: {reference_kind}")

    # 6-7. the update, the monitors, held-out accuracy (greedy) before the first step and every train.eval_every
    trainer: Trainer | None = None
    evaluate, sample = held_out_evaluator(tok, prompts.task, prompts.val_records, r.eval_tokens(), monitor,
                                          step=lambda: trainer.step if trainer else 0)
    trainer = Trainer(cfg.train, model, data, grpo_step(cfg), out, evaluate=evaluate, sample=sample,
                      weight_fn=grpo_weight(cfg), run_config=asdict(cfg), step_metrics=data.step_metrics)
    start = start_metrics(model, evaluate, cfg.train, device, out, resume)
    try:
        result = trainer.fit(resume=resume)
    finally:
        if remote is not None:
            remote.close()
    finish_run(result, out, start, monitor, runner, names, len(prompts.records), title=rl_title(cfg.algorithm, out),
               plot=cfg.train.plot)

    # 8. the model directory
    if result["status"] == "finished":
        save_policy(trainer.export_model(), cfg.method, cfg.model, out, tok, model_meta(cfg.algorithm, cfg, result),
                    result)
        summary = write_result(out, result, monitor)
        print(f"{cfg.algorithm}: {result['step']} steps ({result['train_seconds']:.0f} s), {summary}; "
              f"model: {result['model_dir']}")
    return result
