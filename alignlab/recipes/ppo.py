"""PPO with a value model: GAE(gamma, lambda) advantages, clipped policy and value losses, verifiable rewards.

    alignlab ppo --config configs/ppo/tinyworld.yaml [key=value ...] [--resume]

RLHF's PPO (Ziegler et al. 2019, arXiv:1909.08593; Stiennon et al. 2020; Ouyang et al. 2022, arXiv:2203.02155),
as trl's PPOTrainer runs it (its option names), with the rewards of GRPO's reward functions instead of a reward
model. Where GRPO needs G answers per prompt to compare them, PPO learns a baseline: a critic V(x, o_<t) that
predicts, at every token, the score the completion will end with. One prompt, one answer (num_generations=1) is
enough. Everything before the advantages is shared with GRPO through alignlab/rl/: the `rollout:` block (prompt
sources, batched seeded rollouts, RewardRunner; rl/collect.py), the reference, the monitors and alarms, the held-out
accuracy.

One rollout batch, then num_ppo_epochs x num_mini_batches optimizer steps on it:

1. rollouts    rollout.prompts_per_step prompts x rollout.num_generations completions from the current policy
2. scores      every reward function on every completion through RewardRunner; the weighted total is the score
               s_i (trl's "scores"); missing_eos_penalty is subtracted from completions cut off without EOS (trl).
               A completion no function could score (total None) leaves both losses.
3. no-grad     once per batch: log pi_old (the sampling policy, temperature-scaled as in the loss), log pi_ref,
               and the critic's values V_old at every completion token: the head at the position that predicts
               that token (the prompt and the completion before it), as trl reads value[:, prompt_len - 1 : -1]
4. rewards     per token (objectives.rl.token_rewards):  r_t = -kl_coef * KL_t  +  s_i [t = last token]
               KL_t = log pi_old - log pi_ref (k1, trl's default kl_estimator) or k3; whiten_rewards=true rescales
               r (trl's masked_whiten without the mean shift)
5. advantages  GAE (objectives.rl.gae): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
               V = 0 after the last token; returns R_t = A_t + V_t (the critic's target); A whitened over the batch's
               tokens (trl). `ppo_advantages` is this step, a pure function (tests/test_recipe_ppo.py checks it).
6. update      each epoch shuffles the batch (seeded per rollout and epoch) into num_mini_batches mini-batches,
               each one optimizer step over train.grad_accum micro-batches:
                   loss = ppo_policy_loss(cliprange) + vf_coef * ppo_value_loss(cliprange_value)
               both token means over the mini-batch. The first mini-batch of the first epoch has ratio 1.
7. save        as GRPO (checkpoints with the rollout buffer, exact resume; metrics.jsonl; plots/rl.png), plus
               <out_dir>/value_model, the critic as a sequence-classification directory (RewardModel's format: it
               loads as value_model=... to continue, or in transformers' AutoModelForSequenceClassification)

train.max_steps counts optimizer steps: a rollout batch lasts num_ppo_epochs * num_mini_batches of them (trl
counts the rollout batches as its "updates"), and the learning-rate schedule runs over optimizer steps.

THE CRITIC (`value_model`). Empty (default): a separate model, the policy's starting weights with a new scalar head
(RewardModel.from_causal_lm: the language-model head dropped, Linear(dim, 1) drawn N(0, init_std^2) so values
start near 0). trl initialises it from the reward model; with verifiable rewards there is none, and the SFT
policy is the network that already reads these prompts. A directory: a reward model or an earlier run's
value_model (it has score.weight: loaded as it is), or a language model (new head). It is a separate network,
not a value head on the policy's backbone (trl's old AutoModelForCausalLMWithValueHead): the value loss cannot
pull the policy's features, vf_coef only balances the two gradients in one optimizer, and each exports cleanly;
the price is a second model in memory.
method=lora puts adapters on both backbones; the critic's head is trained in full (PEFT's modules_to_save).

ONE OPTIMIZER. The policy and the critic are one module (ActorCritic, trl's PolicyAndValueWrapper), so the shared
Trainer's one AdamW (one learning rate), its gradient clipping (one global norm over both), its checkpoints (the
critic is restored with the policy and the optimizer's moments) and DDP cover both unchanged. FSDP is not
supported (its wrapping knows one transformer).

METRICS (trl's names, without its _avg suffix; trl's "val/" prefix means the value function, while val/accuracy
and val/format_* are the held-out evaluation, as in GRPO). Per rollout batch: objective/scores (mean score),
objective/kl (k1 summed over a completion, mean over completions), objective/non_score_reward (-kl_coef * that),
objective/rlhf_reward (scores + non-score reward), objective/entropy (-log pi_old summed over a completion),
objective/returns and objective/values (token means), and all of GRPO's rollout metrics (reward, rewards/<f>/*,
completions/*, format_rate, accuracy, ...; with num_generations=1 the whole batch is one "group" for reward_std and
frac_reward_zero_std, so the zero-variance alarm means: every completion got the same score). Per optimizer step:
loss/policy, loss/value, policy/clipfrac, policy/approxkl, val/clipfrac, val/vpred (mean V), val/error (mean
(V - R)^2), and the monitors' entropy and kl (k3 per token, as GRPO logs it, so the two compare).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from alignlab.config import save_config
from alignlab.data.sampler import EpochSampler
from alignlab.errors import ConfigError
from alignlab.lora import LoraOptions, apply_lora, merge_and_unload
from alignlab.model.hf import read_config, resolve_model_dir
from alignlab.model.reward import RewardModel, load_reward_model, save_reward_model
from alignlab.objectives.rl import gae, kl_k3, ppo_policy_loss, ppo_value_loss, token_rewards, whiten
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

KL_ESTIMATORS = ("k1", "k3")




@dataclass
class PPOConfig:
    out_dir: str = "runs/ppo"
    model: str = ""  # the policy's starting point (a model directory, usually after SFT)
    value_model: str = ""  # the critic: empty = the policy's starting weights + a new scalar head (module docstring)
    # prompts, sampling, rewards (rl/collect.py); PPO needs one completion per prompt: the critic is the baseline
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(num_generations=1, prompts_per_step=64))
    kl_coef: float = 0.05  # per-token KL penalty in the reward (trl's default)
    kl_estimator: str = "k1"  # k1 = log pi_old - log pi_ref (trl's default) | k3
    gamma: float = 1.0  # discount (trl: 1)
    lam: float = 0.95  # GAE lambda (trl: 0.95)
    cliprange: float = 0.2  # the policy ratio's clip range
    cliprange_value: float = 0.2  # how far a value may move from V_old within one rollout batch
    vf_coef: float = 0.1  # loss = policy loss + vf_coef * value loss (trl: 0.1)
    num_ppo_epochs: int = 4  # passes over each rollout batch (trl: 4)
    num_mini_batches: int = 1  # optimizer steps per pass (trl: 1)
    whiten_rewards: bool = False  # rescale the per-token rewards to unit variance before GAE (trl: False)
    missing_eos_penalty: float | None = None  # subtracted from the score of completions without EOS (trl); None: off
    reference: str = "auto"  # auto | copy | lora | none (none: kl_coef = 0 only)
    track_kl: bool = True  # compute the KL to the reference for the monitor even when kl_coef = 0
    method: str = "full"  # full | lora (adapters on the policy and the critic)
    lora: LoraOptions = field(default_factory=LoraOptions)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0, eval_every=40,
        save_every=40, keep_last=2))


# ----------------------------------------------------------------------------------------------------------------
# The critic and the policy as one module


def completion_values(critic: RewardModel, input_ids: torch.Tensor, prompt_lens: torch.Tensor,
                      num_completion_tokens: int) -> torch.Tensor:
    """V at every completion token, [N, C]: the critic's head at position prompt_len + j - 1, the hidden state that
    has read the prompt and o_<j (the one that predicts token j, as in completion_logps). Float32; positions past a
    row's completion hold whatever the head says there (the losses mask them)."""
    values = critic.token_rewards(input_ids).float()  # [N, T]: the head at every position
    T = values.shape[1]
    pos = prompt_lens[:, None] - 1 + torch.arange(num_completion_tokens, device=values.device)
    return values.gather(1, pos.clamp(max=T - 1))


