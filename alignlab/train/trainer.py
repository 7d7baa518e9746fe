"""The training loop every stage shares (pretraining, SFT, reward models, DPO, ...).

One optimizer step:

    lr    = peak_lr * lr_factor(step)                         warm-up, then cosine/linear/constant/WSD
    N     = target tokens in the whole global batch            (all micro-batches, all processes)
    for each of the grad_accum micro-batches:
        loss = loss_fn(model, batch, N / world)                each micro-batch's summed loss / N
        loss.backward()                                        gradients add up across micro-batches
    clip the gradient norm to grad_clip;  stop if the loss or the norm is NaN/Inf
    AdamW step

Dividing every micro-batch by the same global N makes the accumulated gradient exactly that of one big
batch, whatever the lengths of the micro-batches (objectives/lm.py explains why a mean of means is not).
DDP averages gradients over the `world` processes, so each process divides by N / world.

The stage supplies the pieces that differ (a recipe composes them):
    data      .next_batch() -> dict of tensors, .state_dict(), .load_state_dict()   (exact resume)
    loss_fn   (model, batch, normaliser) -> loss tensor, or (loss, {extra metrics})
    evaluate  (model) -> {"val_loss": ..., ...}               every eval_every steps and at the end
    step_metrics (step, metrics) -> {...}                      more metrics for each step (e.g. RL's rollout batch)
    sample    (model) -> [str]                                 shown and saved at evaluation time

Precision: train.dtype (auto | fp32 | bf16) goes through alignlab.model.precision.resolve_precision, once per run
(auto: bf16 on CUDA and on CPUs whose bf16 matmuls are native and faster, else fp32). bf16 is autocast: the forward
runs its matmuls in bf16 while the weights, gradients and AdamW state stay fp32. The choice and its reason are
printed at the start and kept in the result ("precision") and in every checkpoint's config.

Around the loop: checkpoints (atomic, last k + best, exact resume), SIGINT/SIGTERM save-and-exit,
metrics.jsonl + TensorBoard + a loss-curve PNG, a progress bar with loss, tokens/s, MFU and ETA.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from alignlab.errors import ConfigError
from alignlab.model.precision import Precision, resolve_precision
from alignlab.objectives.lm import (
    IGNORE_INDEX,
    unwrap,  # noqa: F401  (trainer.unwrap, as recipes import it)
)
from alignlab.train import checkpoint as ckpt
from alignlab.train.distributed import Dist, all_reduce_sum, barrier, wrap_model
from alignlab.train.metrics import MetricsLogger, plot_curves
from alignlab.train.mfu import peak_flops, raise_peak
from alignlab.train.optim import build_adamw
from alignlab.train.schedule import SCHEDULES, lr_factor


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 1e-3  # peak learning rate
    schedule: str = "cosine"  # constant | linear | cosine | wsd
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    decay_frac: float = 0.2  # wsd: the final fraction of steps that decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_every: int = 250  # steps between evaluations (and always at the end); 0 = only at the end
    save_every: int = 500  # steps between checkpoints (and always at the end); 0 = only at the end
    keep_last: int = 2  # checkpoints kept besides best/
    log_every: int = 1  # steps between metrics.jsonl lines
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast where native and faster, else fp32; see model/precision.py) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    gradient_checkpointing: bool = False  # recompute block activations in backward to save memory
    distributed: str = "ddp"  # ddp | fsdp (under torchrun)
    tensorboard: bool = False
    peak_flops: float = 0.0  # MFU denominator per device; 0 = measure this device's matmul peak in the training dtype
    plot: bool = True
    overwrite: bool = False  # start from scratch even if out_dir holds checkpoints of an earlier run

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("max_steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.dtype must be auto, fp32 or bf16, got {self.dtype!r}")


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the optimizer step was not taken."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available here (train.device=auto or cpu)")
    return device


def autocast_for(dtype: str | Precision, device: torch.device):
    """The context that runs a forward at a run's precision: bf16 autocast where resolve_precision(dtype, device,
    "train") picks bf16 (the Trainer's own choice: the measurement behind auto is made once), else nothing."""
    p = dtype if isinstance(dtype, Precision) else resolve_precision(dtype, device, "train")
    return torch.autocast(torch.device(device).type, dtype=p.dtype) if p.name == "bf16" else contextlib.nullcontext()


def count_targets(batch: dict) -> int:
    """How many terms the loss sums over: label positions that are not IGNORE_INDEX."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    def __init__(self, config: TrainConfig, model: torch.nn.Module, data, loss_fn: Callable,
                 out_dir: str | Path, evaluate: Callable | None = None, sample: Callable | None = None,
                 flops_per_token: float = 0.0, dist: Dist | None = None, weight_fn: Callable = count_targets,
                 run_config: dict | None = None, step_metrics: Callable[[int, dict], dict] | None = None):
        self.config = c = config
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.dist = dist or Dist()
        self.device = resolve_device(c.device)
        self.data, self.loss_fn, self.evaluate, self.sample = data, loss_fn, evaluate, sample
        self.weight_fn = weight_fn
        self.step_metrics = step_metrics  # (step, the step's metrics) -> more metrics for that step (RL's rollouts)
        self.flops_per_token = flops_per_token
        if not self.dist.main:  # the first process decides (and measures, if auto must), the others read its cache
            barrier(self.dist)
        self.precision = resolve_precision(c.dtype, self.device, "train")
        if self.dist.main:
            barrier(self.dist)
        self.run_config = {**(run_config or {"train": asdict(c)}), "precision": self.precision.as_dict()}
        self.autocast = autocast_for(self.precision, self.device)

        self.raw_model = model.to(self.device)
        if c.gradient_checkpointing:
            self.raw_model.gradient_checkpointing = True
        self.model = wrap_model(self.raw_model, self.dist, c.distributed)
        if c.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_adamw(self.raw_model, c.lr, c.weight_decay, (c.beta1, c.beta2), c.eps)
        self.step = 0
        self.best = math.inf
        self.tokens_seen = 0
        self.stop_signal: int | None = None
        self.last_checkpoint: Path | None = None
        self.on_checkpoint: Callable[[Trainer], Any] | None = None  # called after each periodic save

    # --- checkpoints ------------------------------------------------------------------------------

    @property
    def sharded(self) -> bool:
        return self.dist.enabled and self.config.distributed == "fsdp"

    def model_optimizer_state(self) -> tuple[dict, dict]:
        """Full (unsharded) state dicts. Under FSDP this gathers the shards: every process must call it."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            return get_state_dict(self.raw_model, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.raw_model.state_dict(), self.optimizer.state_dict()

    def state_dict(self) -> dict:
        model, optimizer = self.model_optimizer_state()
        return {"model": model, "optimizer": optimizer, "step": self.step, "best": self.best,
                "tokens_seen": self.tokens_seen, "data": self.data.state_dict(), "rng": ckpt.rng_state(),
                "config": self.run_config}

    def export_model(self) -> torch.nn.Module:
        """The trained model as one ordinary module (gathered from the shards under FSDP; collective)."""
        if not self.sharded:
            return self.raw_model
        weights, _ = self.model_optimizer_state()
        with torch.device("meta"):
            model = type(self.raw_model)(self.raw_model.config)
        model.load_state_dict(weights, assign=True)
        if getattr(model, "config", None) is not None and model.config.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        if hasattr(model, "rope_frequencies") and model.config.pos == "rope":
            model.inv_freq = model.rope_frequencies()
        return model

    def save(self, periodic: bool = True, best: bool = False) -> None:
        """Every process must call this (they stay in step); only rank 0 writes."""
        if not (periodic or best):
            return
        state = self.state_dict() if self.dist.main or self.sharded else None
        if self.dist.main:
            if periodic:
                self.last_checkpoint = ckpt.save_checkpoint(self.ckpt_dir, self.step, state, self.config.keep_last)
            if best:
                ckpt.write_atomic(state, self.ckpt_dir / "best")
        barrier(self.dist)

    def resume(self, source: str | Path | bool = True) -> bool:
        """Load the latest checkpoint in out_dir (source=True) or the given one. Returns whether it did."""
        path = ckpt.latest_checkpoint(self.ckpt_dir) if source is True else Path(source)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, map_location=self.device)
        try:
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

                set_state_dict(self.raw_model, self.optimizer, model_state_dict=state["model"],
                               optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
            else:
                self.raw_model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise ckpt.CheckpointCorrupt(f"{path}: does not match this model/optimizer ({first})") from None
        self.step, self.best, self.tokens_seen = state["step"], state["best"], state["tokens_seen"]
        self.data.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        self.last_checkpoint = path
        return True

    # --- signals ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _handle_signals(self):
        """First SIGINT/SIGTERM: finish the current step, save, and return. A second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # --- one optimizer step -----------------------------------------------------------------------

    def train_step(self) -> dict:
        c, d = self.config, self.dist
        lr = c.lr * lr_factor(self.step, c.schedule, c.warmup_steps, c.max_steps, c.min_lr_ratio, c.decay_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [_to(self.data.next_batch(), self.device) for _ in range(c.grad_accum)]
        counts = torch.tensor([sum(self.weight_fn(b) for b in micro),
                               sum(b["input_ids"].numel() for b in micro)], dtype=torch.float64)
        n_targets, n_tokens = all_reduce_sum(counts, d).tolist()
        normaliser = max(n_targets, 1) / d.world

        loss_sum, extra = torch.zeros((), device=self.device), {}
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            no_sync = self.model.no_sync() if d.enabled and not last and hasattr(self.model, "no_sync") \
                else contextlib.nullcontext()
            with no_sync:
                with self.autocast:
                    out = self.loss_fn(self.model, batch, normaliser)
                loss, stats = out if isinstance(out, tuple) else (out, {})
                loss.backward()
            loss_sum += loss.detach().float()
            for k, v in stats.items():
                extra[k] = extra.get(k, 0.0) + float(v) / len(micro)
        loss_value = float(all_reduce_sum(loss_sum, d)) / d.world
        clip = c.grad_clip if c.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip))
        for name, value in (("loss", loss_value), ("gradient norm", grad_norm)):
            if not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                         else "no checkpoint was written yet")
                raise TrainingDiverged(f"step {self.step}: the {name} is {value}; stopped before the optimizer "
                                       f"step, {where}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(n_tokens)
        out = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens": int(n_tokens), **extra}
        if self.step_metrics is not None:
            out.update(self.step_metrics(self.step, out))
        return out

    # --- evaluation -------------------------------------------------------------------------------

    def in_eval_mode(self, fn):
        """fn(model) in eval mode, without gradients, under the run's autocast; the model back in train mode."""
        self.raw_model.eval()
        with torch.no_grad(), self.autocast:
            out = fn(self.raw_model)
        self.raw_model.train()
        return out

    def run_eval(self, logger: MetricsLogger, bar) -> dict:
        if self.evaluate is None:
            return {}
        # every process samples (under FSDP the forward is a collective); only rank 0 keeps them
        metrics, samples = self.in_eval_mode(
            lambda m: (self.evaluate(m), self.sample(m) if self.sample is not None else []))
        if self.dist.main:
            logger.log(self.step, **metrics)
            if samples:
                with open(self.out_dir / "samples.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "samples": samples}, ensure_ascii=False) + "\n")
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            bar.write(f"step {self.step}: {shown}")
            for s in samples[:1]:
                bar.write("  sample: " + s.replace("\n", "\n          ")[:400])
        return metrics

    # --- the loop ---------------------------------------------------------------------------------

    def fit(self, resume: str | Path | bool = False) -> dict:
        c, d = self.config, self.dist
        resumed = self.resume(resume) if resume else False
        if not resumed and ckpt.step_dirs(self.ckpt_dir):
            if not c.overwrite:
                raise ConfigError(f"{self.ckpt_dir} holds checkpoints of an earlier run (up to step "
                                  f"{ckpt.step_dirs(self.ckpt_dir)[-1][0]}); resume it, or set train.overwrite=true "
                                  f"to start over")
            if d.main:
                shutil.rmtree(self.ckpt_dir)
            barrier(d)
        logger = MetricsLogger(self.out_dir, resume_step=self.step if resumed else None,
                               tensorboard=c.tensorboard) if d.main else None
        matmul_dtype = self.precision.dtype  # the peak of the dtype the matmuls run in
        peak = c.peak_flops or (peak_flops(self.device, matmul_dtype) if self.flops_per_token else 0.0)
        low_peak = False  # said once: the model ran faster than the peak
        if d.main:
            keep_samples(self.out_dir / "samples.jsonl", self.step if resumed else -1)
            start_note = f"resumed from {self.last_checkpoint} at step {self.step}" if resumed else "from step 0"
            print(f"training {c.max_steps} steps {start_note}; device {self.device}, world {d.world}"
                  + (f", MFU against a {self.precision.name} peak of {peak / 1e9:.0f} GFLOP/s" if peak else "")
                  + f"\nprecision: {self.precision.why}")
        bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step", disable=not d.main,
                   dynamic_ncols=True, mininterval=0.5)
        self.raw_model.train()
        status, metrics, t_start = "finished", {}, time.perf_counter()
        train_avg, history, warned = None, [], False  # smoothed train loss; (val, train) at each evaluation
        with self._handle_signals():
            while self.step < c.max_steps:
                t0 = time.perf_counter()
                out = self.train_step()
                dt = time.perf_counter() - t0
                tok_s = out["tokens"] / dt
                rate = self.flops_per_token * tok_s / d.world  # model FLOP/s of one device
                if peak and rate > peak:  # the peak read low (measured on a busy machine?): this rate is possible
                    if d.main and not low_peak:
                        bar.write(f"the model reached {rate / 1e9:.0f} GFLOP/s, above the peak of {peak / 1e9:.0f}: "
                                  "the fastest rate reached is the peak from now on")
                    low_peak, peak = True, rate if c.peak_flops else raise_peak(self.device, matmul_dtype, rate)
                mfu = rate / peak if peak else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{tok_s:,.0f}",
                                **({"mfu": f"{mfu:.0%}"} if peak else {}))
                if d.main and (self.step % c.log_every == 0 or self.step == c.max_steps):
                    logger.log(self.step, loss=out["loss"], lr=out["lr"], grad_norm=out["grad_norm"],
                               tokens_per_s=tok_s, mfu=mfu, tokens_seen=self.tokens_seen,
                               elapsed_s=time.perf_counter() - t_start,
                               **{k: v for k, v in out.items() if k not in ("loss", "lr", "grad_norm", "tokens")})
                done = self.step == c.max_steps
                is_best = False
                train_avg = out["loss"] if train_avg is None else 0.9 * train_avg + 0.1 * out["loss"]
                if (c.eval_every and self.step % c.eval_every == 0) or done:
                    metrics = self.run_eval(logger, bar)
                    if metrics.get("val_loss", math.inf) < self.best:
                        self.best, is_best = metrics["val_loss"], True
                    if "val_loss" in metrics and d.main:
                        history.append((metrics["val_loss"], train_avg))
                        warned = warned or overfit_warning(history, self.step, bar)
                periodic = (c.save_every and self.step % c.save_every == 0) or done or self.stop_signal is not None
                self.save(periodic=periodic, best=is_best)
                if periodic and self.on_checkpoint is not None:
                    self.on_checkpoint(self)
                if self.stop_signal is not None:
                    status = f"interrupted by {signal.Signals(self.stop_signal).name}"
                    bar.write(f"{status}: saved {self.last_checkpoint}; continue with --resume")
                    break
        bar.close()
        if resumed and not metrics and self.evaluate is not None:  # resumed a finished run: its final metrics again
            metrics = self.in_eval_mode(self.evaluate)
        result = {"status": status, "step": self.step, "best_val_loss": self.best, "tokens_seen": self.tokens_seen,
                  "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                  "train_seconds": round(time.perf_counter() - t_start, 2), "precision": self.precision.as_dict(),
                  **metrics}
        if d.main:
            logger.close()
            if c.plot:
                plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "plots" / "loss.png")
        return result


def overfit_warning(history: list[tuple[float, float]], step: int, bar) -> bool:
    """Say so (once) when the held-out loss has risen at two evaluations in a row while the smoothed training
    loss kept falling: the model is memorising its training data. Returns whether it warned."""
    if len(history) < 3:
        return False
    (v0, t0), (v1, _), (v2, t2) = history[-3:]
    if not (v0 < v1 < v2 and t2 < t0):
        return False
    bar.write(f"step {step}: held-out loss rose at two evaluations in a row ({v0:.4f} -> {v1:.4f} -> {v2:.4f}) "
              f"while the training loss fell ({t0:.4f} -> {t2:.4f}): the model is memorising its training data. "
              "checkpoints/best keeps the weights with the lowest held-out loss; fewer steps, more data or more "
              "weight decay would help")
    return True


def keep_samples(path: Path, up_to_step: int) -> None:
    """Start samples.jsonl afresh, keeping only records up to `up_to_step` (a resumed run's past)."""
    kept = []
    if path.exists() and up_to_step >= 0:
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= up_to_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(kept))
