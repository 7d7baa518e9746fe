"""Training throughput: alignlab vs transformers' LlamaForCausalLM, same random weights, same batches, fp32 and bf16.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--dtype fp32,bf16] [--reps 5] [--steps 3] [--batch 8]
                                                       [--seq 256] [--quick]

One training step = forward + next-token loss + backward + gradient clipping at 1.0 + AdamW step, on a batch of
--batch sequences of --seq random tokens, 2 threads. transformers computes its loss as
`model(input_ids=x, labels=x).loss` and steps torch's AdamW itself; alignlab takes a Trainer step
(alignlab.train.Trainer.train_step with objectives.lm_step: `CausalLM` hidden states, then the chunked
`linear_cross_entropy`, which never builds the [B, T, vocab] logits). Both use the same AdamW implementation (--adamw,
default fused) and hyperparameters, no weight decay on vectors. Both start from the same weights (the transformers
model is saved and loaded into alignlab, afresh for each dtype), and their step-0 losses on the same batch must agree
within 1e-4 in fp32 (1e-3 in bf16: bf16 keeps 8 bits of mantissa; measured, transformers' own bf16 loss is within
1e-4 of its fp32 one at step 0) or the benchmark fails.

--dtype (default: fp32,bf16 where the CPU runs bf16 natively, else fp32; see dtypes.py) runs both sides at each
dtype, back to back. fp32: everything in fp32. bf16: each side's best setting for mixed precision, fp32 master
weights and optimizer state with the forward under bf16 autocast (transformers: torch.autocast("cpu",
torch.bfloat16) around the forward, what its Trainer does with bf16=True; alignlab: TrainConfig(dtype="bf16")).

Made for a shared machine: each side's turn waits (up to 60 s) for the CPUs to be idle, the two sides
alternate --reps times, each turn times --steps steps, and a step during which other processes used more
than 10% of the CPUs is discarded. A side's time per step is its fastest step (the median is printed too).
tokens/s = batch * seq / that time; achieved FLOP/s = tokens/s * ModelConfig.flops_per_token(seq,
training=True); MFU = that / the peak of the dtype: the sustained matmul peak alignlab measures once per machine and
caches (alignlab.train.mfu.peak_flops), or --peak, raised to the fastest rate a side reached if that is higher
(so MFU <= 100%). The last line is JSON with the ratios by dtype (alignlab tokens/s / transformers tokens/s) and the
CPU they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import bench_generate
import torch
import torch.nn.functional as F
import transformers as tf
from bench_generate import MODELS, VOCAB, wait_for_idle
from dtypes import DTYPES, ForwardDtypes, add_dtype_argument, autocast, capability, describe, parse_dtypes

from alignlab.model.hf import load_model
from alignlab.objectives import IGNORE_INDEX, lm_step
from alignlab.train.mfu import peak_flops
from alignlab.train.optim import param_groups
from alignlab.train.trainer import TrainConfig, Trainer

ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
LOSS_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-3}  # step-0 |alignlab - transformers|


def build(name: str, tmp: str, seq: int):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=max(1024, seq), bos_token_id=None,
                         eos_token_id=None, pad_token_id=None, **MODELS[name])
    hf = tf.LlamaForCausalLM(cfg).float()
    hf.save_pretrained(tmp)
    return hf.train(), load_model(tmp, dtype=torch.float32).train()


def make_optimizer(model, impl: str) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), **ADAMW, foreach=impl == "foreach",
                             fused=impl == "fused")


class HFSide:
    """transformers' training step: forward under the dtype's autocast, loss, backward, clip, AdamW."""

    def __init__(self, model, dtype: str, adamw: str):
        self.model, self.dtype, self.opt = model, dtype, make_optimizer(model, adamw)

    def step(self, x: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.dtype):
            loss = self.model(input_ids=x, labels=x).loss  # shifts the labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.opt.step()
        return loss.item()


class Feed:
    """The Trainer's data source: the batch the benchmark sets, its labels shifted (token t + 1; last: none)."""

    x: torch.Tensor

    def next_batch(self) -> dict:
        return {"input_ids": self.x, "labels": F.pad(self.x[:, 1:], (0, 1), value=IGNORE_INDEX)}