class ActorCritic(nn.Module):
    """The policy (a CausalLM) and the critic (a RewardModel read at every token) as one module, so one optimizer,
    one gradient clip, one checkpoint and DDP's forward cover both (trl's PolicyAndValueWrapper)."""

    def __init__(self, policy: nn.Module, critic: RewardModel):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, input_ids, prompt_lens, completion_ids, completion_mask, temperature: float = 1.0):
        """(log pi of each completion token [N, C], its entropy [N, C] (no gradient), V [N, C])."""
        logps, entropy = completion_logps(self.policy, input_ids, prompt_lens, completion_ids, completion_mask,
                                          temperature, entropy=True)
        return logps, entropy, completion_values(self.critic, input_ids, prompt_lens, completion_ids.shape[1])

    @property
    def gradient_checkpointing(self) -> bool:
        return self.policy.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:  # the Trainer's switch, for both
        self.policy.gradient_checkpointing = on
        self.critic.gradient_checkpointing = on


def load_critic(cfg: PPOConfig, model_dir: Path, device) -> RewardModel:
    """The critic per `value_model` (module docstring), in float32, with LoRA on its backbone for method=lora."""
    source = resolve_model_dir(cfg.value_model) if cfg.value_model else model_dir
    hf, _ = read_config(source)
    if any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        critic = load_reward_model(source, device=device, dtype=torch.float32).train()
    else:
        critic = RewardModel.from_causal_lm(source, device=device, dtype=torch.float32)
    if cfg.method == "lora":
        apply_lora(critic.backbone, cfg.lora.to_config())
        critic.score.requires_grad_(True)
    return critic


