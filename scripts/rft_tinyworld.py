"""Rejection-sampling fine-tuning on TinyWorld: does SFT on the model's own verified answers raise its accuracy?

    python scripts/rft_tinyworld.py --run runs/pipeline [--n 8] [--steps 150] [--out runs/rft]

1. the pipeline's SFT model answers every training prompt of levels 3-4 `n` times at temperature 1
   (alignlab.synth.rejection.verified_sft_data), TinyWorld's verifier scores each answer
2. the verified answers (distinct ones, up to `per_prompt` per prompt) become trl chats, checked against every
   held-out TinyWorld prompt (13-gram decontamination) and written with their provenance
3. SFT from the same SFT model on those chats (`steps` steps, learning rate `lr`)
4. both models answer every held-out prompt of levels 3-4 greedily; the change in accuracy and its paired
   bootstrap 95% interval (prompts resampled) are printed, with the best-of-n curve of step 1

The last line is JSON: {"before", "after", "change", "ci", "kept", ...}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignlab.data.world import TinyWorld
from alignlab.eval.backends import EngineModel
from alignlab.eval.stats import paired_bootstrap_ci
from alignlab.eval.world_suite import evaluate_on_world
from alignlab.model.hf import load_model
from alignlab.recipes import sft
from alignlab.synth import rejection as rj
from alignlab.synth.decontam import decontaminate, eval_index, world_test_sources
from alignlab.synth.output import write_dataset
from alignlab.tasks import TinyWorldMath
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig

LEVELS = (3, 4)


def accuracy_rows(model_dir: Path, world: TinyWorld) -> list[bool]:
    model, tok = load_model(model_dir, dtype=torch.float32), load_tokenizer(model_dir)
    _, rows = evaluate_on_world(model, tok, world, safety=0, levels=LEVELS, max_new_tokens=96)
    return [r["correct"] for r in rows if r["task"] == "math"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/pipeline", help="a finished `alignlab pipeline` run directory")
    ap.add_argument("--out", default=None, help="default: RUN/rft")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--per-prompt", type=int, default=2, help="verified answers kept per prompt, at most")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "rft"
    seed = json.loads((run / "pipeline.json").read_text())["seed"]
    world, sft_dir = TinyWorld(seed=seed), run / "sft" / "model"
    t0 = time.time()

    # 1. sample and verify
    records = [r for level in LEVELS for r in world.rl_prompts("train", level)]
    model, tok = load_model(sft_dir, dtype=torch.float32).requires_grad_(False), load_tokenizer(sft_dir)
    data, counts, curve = rj.verified_sft_data(EngineModel(model, tok, batch_size=256), TinyWorldMath(), records,
                                               args.n, per_prompt=args.per_prompt, max_tokens=96, seed=seed)
    rj.plot_best_of_n(curve, out / "best_of_n.png", f"SFT model, levels 3-4 training prompts (seed {seed})")

    # 2. decontaminate the verified ones, write
    sources = world_test_sources(seed)
    data, report = decontaminate(data, eval_index(sources))
    write_dataset(out / "rft.jsonl", data, {"command": "scripts/rft_tinyworld.py", "teacher": str(sft_dir),
                                            "prompts": f"tinyworld:rl:3-4:train@{seed}", "seed": seed,
                                            "settings": vars(args), "filters": counts, "best_of_n": curve,
                                            "decontamination": {"against": sources, **report.as_dict()}})
    sample_seconds = time.time() - t0
    print(f"rft data: {counts['kept']} verified answers from {len(records)} prompts x {args.n}; "
          f"{counts['prompts_with_none']} prompts with none; {len(report.dropped)} dropped by decontamination")

    # 3. SFT on them
    cfg = sft.SFTConfig(out_dir=str(out / "sft"), model=str(sft_dir), max_len=256, batch_size=args.batch,
                        eval_batches=2, sample_prompts=1, sample_tokens=96,
                        train=TrainConfig(max_steps=args.steps, lr=args.lr, warmup_steps=args.steps // 10,
                                          min_lr_ratio=0.1, eval_every=0, save_every=0, seed=seed))
    result = sft.run(cfg, resume=True, train_records=data, val_records=data[:64])

    # 4. before and after, on every held-out prompt of levels 3-4
    before, after = accuracy_rows(sft_dir, world), accuracy_rows(Path(result["model_dir"]), world)
    change, low, high = paired_bootstrap_ci([float(x) for x in before], [float(x) for x in after], n_boot=2000)
    summary = {"seed": seed, "prompts": len(before), "before": sum(before) / len(before),
               "after": sum(after) / len(after), "change": change, "ci": [low, high], "kept": len(data),
               "pass@1": curve["accuracy"][0], f"pass@{curve['n'][-1]}": curve["accuracy"][-1],
               "sample_seconds": round(sample_seconds), "sft_seconds": round(result["train_seconds"]),
               "steps": args.steps, "lr": args.lr}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"levels 3-4 held-out accuracy: {summary['before']:.1%} -> {summary['after']:.1%} "
          f"({100 * change:+.1f} points, 95% paired bootstrap interval {100 * low:+.1f} to {100 * high:+.1f})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