class AlignlabSide:
    """alignlab's training step: Trainer.train_step with TrainConfig(dtype=...)."""

    def __init__(self, model, dtype: str, adamw: str, out_dir: str):
        self.feed = Feed()
        config = TrainConfig(max_steps=10**9, lr=ADAMW["lr"], schedule="constant", warmup_steps=0,
                             weight_decay=WEIGHT_DECAY, beta1=ADAMW["betas"][0], beta2=ADAMW["betas"][1],
                             eps=ADAMW["eps"], grad_clip=GRAD_CLIP, device="cpu", dtype=dtype, plot=False)
        self.trainer = Trainer(config, model, self.feed, lm_step, out_dir)
        if adamw != "fused":  # the Trainer's own is fused
            self.trainer.optimizer = make_optimizer(model, adamw)

    def step(self, x: torch.Tensor) -> float:
        self.feed.x = x
        return self.trainer.train_step()["loss"]


class CpuWatch:
    """How much CPU time other processes took while a step ran: busy jiffies of the whole machine in
    /proc/stat minus this process's own CPU time. Returns 0 where /proc/stat does not exist."""

    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0
        return (sum(v) - v[3] - v[4]) / CpuWatch.hz

    def __enter__(self):
        t = os.times()
        self.busy, self.mine, self.t0 = self._busy(), t.user + t.system, time.perf_counter()
        return self

    def __exit__(self, *exc):
        t = os.times()
        self.seconds = time.perf_counter() - self.t0
        other = self._busy() - self.busy - (t.user + t.system - self.mine) if self.busy else 0.0
        self.other_load = max(0.0, other) / (self.seconds * (os.cpu_count() or 1))


def timed_steps(side, batches) -> list[tuple[float, float]]:
    """(seconds, fraction of the CPUs other processes used meanwhile) for one step per batch."""
    wait_for_idle()
    out = []
    for x in batches:
        with CpuWatch() as w:
            side.step(x)
        out.append((w.seconds, w.other_load))
    return out


def summarise(samples: list[tuple[float, float]], max_other: float = 0.1) -> tuple[float, float, int]:
    """(best, median, count) of the step times with little other load (of all of them if none is clean)."""
    clean = [s for s, other in samples if other <= max_other] or [s for s, _ in samples]
    return min(clean), statistics.median(clean), len([1 for _, other in samples if other <= max_other])