@torch.no_grad()
def rollout_values(critic: RewardModel, batch: dict, micro_batch: int, autocast=None) -> torch.Tensor:
    """V_old of a whole rollout batch [N, C], without gradients, `micro_batch` rows at a time, in eval mode."""
    was_training = critic.training
    critic.eval()
    C, out = batch["completion_ids"].shape[1], []
    try:
        with autocast or contextlib.nullcontext():
            for s in range(0, batch["input_ids"].shape[0], micro_batch):
                out.append(completion_values(critic, batch["input_ids"][s:s + micro_batch],
                                             batch["prompt_lens"][s:s + micro_batch], C))
    finally:
        critic.train(was_training)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# Advantages


def ppo_advantages(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor | None, values: torch.Tensor,
                   mask: torch.Tensor, kl_coef: float = 0.05, gamma: float = 1.0, lam: float = 0.95,
                   whiten_rewards: bool = False, kl_estimator: str = "k1") -> dict[str, torch.Tensor]:
    """Steps 4-5 of the module docstring on one rollout batch: {"advantages", "returns", "rewards", "kl",
    "loss_mask"}, all [N, C].

    scores [N] (NaN: unscored), logps / ref_logps [N, C] of the sampling policy and the reference (ref None: no
    KL term), values [N, C] = V_old, mask [N, C] = the completion mask. Unscored completions get loss_mask 0: no
    reward, no advantage, no value target.
    """
    loss_mask = mask * (~scores.isnan())[:, None].to(mask.dtype)
    kl = None
    if ref_logps is not None:
        kl = (logps - ref_logps) if kl_estimator == "k1" else kl_k3(logps, ref_logps)
        kl = kl * loss_mask
    rewards = token_rewards(scores.nan_to_num(0.0), loss_mask, kl, kl_coef)
    enough = loss_mask.sum() > 1  # whitening needs two tokens for a variance
    if whiten_rewards and enough:
        rewards = whiten(rewards, loss_mask, shift_mean=False)
    advantages, returns = gae(rewards, values, loss_mask, gamma, lam)
    if enough:
        advantages = whiten(advantages, loss_mask)
    return {"advantages": advantages, "returns": returns, "rewards": rewards,
            "kl": torch.zeros_like(rewards) if kl is None else kl, "loss_mask": loss_mask}


# ----------------------------------------------------------------------------------------------------------------
# Steps 2-5 on a rollout batch: collect_rollouts' advantages, with the critic's values


