"""Training throughput: alignlab vs transformers' LlamaForCausalLM, same random weights, same batches.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--reps 5] [--steps 3] [--batch 8] [--seq 256]

One training step = forward + next-token loss + backward + AdamW step, on a batch of --batch sequences of
--seq random tokens, fp32, 2 threads. transformers computes its loss as `model(input_ids=x, labels=x).loss`;
alignlab takes its training path: `CausalLM.hidden_states` then `objectives.linear_cross_entropy`, which
never builds the [B, T, vocab] logits. Both sides use torch.optim.AdamW with the same hyperparameters and
the same implementation (--adamw, default fused). Both start from the same weights (the transformers
model is saved and loaded into alignlab), and their step-0 losses on the same batch must agree within
1e-4 or the benchmark fails.

Made for a shared machine: each side's turn waits (up to 60 s) for the CPUs to be idle, the two sides
alternate --reps times, each turn times --steps steps, and a step during which other processes used more
than 10% of the CPUs is discarded. A side's time per step is its fastest step (the median is printed too).
tokens/s = batch * seq / that time; achieved FLOP/s = tokens/s * ModelConfig.flops_per_token(seq,
training=True); MFU = that / 170 GFLOP/s, the fp32 matmul peak measured on the 2-core reference machine
(--peak to change it). The last line is JSON with the ratios (alignlab tokens/s / transformers tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers as tf
from bench_generate import MODELS, VOCAB, wait_for_idle

from alignlab.model.hf import load_model
from alignlab.objectives import IGNORE_INDEX, linear_cross_entropy

ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def build(name: str, tmp: str, seq: int):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=max(1024, seq), bos_token_id=None,
                         eos_token_id=None, pad_token_id=None, **MODELS[name])
    hf = tf.LlamaForCausalLM(cfg).float()
    hf.save_pretrained(tmp)
    return hf.train(), load_model(tmp).train()


def hf_loss(hf, x: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=x, labels=x).loss  # shifts the labels inside


def our_loss(model, x: torch.Tensor) -> torch.Tensor:
    labels = F.pad(x[:, 1:], (0, 1), value=IGNORE_INDEX)  # target of position t is token t + 1; last: none
    return linear_cross_entropy(model.hidden_states(x), model.lm_head.weight, labels)


def make_optimizer(model, impl: str) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), **ADAMW, foreach=impl == "foreach", fused=impl == "fused")


def train_step(model, opt, loss_fn, x) -> float:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model, x)
    loss.backward()
    opt.step()
    return loss.item()


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


def timed_steps(model, opt, loss_fn, batches) -> list[tuple[float, float]]:
    """(seconds, fraction of the CPUs other processes used meanwhile) for one step per batch."""
    wait_for_idle()
    out = []
    for x in batches:
        with CpuWatch() as w:
            train_step(model, opt, loss_fn, x)
        out.append((w.seconds, w.other_load))
    return out


def summarise(samples: list[tuple[float, float]], max_other: float = 0.1) -> tuple[float, float, int]:
    """(best, median, count) of the step times with little other load (of all of them if none is clean)."""
    clean = [s for s, other in samples if other <= max_other] or [s for s, _ in samples]
    return min(clean), statistics.median(clean), len([1 for _, other in samples if other <= max_other])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="turns per side, alternating")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per turn")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--models", default="5M,27M")
    ap.add_argument("--adamw", choices=("foreach", "fused", "for-loop"), default="fused",
                    help="AdamW implementation, the same on both sides (fused: what transformers' Trainer uses "
                         "with torch >= 2.8, and alignlab's trainer)")
    ap.add_argument("--peak", type=float, default=170.0, help="peak GFLOP/s for MFU")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, seq {args.seq}, {args.reps} reps x {args.steps} steps, AdamW {args.adamw} "
          f"(both sides), MFU against {args.peak:g} GFLOP/s")
    print(f"{'model':>6} {'side':>12} {'tok/s':>7} {'GFLOP/s':>8} {'MFU':>6} {'ms/step':>8} {'median':>7} "
          f"{'clean':>5}  ratio (of medians)")
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (args.batch, args.seq), generator=g) for _ in range(args.steps)]
    tokens = args.batch * args.seq
    result = {"ratios": {}, "median_ratios": {}, "tokens_per_s": {}, "mfu": {}}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf, model = build(name, tmp, args.seq)
        flops = model.config.flops_per_token(args.seq, training=True)
        sides = {"transformers": (hf, hf_loss), "alignlab": (model, our_loss)}
        opts = {side: make_optimizer(m, args.adamw) for side, (m, _) in sides.items()}
        losses = {side: train_step(m, opts[side], fn, batches[0]) for side, (m, fn) in sides.items()}
        if abs(losses["alignlab"] - losses["transformers"]) > 1e-4:
            raise SystemExit(f"{name}: step-0 losses differ: {losses}")
        for side, (m, fn) in sides.items():  # warm-up: the optimizer state exists from here on
            train_step(m, opts[side], fn, batches[0])
        samples = {side: [] for side in sides}
        for _ in range(args.reps):
            for side, (m, fn) in sides.items():
                samples[side] += timed_steps(m, opts[side], fn, batches)
        stats = {side: summarise(s) for side, s in samples.items()}
        ratio = stats["transformers"][0] / stats["alignlab"][0]
        median_ratio = stats["transformers"][1] / stats["alignlab"][1]
        for side, (best, median, clean) in stats.items():
            tps = tokens / best
            mfu = tps * flops / (args.peak * 1e9)
            result["tokens_per_s"][f"{name}/{side}"] = round(tps, 1)
            result["mfu"][f"{name}/{side}"] = round(mfu, 3)
            extra = f"  {ratio:.2f}x ({median_ratio:.2f}x)" if side == "alignlab" else ""
            print(f"{name:>6} {side:>12} {tps:>7.0f} {tps * flops / 1e9:>8.1f} {mfu:>6.1%} {best * 1e3:>8.0f} "
                  f"{median * 1e3:>7.0f} {clean:>2}/{len(samples[side]):<2}{extra}", flush=True)
        result["ratios"][name], result["median_ratios"][name] = round(ratio, 3), round(median_ratio, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
