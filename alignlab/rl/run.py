"""What every RL run does around its steps: the policy, the reward functions, held-out accuracy, the end of the run.

    load_policy(model_dir, method, lora, device)        the starting model (float32), LoRA adapters for method=lora
    reward_runner(cfg.rollout, task, warn)               the config's reward functions behind a RewardRunner
    held_out_evaluator(tok, task, val_records, ...)      the Trainer's evaluate/sample: greedy held-out accuracy
    start_metrics(...)                                    the held-out metrics before the first step
    finish_run(...), save_policy(...), write_result(...) result.json, plots/rl.png, <out>/model (and adapter/)

The policy stays float32 (the master weights); what runs it outside the Trainer (start_metrics here, the recipes'
rollouts) does so under autocast_for(train.dtype, device), the Trainer's precision, decided once per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from alignlab.eval.world_suite import generate_replies
from alignlab.lora import LoraOptions, apply_lora, merge_and_unload, save_adapter
from alignlab.model.hf import load_model, save_model
from alignlab.rewards import RewardRunner
from alignlab.rewards.registry import build_reward_funcs
from alignlab.rl.collect import RolloutConfig
from alignlab.rl.monitor import RLMonitor, plot_rl_curves
from alignlab.tasks import Task, prompt_text
from alignlab.train import checkpoint as ckpt
from alignlab.train.trainer import TrainConfig, autocast_for


def load_policy(model_dir: Path, method: str, lora: LoraOptions, device: torch.device) -> torch.nn.Module:
    """The policy's starting point in float32 on `device`, with LoRA adapters for method=lora."""
    model = load_model(model_dir, dtype=torch.float32)
    if method == "lora":
        apply_lora(model, lora.to_config())
    return model.to(device)


def reward_runner(cfg: RolloutConfig, task: Task, warn: Callable[[str], None],
                  device: torch.device | None = None) -> tuple[RewardRunner, list[str]]:
    """(runner, names): cfg.reward_funcs behind a RewardRunner (reward_timeout_s, reward_isolation,
    reward_memory_mb; failures warned about through `warn` and counted). `device`: the policy's, where a reward
    model (the `prm` reward) runs; None: the CPU."""
    fns, weights, names = build_reward_funcs(cfg.reward_funcs, task, cfg.max_completion_length,
                                             cfg.allow_custom_rewards, cfg.prm_model, device)
    limits = {} if cfg.reward_memory_mb is None else {"memory_mb": cfg.reward_memory_mb}
    return RewardRunner(fns, weights, timeout_s=cfg.reward_timeout_s, isolation=cfg.reward_isolation, warn=warn,
                        **limits), names


def held_out_evaluator(tok, task: Task, val_records: list[dict], max_new_tokens: int, monitor: RLMonitor,
                       step: Callable[[], int],
                       policy: Callable = lambda m: m) -> tuple[Callable | None, Callable | None]:
    """The Trainer's (evaluate, sample) for the held-out prompts, (None, None) without any. evaluate(model): greedy
    replies of policy(model) to every held-out prompt; val/accuracy, val/format_rate, val/format_ok_wrong, plus
    what the monitor's evaluation alarms say at step(). sample: the last evaluation's first three replies."""
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
        shown[:] = [f"{prompt_text(r['prompt'])} -> {o}" for r, o in zip(val_records[:3], replies)]
        return {**metrics, **monitor.observe_eval(step(), metrics)}

    return evaluate, lambda m: list(shown)


def start_metrics(model, evaluate: Callable | None, train: TrainConfig, device: torch.device, out: Path,
                  resume: bool) -> dict:
    """The held-out metrics before the first step, printed; {} without held-out prompts or when resuming from a
    checkpoint (finish_run then takes them from the monitor's step-0 evaluation)."""
    if evaluate is None or (resume and ckpt.latest_checkpoint(out / "checkpoints") is not None):
        return {}
    model.eval()
    with torch.no_grad(), autocast_for(train.dtype, device):
        start = {k: v for k, v in evaluate(model).items() if k.startswith("val/")}
    model.train()
    print("at the start: " + ", ".join(f"{k} {v:.3f}" for k, v in start.items()))
    return start


def rl_title(algorithm: str, out: Path) -> str:
    """The plot's title: the algorithm, and the run directory's name when it says more ("grpo: runs/drgrpo")."""
    return algorithm if out.name == algorithm else f"{algorithm}: {out.name}"


def finish_run(result: dict, out: Path, start: dict, monitor: RLMonitor, runner: RewardRunner, names: list[str],
               prompts: int, title: str, plot: bool = True, **extra) -> dict:
    """After the training loop: into result the start metrics (the monitor's step-0 evaluation when this process
    did not measure them), the alarms raised, the reward functions' failures, the number of prompts and `extra`;
    plots/rl.png when `plot`."""
    if not start and monitor.evals and monitor.evals[0]["step"] == 0:
        start = {k: v for k, v in monitor.evals[0].items() if k != "step"}
    result.update(start=start, alarms=dict(monitor.raised),
                  reward_failures={n: asdict(runner.stats[k]) for n, k in zip(names, runner.names)},
                  prompts=prompts, **extra)
    if plot:
        plot_rl_curves(out / "metrics.jsonl", out / "plots" / "rl.png", title=title, start=start)
    return result


def model_meta(stage: str, config, result: dict) -> dict:
    """The exported model's provenance: its stage, parent, the run's config and its result."""
    return {"stage": stage, "parent": config.model, "config": asdict(config),
            "metrics": {k: v for k, v in result.items() if k not in ("last_checkpoint", "reward_failures")}}


def save_policy(policy, method: str, parent: str, out: Path, tok, meta: dict, result: dict) -> None:
    """<out>/model: the trained policy (for method=lora: its adapters to <out>/adapter, then merged into it); the
    directories into result (adapter_dir, model_dir)."""
    if method == "lora":
        result["adapter_dir"] = str(save_adapter(policy, out / "adapter", policy.lora_config,
                                                 base_model_name_or_path=parent))
        policy = merge_and_unload(policy)
    result["model_dir"] = str(save_model(policy, out / "model", tokenizer=tok, meta=meta))


def write_result(out: Path, result: dict, monitor: RLMonitor) -> str:
    """<out>/result.json; returns the run's summary: the held-out accuracy from the start to the end, the alarms."""
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    acc = (f"held-out accuracy {result['start'].get('val/accuracy', math.nan):.1%} -> {result['val/accuracy']:.1%}"
           if "val/accuracy" in result else "no held-out prompts")
    return acc + (f"; alarms: {', '.join(monitor.raised)}" if monitor.raised else "")