def advantages_rule(cfg: PPOConfig, critic: RewardModel, autocast=None):
    """collect_rollouts' step 5 for PPO: (scores [N], the batch with old_logps and ref_logps) -> (tensors, metrics):
    V_old from the critic, then `ppo_advantages`; trl's objective/* metrics."""

    def advantages(scores: torch.Tensor, batch: dict) -> tuple[dict, dict]:
        mask, old, ref = batch["completion_mask"], batch["old_logps"], batch.get("ref_logps")
        scores = scores.to(mask.device)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * batch["truncated"].float()
        values = rollout_values(critic, batch, cfg.rollout.logp_batch, autocast)
        adv = ppo_advantages(scores, old, ref if cfg.kl_coef != 0 else None, values, mask, cfg.kl_coef, cfg.gamma,
                             cfg.lam, cfg.whiten_rewards, cfg.kl_estimator)
        lm = adv["loss_mask"]
        k1 = ((old - ref) * mask).sum(-1) if ref is not None else torch.zeros(len(scores), device=mask.device)
        tokens = lm.sum().clamp(min=1)
        objective = {
            "objective/scores": scores.nanmean().item(), "objective/kl": k1.mean().item(),
            "objective/non_score_reward": -cfg.kl_coef * k1.mean().item(),
            "objective/rlhf_reward": scores.nanmean().item() - cfg.kl_coef * k1.mean().item(),
            "objective/entropy": (-old * mask).sum(-1).mean().item(),
            "objective/returns": ((adv["returns"] * lm).sum() / tokens).item(),
            "objective/values": ((values * lm).sum() / tokens).item()}
        return {"scores": scores, "old_values": values * lm, "advantages": adv["advantages"],
                "returns": adv["returns"], "loss_mask": lm}, objective

    return advantages


# ----------------------------------------------------------------------------------------------------------------
# The update: the Trainer's loss_fn


def ppo_step(cfg: PPOConfig):
    """(model, micro-batch, normaliser) -> (loss, metrics). The normaliser is the mini-batch's loss-mask tokens
    (ppo_weight), so the summed micro-batch losses are the two token means over the whole mini-batch."""

    def step(model, batch: dict, normaliser: float):
        logps, entropy, values = model(batch["input_ids"], batch["prompt_lens"], batch["completion_ids"],
                                       batch["completion_mask"], cfg.rollout.temperature)
        mask = batch["loss_mask"]
        policy_loss, pm = ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, cfg.cliprange)
        value_loss, vm = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, cfg.cliprange_value)
        share = mask.sum() / normaliser
        loss = (policy_loss + cfg.vf_coef * value_loss) * share
        cm = batch["completion_mask"]
        with torch.no_grad():
            n, t = cm.sum().clamp(min=1), mask.sum().clamp(min=1)
            metrics = {"loss/policy": policy_loss.item(), "loss/value": value_loss.item(),
                       "policy/clipfrac": pm["clipfrac"], "policy/approxkl": pm["approxkl"],
                       "val/clipfrac": vm["vf_clipfrac"], "val/vpred": ((values * mask).sum() / t).item(),
                       "val/error": (((values - batch["returns"]) ** 2 * mask).sum() / t).item(),
                       "entropy": ((entropy * cm).sum() / n).item()}
            if "ref_logps" in batch:  # the monitor's kl: k3 per token over every completion token, as GRPO's
                metrics["kl"] = ((kl_k3(logps, batch["ref_logps"]) * cm).sum() / n).item()
        return loss, metrics

    return step


