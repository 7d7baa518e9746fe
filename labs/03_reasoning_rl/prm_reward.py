"""GRPO paid by a process reward model as well as by the answer, against GRPO paid by the answer alone.

    OMP_NUM_THREADS=1 python labs/03_reasoning_rl/prm_reward.py --run runs/table/seed0 \\
        --prm runs/prm/seed0/prm/model --out runs/prm/seed0/grpo --threads 1 [--steps 60]

Two GRPO runs from the pipeline's SFT model (<run>/sft/model) with the pipeline's GRPO settings and prompts
(alignlab/pipeline.py grpo_setup: the seed, steps, lr, 16 prompts x G = 8, levels 3-4 with levels 1-2 replayed),
that differ only in rollout.reward_funcs:

    outcome   format 1 + correctness 1 + prm 0     the pipeline's reward; the PRM's reward is logged, not paid
    prm       format 1 + correctness 1 + prm 1     the PRM's weakest step (alignlab/rewards/prm.py) added

Then every model (the start, each arm's end) answers the held-out prompts of levels 3-4 greedily, and the script
prints accuracy with Wilson intervals, each arm's change paired over prompts (eval/stats.paired_difference), what the
replies are (eval/rerank.solution_kinds: right, right_by_luck, step_error, no_step_error), how many steps they
write, and the PRM's reward on them; and, per training step, rewards/prm/mean next to the rollouts' accuracy and the
held-out accuracy at each evaluation. Over-optimisation: the PRM's reward going up while accuracy does not.
Writes <out>/<arm>/ (GRPO run directories) and <out>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from alignlab.eval.rerank import solution_kinds
from alignlab.eval.stats import paired_difference, rate
from alignlab.eval.world_suite import generate_replies
from alignlab.model.hf import load_model
from alignlab.pipeline import Run, grpo_setup
from alignlab.recipes import grpo
from alignlab.rewards.prm import PRMReward
from alignlab.tasks import task_for
from alignlab.tasks.tinyworld import step_labels, worked_steps
from alignlab.text import load_tokenizer
from alignlab.train.trainer import autocast_for

ARMS = {"outcome": {"format": 1.0, "correctness": 1.0, "prm": 0.0},
        "prm": {"format": 1.0, "correctness": 1.0, "prm": 1.0}}


def held_out_replies(model_dir: Path, prompts: list, max_tokens: int, dtype: str) -> list[str]:
    """Greedy replies, under the precision the GRPO run evaluated with (its Trainer's autocast)."""
    model = load_model(model_dir, dtype=torch.float32)
    with autocast_for(dtype, torch.device("cpu")):
        return generate_replies(model, load_tokenizer(model_dir), prompts, max_tokens)


def describe(replies: list[str], records: list[dict], task, prm: PRMReward) -> dict:
    correct = [task.correct(o, r) for o, r in zip(replies, records)]
    rows = [{"correct": c, "step_labels": step_labels(o)} for o, c in zip(replies, correct)]
    prm_reward = prm([r["prompt"] for r in records], replies)
    return {"correct": correct, "accuracy": rate(sum(correct), len(correct)), "kinds": solution_kinds(rows),
            "mean_steps": sum(len(worked_steps(o)) for o in replies) / len(replies),
            "mean_prm_reward": sum(prm_reward) / len(prm_reward)}


def curve(out: Path) -> list[dict]:
    """Per training step: rewards/prm/mean, the rollouts' accuracy, their length; held-out accuracy where evaluated."""
    keep = ("step", "rewards/prm/mean", "rewards/correctness/mean", "accuracy", "completions/mean_length",
            "val/accuracy")
    by_step: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_step.setdefault(r["step"], {}).update({k: r[k] for k in keep if k in r})
    return [by_step[s] for s in sorted(by_step)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/table/seed0", help="a pipeline run directory (default size)")
    ap.add_argument("--seed", type=int, default=0, help="the pipeline run's seed (its world and GRPO's)")
    ap.add_argument("--prm", default="runs/prm/seed0/prm/model")
    ap.add_argument("--out", default="runs/prm/seed0/grpo")
    ap.add_argument("--steps", type=int, default=0, help="GRPO steps (0: the pipeline's)")
    ap.add_argument("--arms", default="outcome,prm")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run, out, start = Run(args.run, args.seed, quick=False), Path(args.out), Path(args.run) / "sft" / "model"
    summary: dict = {"start": str(start), "prm_model": args.prm, "arms": {}}
    for arm in args.arms.split(","):
        cfg, aimed, replay, held_out = grpo_setup(run, out / arm, start, reward_funcs=ARMS[arm], prm_model=args.prm,
                                                  reward_timeout_s=60.0)
        cfg.threads = args.threads
        if args.steps:
            cfg.train.max_steps, cfg.train.eval_every = args.steps, max(1, args.steps // 3)
            cfg.train.save_every = cfg.train.eval_every
        done = out / arm / "result.json"  # a finished arm is read, not resumed (that would rewrite its result.json)
        result = json.loads(done.read_text()) if done.exists() else {}
        if result.get("status") != "finished" or result.get("step") != cfg.train.max_steps:
            result = grpo.run(cfg, resume=True, train_records=aimed + replay, val_records=held_out)
        summary["arms"][arm] = {"reward_funcs": ARMS[arm], "steps": result["step"], "alarms": result.get("alarms"),
                                "train_seconds": result["train_seconds"], "curve": curve(out / arm)}

    task, prm = task_for("tinyworld:rl"), PRMReward(args.prm)
    prompts, n_tok, dtype = [r["prompt"] for r in held_out], cfg.rollout.max_completion_length, cfg.train.dtype
    models = {"start": start, **{arm: out / arm / "model" for arm in summary["arms"]}}
    held = {name: describe(held_out_replies(d, prompts, n_tok, dtype), held_out, task, prm)
            for name, d in models.items()}
    print(f"held-out levels 3-4, {len(held_out)} prompts, greedy (threads={args.threads}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    for name, h in held.items():
        a = h["accuracy"]
        line = (f"  {name:8s} accuracy {a['value']:.1%} [{a['ci'][0]:.1%}, {a['ci'][1]:.1%}] ({a['k']}/{a['n']}), "
                f"PRM reward {h['mean_prm_reward']:.3f}, steps {h['mean_steps']:.2f}, {h['kinds']}")
        if name != "start":
            d, lo, hi = paired_difference(held["start"]["correct"], h["correct"])
            line += f"; vs start {d:+.1%} [{lo:+.1%}, {hi:+.1%}]"
            h["vs_start"] = [d, lo, hi]
        print(line)
    if {"outcome", "prm"} <= set(held):
        d, lo, hi = paired_difference(held["outcome"]["correct"], held["prm"]["correct"])
        print(f"  prm - outcome (paired): {d:+.1%} [{lo:+.1%}, {hi:+.1%}]")
        summary["prm_minus_outcome"] = [d, lo, hi]
    for arm, s in summary["arms"].items():
        print(f"{arm}: {s['steps']} steps, {s['train_seconds']:.0f} s, alarms {s['alarms']}; steps: mean PRM reward / "
              "rollout accuracy over them, held-out accuracy at their end")
        for lo in range(0, s["steps"], 10):
            rows = [r for r in s["curve"] if lo < r["step"] <= lo + 10 and "accuracy" in r]
            mean = [sum(r[k] for r in rows) / len(rows) for k in ("rewards/prm/mean", "accuracy")]
            val = [r["val/accuracy"] for r in s["curve"] if r["step"] == lo + 10 and "val/accuracy" in r]
            print(f"  {lo + 1:3d}-{lo + 10:3d}: {mean[0]:.3f} / {mean[1]:.3f}" + (f", {val[0]:.1%}" if val else ""))
    summary["held_out"] = {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in held.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
