"""Learning-rate sweep: the same short character-level run at several peak learning rates.

    .venv/bin/python labs/00_pretraining_fundamentals/lr_sweep.py
    .venv/bin/python labs/00_pretraining_fundamentals/lr_sweep.py --source /path/to/input.txt   (offline)

Every run uses the same model (GPT-2 style, 4 layers, dim 128), the same data order (same seed), the same
validation windows and the same cosine schedule; only `train.lr` changes. Each run is short (400 steps of
16 x 64 characters, ~0.4M characters, about 30 s on 2 CPU cores), so the whole sweep takes a few minutes.

Writes runs/lr_sweep/lr_<value>/ (an ordinary `alignlab pretrain` run directory each), and in runs/lr_sweep/
lr_sweep.png (validation curves, and final validation loss against learning rate) and lr_sweep.json (the
numbers); the plot and numbers beside this file are the README's (`--png` writes elsewhere). A run that diverges
(NaN/Inf loss) is reported as such and drawn as a cross.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

from alignlab.config import load_config
from alignlab.errors import UserError
from alignlab.recipes.pretrain import PretrainConfig, run
from alignlab.train.metrics import read_metrics
from alignlab.train.trainer import TrainingDiverged

# The short run every learning rate gets (key=value overrides of PretrainConfig, as on the command line).
BASE = [
    "data.tokenizer=char",
    "model.arch=gpt2", "model.dim=128", "model.n_layers=4", "model.n_heads=4",
    "block_size=64", "batch_size=16", "eval_batches=10",
    "train.max_steps=400", "train.warmup_steps=40", "train.min_lr_ratio=0.1",
    "train.beta2=0.99", "train.weight_decay=0.1",
    "train.eval_every=50", "train.save_every=0", "train.plot=false", "train.overwrite=true",
    "sample_tokens=64",
]


def train_one(lr: float, source: str, out_root: Path) -> dict:
    """One run at peak learning rate `lr`; its progress bar goes to <run>/train.log."""
    out_dir = out_root / f"lr_{lr:g}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(PretrainConfig, None, [*BASE, f"data.source={source}", f"out_dir={out_dir}", f"train.lr={lr}"])
    t0 = time.perf_counter()
    with open(out_dir / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = run(cfg)
            status = "finished"
        except TrainingDiverged as e:
            result, status = {}, f"diverged: {e}"
    records = read_metrics(out_dir / "metrics.jsonl")
    return {
        "lr": lr,
        "status": status,
        "val_loss": result.get("val_loss", math.nan),
        "seconds": round(time.perf_counter() - t0, 1),
        "val_curve": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r],
        "train_curve": [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)],
    }


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        if r["val_curve"]:
            steps, losses = zip(*r["val_curve"])
            left.plot(steps, losses, marker="o", ms=3, label=f"lr {r['lr']:g}")
    left.set_xlabel("step")
    left.set_ylabel("validation loss (nats per character)")
    left.set_title("validation loss during training")
    left.set_ylim(top=3.5)
    left.grid(alpha=0.3)
    left.legend()

    ok = [r for r in results if math.isfinite(r["val_loss"])]
    bad = [r for r in results if not math.isfinite(r["val_loss"])]
    right.plot([r["lr"] for r in ok], [r["val_loss"] for r in ok], marker="o")
    for r in ok:
        right.annotate(f"{r['val_loss']:.3f}", (r["lr"], r["val_loss"]), textcoords="offset points",
                       xytext=(0, 6), ha="center", fontsize=8)
    if bad:
        top = max([r["val_loss"] for r in ok], default=3.0)
        right.plot([r["lr"] for r in bad], [top] * len(bad), "rx", ms=10, label="diverged")
        right.legend()
    right.set_xscale("log")
    right.set_xlabel("peak learning rate")
    right.set_ylabel(f"validation loss after {results[0]['val_curve'][-1][0] if ok else '?'} steps")
    right.set_title("final validation loss vs learning rate")
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="tinyshakespeare", help="the corpus (a known name, a path or a URL)")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--out", default="runs/lr_sweep", help="where the run directories go")
    p.add_argument("--png", default=None, help="the plot (default: OUT/lr_sweep.png; the numbers go beside it)")
    args = p.parse_args()
    args.png = args.png or str(Path(args.out) / "lr_sweep.png")

    results = []
    for lr in args.lrs:
        r = train_one(lr, args.source, Path(args.out))
        print(f"lr {lr:<8g} val loss {r['val_loss']:.4f}  ({r['seconds']:.0f} s, {r['status'].split(':')[0]})",
              flush=True)
        results.append(r)
    plot(results, Path(args.png))
    summary = {"config": BASE, "results": [{k: r[k] for k in ("lr", "val_loss", "seconds", "status")} for r in results]}
    Path(args.png).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    best = min((r for r in results if math.isfinite(r["val_loss"])), key=lambda r: r["val_loss"], default=None)
    if best:
        print(f"best: lr {best['lr']:g} (val loss {best['val_loss']:.4f})")
    print(f"plot: {args.png}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # offline without --source, a bad path: one line, not a traceback
        sys.exit(f"lr_sweep.py: error: {e} (offline? pass --source path/to/input.txt)")