def ppo_weight(batch: dict) -> float:
    return float(batch["loss_mask"].sum())


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def check(cfg: PPOConfig) -> str:
    """Validate the config; returns the resolved reference kind."""
    for name, value, allowed in (("method", cfg.method, ("full", "lora")),
                                 ("kl_estimator", cfg.kl_estimator, KL_ESTIMATORS)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not cfg.model:
        raise ConfigError("model: the model directory to start from is not set (model=path/to/model)")
    cfg.rollout.check()
    for name in ("num_ppo_epochs", "num_mini_batches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    rows = cfg.rollout.prompts_per_step * cfg.rollout.num_generations
    parts = cfg.num_mini_batches * cfg.train.grad_accum
    if rows < parts:
        raise ConfigError(f"num_mini_batches * train.grad_accum = {parts} micro-batches need at least as many "
                          f"completions; rollout.prompts_per_step * rollout.num_generations = {rows}")
    if not (0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1):
        raise ConfigError(f"gamma and lam must be in [0, 1], got gamma={cfg.gamma}, lam={cfg.lam}")
    if cfg.train.distributed == "fsdp":
        raise ConfigError("train.distributed=fsdp: PPO's policy + critic module runs on one process or under DDP")
    return resolve_reference(cfg.reference, cfg.method, cfg.track_kl, "kl_coef", cfg.kl_coef)


def run(cfg: PPOConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    reference_kind = check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, out, model_dir = resolve_device(cfg.train.device), Path(cfg.out_dir), resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    r = cfg.rollout

    # prompts (and the task that checks replies to them); held-out prompts for accuracy
    prompts: PromptSet = load_prompt_sets(r, tok, train_records, val_records, recipe="ppo")
    steps = cfg.num_ppo_epochs * cfg.num_mini_batches
    print(f"ppo data: {len(prompts.records):,} prompts ({prompts.task.name}), {r.prompts_per_step} x "
          f"{r.num_generations} completions per rollout batch, {steps} optimizer steps on each; "
          f"{len(prompts.val_records)} held-out prompts")

    # the policy, the critic, the reference
    set_seed(cfg.train.seed)
    policy = load_policy(model_dir, cfg.method, cfg.lora, device)
    critic = load_critic(cfg, model_dir, device)
    if critic.config.vocab_size != policy.config.vocab_size:
        raise ConfigError(f"value_model={cfg.value_model}: vocabulary of {critic.config.vocab_size} tokens, the "
                          f"policy's has {policy.config.vocab_size}; the critic must read the policy's tokens")
    model = ActorCritic(policy, critic)
    reference = None if reference_kind == "none" else Reference(reference_kind, policy)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    # rollout batches: prompts -> completions -> scores -> pi_old, pi_ref, V_old -> GAE advantages
    runner, names = reward_runner(r, prompts.task, warn=tqdm.write)
    monitor = RLMonitor(cfg.alarms, warn=tqdm.write)
    autocast = autocast_for(cfg.train.dtype, device)

    def rollout_batch(indices: list[int], index: int) -> RolloutBatch:
        seeds = rollout_seeds(cfg.train.seed, index, len(indices) * r.num_generations)
        return collect_rollouts(policy, tok, prompts, indices, r, runner, names, reference, seeds, tok.padding_id,
                                True, advantages_rule(cfg, critic, autocast), autocast)

    # epochs of shuffled mini-batches: num_ppo_epochs passes of num_mini_batches * grad_accum micro-batches
    sampler = EpochSampler(len(prompts.records), r.prompts_per_step, cfg.train.seed, what="prompts")
    data = RolloutBuffer(rollout_batch, sampler, runner, monitor, device,
                         parts=cfg.num_mini_batches * cfg.train.grad_accum, passes=cfg.num_ppo_epochs,
                         shuffle_seed=cfg.train.seed)
    print(f"reward functions: {describe_rewards(runner, names)}; reference: {reference_kind}; "
          f"critic: {cfg.value_model or 'the policy + a new head'}")

    # the update; held-out accuracy of the policy, greedy, before the first step and every train.eval_every steps
    trainer: Trainer | None = None
    evaluate, sample = held_out_evaluator(tok, prompts.task, prompts.val_records, r.eval_tokens(), monitor,
                                          step=lambda: trainer.step if trainer else 0, policy=lambda m: m.policy)
    trainer = Trainer(cfg.train, model, data, ppo_step(cfg), out, evaluate=evaluate, sample=sample,
                      weight_fn=ppo_weight, run_config=asdict(cfg), step_metrics=data.step_metrics)
    start = start_metrics(model, evaluate, cfg.train, device, out, resume)
    result = trainer.fit(resume=resume)
    finish_run(result, out, start, monitor, runner, names, len(prompts.records), title=rl_title("ppo", out),
               plot=cfg.train.plot, rollouts=data.rollouts)

    # the model directories: the policy, and the critic
    if result["status"] == "finished":
        final = trainer.export_model()
        meta = model_meta("ppo", cfg, result)
        save_policy(final.policy, cfg.method, cfg.model, out, tok, meta, result)
        critic = final.critic
        if cfg.method == "lora":
            merge_and_unload(critic.backbone)
        result["value_model_dir"] = str(save_reward_model(critic, out / "value_model", tokenizer=tok,
                                                          meta={**meta, "stage": "ppo value model"},
                                                          pad_token_id=tok.padding_id))
        summary = write_result(out, result, monitor)
        print(f"ppo: {result['step']} steps on {data.rollouts} rollout batches ({result['train_seconds']:.0f} s), "
              f"{summary}; model: {result['model_dir']}, critic: {result['value_model_dir']}")
    return result