def parse_peaks(text: str | None, dtypes: list[str]) -> dict[str, float]:
    """FLOP/s of the MFU denominator for each dtype: --peak "fp32=170,bf16=390" (GFLOP/s), or measured and cached."""
    given = dict(item.split("=") for item in text.split(",")) if text else {}
    return {d: float(given[d]) * 1e9 if d in given else peak_flops(torch.device("cpu"), DTYPES[d]) for d in dtypes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="turns per side, alternating")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per turn")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--models", default="5M,27M")
    add_dtype_argument(ap)
    ap.add_argument("--adamw", choices=("foreach", "fused", "for-loop"), default="fused",
                    help="AdamW implementation, the same on both sides (fused: what transformers' Trainer uses "
                         "with torch >= 2.8, and alignlab's trainer)")
    ap.add_argument("--peak", help="peak GFLOP/s for MFU by dtype, e.g. fp32=170,bf16=390 (default: measured once "
                                   "per machine and cached, alignlab.train.mfu.peak_flops)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: model 5M, 2 reps of 2 steps, short idle waits")
    args = ap.parse_args()
    if args.quick:
        args.models, args.reps, args.steps = "5M", 2, 2
        bench_generate.IDLE_WAIT = bench_generate.QUICK_IDLE_WAIT
    torch.set_num_threads(2)
    dtypes = parse_dtypes(args.dtype, "train")
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, seq {args.seq}, {args.reps} reps x {args.steps} steps, AdamW {args.adamw} "
          f"(both sides)")
    print(describe(dtypes, "train"))
    peaks = parse_peaks(args.peak, dtypes)
    print("MFU against " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    print(f"{'model':>6} {'dtype':>5} {'side':>12} {'tok/s':>7} {'GFLOP/s':>8} {'MFU':>6} {'ms/step':>8} "
          f"{'median':>7} {'clean':>5}  ratio (of medians)")
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (args.batch, args.seq), generator=g) for _ in range(args.steps)]
    tokens = args.batch * args.seq
    result = {"ratio": {d: {} for d in dtypes}, "median_ratio": {d: {} for d in dtypes}, "tokens_per_s": {},
              "mfu": {}, "step0_loss_diff": {}, "cpu": capability(), "forward_dtype": {}}
    for name in args.models.split(","):
        for dtype in dtypes:
            with tempfile.TemporaryDirectory() as tmp:
                hf, model = build(name, tmp, args.seq)
                flops = model.config.flops_per_token(args.seq, training=True)
                sides = {"transformers": HFSide(hf, dtype, args.adamw),
                         "alignlab": AlignlabSide(model, dtype, args.adamw, tmp)}
                losses, probes = {}, {}
                for side_name, side in sides.items():
                    with ForwardDtypes() as probes[side_name]:
                        losses[side_name] = side.step(batches[0])
            notes = {k: p.check(dtype, f"{name} {k}") for k, p in probes.items()}
            diff = abs(losses["alignlab"] - losses["transformers"])
            if diff > LOSS_TOLERANCE[dtype]:
                raise SystemExit(f"{name} {dtype}: step-0 losses differ by {diff:.2e} (more than "
                                 f"{LOSS_TOLERANCE[dtype]:g}): {losses}")
            for side in sides.values():  # warm-up: the optimizer state exists from here on
                side.step(batches[0])
            samples = {side: [] for side in sides}
            for _ in range(args.reps):
                for side_name, side in sides.items():
                    samples[side_name] += timed_steps(side, batches)
            stats = {side: summarise(s) for side, s in samples.items()}
            ratio = stats["transformers"][0] / stats["alignlab"][0]
            median_ratio = stats["transformers"][1] / stats["alignlab"][1]
            fastest = tokens / min(best for best, _, _ in stats.values()) * flops
            if fastest > peaks[dtype]:  # the peak read low (a busy machine?): a rate reached is one that is possible
                print(f"({dtype}: a side reached {fastest / 1e9:.0f} GFLOP/s, above the peak of "
                      f"{peaks[dtype] / 1e9:.0f}: that rate is the peak from here on)")
                peaks[dtype] = fastest
            for side, (best, median, clean) in stats.items():
                tps = tokens / best
                mfu = tps * flops / peaks[dtype]
                result["tokens_per_s"][f"{name}/{dtype}/{side}"] = round(tps, 1)
                result["mfu"][f"{name}/{dtype}/{side}"] = round(mfu, 3)
                extra = f"  {ratio:.2f}x ({median_ratio:.2f}x)" if side == "alignlab" else ""
                print(f"{name:>6} {dtype:>5} {side:>12} {tps:>7.0f} {tps * flops / 1e9:>8.1f} {mfu:>6.1%} "
                      f"{best * 1e3:>8.0f} {median * 1e3:>7.0f} {clean:>2}/{len(samples[side]):<2}{extra}", flush=True)
            result["ratio"][dtype][name] = round(ratio, 3)
            result["median_ratio"][dtype][name] = round(median_ratio, 3)
            result["step0_loss_diff"][f"{name}/{dtype}"] = float(f"{diff:.3g}")
            result["forward_dtype"][f"{name}/{dtype}"] = notes
    print(f"step-0 losses agree within {', '.join(f'{d} {LOSS_TOLERANCE[d]:g}' for d in dtypes)} "
          f"(largest: {', '.join(f'{k} {v:.1e}' for k, v in result['step0_loss_diff'].items())}); the forwards' "
          "Linear outputs were in the dtype asked for on both sides")
    result["peak_gflops"] = {d: round(p / 1e9, 1) for d, p in peaks.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
