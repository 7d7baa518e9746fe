"""Monitors of an RL run and its reward-hacking alarms: pure logic over the history of logged metrics.

An RL policy optimises the reward it is given, not the skill the reward was meant to measure. When the two part
ways the metrics show it before the samples do (Skalse et al. 2022, arXiv:2209.13085; Gao et al. 2022,
arXiv:2210.10760, on over-optimising a proxy). RLMonitor watches the per-step metrics (trl's names: reward,
reward_std, frac_reward_zero_std, kl, entropy, completions/mean_length) and the held-out evaluations (val/accuracy),
and raises these alarms:

    reward_hacking    the training reward rose (by `reward_rise` reward standard deviations, first window to last)
                      while the held-out accuracy stayed flat or fell (rose by at most `accuracy_flat`): the policy
                      found a way to be paid that is not solving the task (or it memorises its training prompts:
                      the same symptom, read the samples to tell them apart)
    length_growth     completions grew by a factor `length_growth` with no held-out accuracy gain: padding,
                      repetition, or reasoning that does not help (long outputs are also what a length-biased
                      normalisation rewards -- Dr. GRPO, arXiv:2503.20783)
    kl_blowup         the per-token KL to the reference exceeds `kl_max` nats, or jumps to `kl_jump` times its
                      median over the previous window (above `kl_floor`): the policy is leaving the region where
                      its reward was measured, often just before the loss turns NaN
    entropy_collapse  the per-token entropy fell below `entropy_collapse` times its first window's mean: the policy
                      answers the same way every time, exploration is over, and every group starts to have zero
                      variance (DAPO, arXiv:2503.14476, raises epsilon_high against exactly this)
    zero_variance     every group of this step had equal rewards (all right, all wrong, or a reward that ignores the
                      completion): every advantage is 0 and the step teaches nothing (trl#3857)

Each alarm is printed once, the first time it holds, with what to look at; on every step where it holds the
metrics carry "alarm/<name>": 1 (so metrics.jsonl and the plots show when). `check_alarms(history, evals, cfg)` is
the pure function the monitor calls; it needs no model and is what the tests drive with synthetic histories.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ALARMS = ("reward_hacking", "length_growth", "kl_blowup", "entropy_collapse", "zero_variance")


@dataclass
class AlarmConfig:
    window: int = 10  # steps averaged at each end of a trend (the first and the latest `window` logged steps)
    reward_rise: float = 0.5  # reward_hacking: the mean reward rose by this many reward stds (first window's)
    accuracy_flat: float = 0.01  # held-out accuracy counts as flat if it rose by at most this (absolute)
    length_growth: float = 1.5  # length_growth: mean completion length grew by this factor
    kl_max: float = 1.0  # kl_blowup: per-token KL (nats) above this ...
    kl_jump: float = 10.0  # ... or this many times its median over the previous window
    kl_floor: float = 0.1  # (a jump only counts above this KL: small KLs are noisy)
    entropy_collapse: float = 0.1  # entropy_collapse: entropy below this fraction of its first window's mean


def _values(history: list[dict], key: str) -> list[float]:
    return [float(h[key]) for h in history if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _ends(xs: list[float], window: int) -> tuple[float, float] | None:
    """Means of the first and the last `window` values, once there are 2 * window (the two ends do not overlap)."""
    if window < 1 or len(xs) < 2 * window:
        return None
    return _mean(xs[:window]), _mean(xs[-window:])


def _accuracy_gain(evals: list[dict], key: str = "val/accuracy") -> float | None:
    """Latest held-out accuracy minus the first (None before two evaluations)."""
    accs = _values(evals, key)
    return accs[-1] - accs[0] if len(accs) >= 2 else None


def check_alarms(history: list[dict], evals: list[dict], cfg: AlarmConfig | None = None) -> dict[str, str]:
    """The alarms that hold now, {name: message}, from the per-step metrics (oldest first) and the held-out
    evaluations (oldest first, each with val/accuracy)."""
    cfg = cfg or AlarmConfig()
    w = cfg.window
    alarms: dict[str, str] = {}
    gain = _accuracy_gain(evals)

    rewards = _values(history, "reward")
    ends = _ends(rewards, w)
    if ends is not None and gain is not None:
        stds = _values(history[:max(w, 1)], "reward_std")
        scale = max(_mean(stds) if stds else 0.0, 1e-3)
        r0, r1 = ends
        if r1 - r0 > cfg.reward_rise * scale and gain <= cfg.accuracy_flat:
            alarms["reward_hacking"] = (
                f"the training reward rose {r0:.3f} -> {r1:.3f} (+{(r1 - r0) / scale:.1f} std) while held-out "
                f"accuracy changed by {gain:+.3f}: the policy is being paid for something other than solving the "
                "task, or is memorising its training prompts. Read samples.jsonl and the rollouts' format_ok_wrong "
                "rate; check each reward function alone (rewards/<name>/mean)")

    lengths = _values(history, "completions/mean_length")
    ends = _ends(lengths, w)
    if ends is not None and gain is not None:
        l0, l1 = ends
        if l0 > 0 and l1 >= cfg.length_growth * l0 and gain <= cfg.accuracy_flat:
            alarms["length_growth"] = (
                f"completions grew {l0:.1f} -> {l1:.1f} tokens (x{l1 / l0:.2f}) while held-out accuracy changed by "
                f"{gain:+.3f}: longer is not better here. Look for repetition or padding; consider loss_type=dr_grpo "
                "or dapo (no length bias), a length penalty (reward_funcs.length), or mask_truncated_completions")

    kls = _values(history, "kl")
    if kls:
        last = kls[-1]
        previous = kls[-w - 1:-1] if w >= 1 else []
        median = statistics.median(previous) if previous else None
        if last > cfg.kl_max:
            alarms["kl_blowup"] = (f"the KL to the reference is {last:.3f} nats per token (> {cfg.kl_max:g}): the "
                                   "policy has moved far from where it started. Lower the learning rate, raise beta, "
                                   "or look for a reward that pays degenerate text")
        elif median is not None and last > cfg.kl_floor and last > cfg.kl_jump * max(median, 1e-8):
            alarms["kl_blowup"] = (f"the KL to the reference jumped to {last:.3f} from a median of {median:.4f} over "
                                   f"the previous {len(previous)} steps (x{last / max(median, 1e-8):.0f}): an unstable "
                                   "update. Lower the learning rate or epsilon, or raise beta")

    entropies = _values(history, "entropy")
    ends = _ends(entropies, w)
    if ends is not None:
        e0, e1 = ends
        if e0 > 0 and e1 < cfg.entropy_collapse * e0:
            alarms["entropy_collapse"] = (
                f"the per-token entropy fell {e0:.4f} -> {e1:.4f} nats (below {cfg.entropy_collapse:g} of where it "
                "started): the policy has stopped exploring and its groups will stop differing. Raise epsilon_high "
                "(clip-higher, DAPO: 0.28), the temperature, or lower the learning rate")

    if history and history[-1].get("frac_reward_zero_std") == 1.0:
        alarms["zero_variance"] = (
            "every group of this batch got equal rewards (all right, all wrong, or a reward that does not depend on "
            "the completion), so every advantage is 0 and the step teaches nothing. If this persists: prompts too "
            "easy or too hard for the model (frac_reward_zero_std), a broken reward function (rewards/<name>/errors), "
            "or too few generations per prompt")
    return alarms


class RLMonitor:
    """Keeps the metric history of a run and turns `check_alarms` into printed warnings and metric flags.

        monitor = RLMonitor(AlarmConfig(window=10), warn=tqdm.write)
        flags = monitor.observe(step, metrics)        # after each training step: {"alarm/kl_blowup": 1, ...}
        flags = monitor.observe_eval(step, metrics)   # after each held-out evaluation (val/accuracy, ...)

    state_dict / load_state_dict carry the history and which alarms were already printed, for resume.
    """

    KEYS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "frac_reward_zero_std")

    def __init__(self, cfg: AlarmConfig | None = None, warn: Callable[[str], None] | None = None):
        self.cfg = cfg or AlarmConfig()
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.raised: dict[str, int] = {}  # alarm -> the step it was first printed

    def _flags(self, step: int) -> dict[str, int]:
        alarms = check_alarms(self.history, self.evals, self.cfg)
        for name, message in alarms.items():
            if name not in self.raised:
                self.raised[name] = step
                self.warn(f"alarm ({name}) at step {step}: {message}")
        return {f"alarm/{name}": 1 for name in alarms}

    def observe(self, step: int, metrics: dict) -> dict[str, int]:
        """Record a training step's metrics (the keys in KEYS that it has); return the alarms that hold."""
        record = {k: float(metrics[k]) for k in self.KEYS if isinstance(metrics.get(k), (int, float))}
        if not record:
            return {}
        self.history.append({"step": step, **record})
        return self._flags(step)

    def observe_eval(self, step: int, metrics: dict) -> dict[str, int]:
        """Record a held-out evaluation (val/accuracy and the like); return the alarms that hold."""
        record = {k: float(v) for k, v in metrics.items() if k.startswith("val/") and isinstance(v, (int, float))}
        if not record:
            return {}
        self.evals.append({"step": step, **record})
        return self._flags(step)

    def state_dict(self) -> dict:
        return {"history": self.history, "evals": self.evals, "raised": self.raised, "cfg": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.raised = dict(state["raised"])


# ----------------------------------------------------------------------------------------------------------------
# Plots

PANELS = (("reward", ("reward",), "reward (training rollouts)"),
          ("held-out accuracy", ("val/accuracy", "val/format_rate"), "held-out, greedy"),
          ("kl", ("kl",), "KL to the reference (k3, nats/token)"),
          ("completion length", ("completions/mean_length", "completions/max_length"), "tokens"),
          ("entropy", ("entropy",), "nats/token"),
          ("zero-variance groups", ("frac_reward_zero_std",), "fraction of groups"))


def plot_rl_curves(metrics_path: str | Path, out_png: str | Path, title: str = "",
                   start: dict | None = None) -> Path | None:
    """Reward, held-out accuracy, KL, completion length, entropy and zero-variance groups against step, from
    metrics.jsonl; `start` adds the held-out metrics measured before training as step 0. Alarms are marked."""
    return plot_panels(metrics_path, out_png, PANELS, (3, 2), title, start)


def plot_panels(metrics_path: str | Path, out_png: str | Path, panels, grid: tuple[int, int], title: str = "",
                start: dict | None = None) -> Path | None:
    """One panel per (title, metric keys, y label) of `panels` against step, from metrics.jsonl: training metrics
    raw and smoothed, held-out ones (val/...) as points; `start` adds step 0's held-out metrics; the first step of
    each alarm raised is a red line. None when no step logged a reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import ema, read_metrics, save_figure

    records = read_metrics(Path(metrics_path))
    if start:
        records = [{"step": 0, **start}, *records]
    if not any("reward" in r for r in records):
        return None
    fig, axes = plt.subplots(*grid, figsize=(11, 3 * grid[0]), sharex=True)
    for ax, (name, keys, ylabel) in zip(axes.flat, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            steps, ys = zip(*pts)
            if key.startswith("val/"):
                ax.plot(steps, ys, "o-", label=key)
            else:
                raw, = ax.plot(steps, ys, alpha=0.3, linewidth=0.8)
                ax.plot(steps, ema(ys), color=raw.get_color(), label=key)  # smoothed, in the raw line's color
        for alarm in ALARMS:
            hits = [r["step"] for r in records if r.get(f"alarm/{alarm}")]
            if hits:
                ax.axvline(hits[0], color="tab:red", alpha=0.4, linestyle="--")
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(title or Path(metrics_path).parent.name)
    return save_figure(fig, out_png)
