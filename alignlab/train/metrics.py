"""What a run shows its user: metrics.jsonl (always), TensorBoard (when installed), PNG curves at the end.

metrics.jsonl has one JSON object per line: {"step": 12, "loss": 2.31, "lr": ..., ...} for training steps
and {"step": 200, "val_loss": ...} for evaluations. On resume, records from steps after the checkpoint
(work that was lost when the run died) are dropped so the file reads as one clean run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a crash
                continue
    return records


class MetricsLogger:
    """Append-only metrics.jsonl, mirrored to TensorBoard when `tensorboard=True` and it is installed."""

    def __init__(self, out_dir: Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:  # keep what happened up to the checkpoint, drop the lost steps after it
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed (pip install alignlab[tensorboard]); logging to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, step: int, **values) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no nan/inf
    return round(v, 6) if isinstance(v, float) else v


def plot_curves(metrics_path: Path, out_png: Path, title: str = "") -> Path | None:
    """Training loss (raw and smoothed) and validation loss against step; learning rate underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    lrs = [(r["step"], r["lr"]) for r in records if isinstance(r.get("lr"), (int, float))]
    if not train and not val:
        return None
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        ax.plot(steps, ema(losses), color="tab:blue", label="train (smoothed)")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set_ylabel("loss")
    ax.set_title(title or str(Path(metrics_path).parent.name))
    ax.grid(alpha=0.3)
    ax.legend()
    if lrs:
        ax_lr.plot(*zip(*lrs), color="tab:green")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    return save_figure(fig, out_png, dpi=110)


def save_figure(fig, out_png: str | Path, dpi: int = 100) -> Path:
    """Lay the figure out, write it as a PNG (making its directory) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


def ema(values, beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average, the smoothing TensorBoard applies."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return out
