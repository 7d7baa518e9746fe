"""Estimated vs measured peak memory of real training steps on this CPU: the check of alignlab/memory.py.

    python benchmarks/bench_memory.py [--steps 2] [--no-profile] [--json]

For each model size and method (full fine-tuning; LoRA rank 8 on every Linear of the blocks, alignlab.lora;
QLoRA: the same adapters over Linears quantised to NF4 by alignlab.quant), a fresh Python process measures
one thing, so nothing left over from another run counts:

1. warm-up: a throwaway 1-layer model runs a training step (lazy imports, thread pools and library buffers
   are allocated now, not during the measurement);
2. baseline: its resident memory (VmRSS of /proc/self/status);
3. it builds the model (+ quantisation, + adapters) and alignlab's fused AdamW, then resets the high-water
   mark VmHWM to the current RSS by writing 5 to /proc/self/clear_refs (Linux >= 4.0), so that the build's
   own temporaries (an fp32 Linear before it is quantised) do not count;
4. it runs --steps training steps (hidden states -> objectives.linear_cross_entropy -> backward -> clip ->
   AdamW step -> zero_grad(set_to_none)); from the second step on the optimizer states exist, so that step
   is the steady state;
5. measured = VmHWM - baseline: the peak resident memory of the model and its training.

The child runs with MALLOC_MMAP_THRESHOLD_=65536: glibc then serves every tensor-sized allocation with mmap
and hands it back to the kernel when it is freed. Without it, freed heap memory stays resident and the
high-water mark measures malloc's fragmentation too (about 40% more on these runs).

Unless --no-profile, the same process then runs one more step under torch's profiler (profile_memory=True)
and adds up its allocation events in time order: the peak of live tensor bytes, plus the parameters, buffers
and optimizer states already there, is the allocator's view, free of page-level effects. The estimate is
compared with the first (RSS); the second shows how much of RSS is not tensors. The last line is JSON; then
the run fails (exit status 1) if an estimate is off the measured RSS by more than --tol (default 20%).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch

from alignlab.memory import estimate_memory
from alignlab.model.config import ModelConfig

# (name, model config, batch, seq): sizes from 0.2M to 5M parameters, a few seconds a step on 2 busy cores
SIZES = [
    ("tiny", dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=1024), 4, 256),
    ("small", dict(vocab_size=2048, dim=128, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=1024), 2, 512),
    ("medium", dict(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=1024), 1, 1024),
]
METHODS = ("full", "lora", "qlora")
RUNS = [(size, method, False) for size in SIZES for method in METHODS] + \
    [(SIZES[-1], method, True) for method in METHODS]  # (size, method, gradient checkpointing)
RANK = 8


def add_lora(model, r: int, targets=None, dropout: float = 0.0) -> None:
    """alignlab.lora with rank r (alpha 2r) on `targets` (default: every Linear of the blocks, PEFT's
    all-linear: not the head); everything else frozen."""
    from alignlab.lora import LoraConfig, apply_lora

    apply_lora(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets) if targets else "all-linear",
                                 lora_dropout=dropout))


# --- the child process -------------------------------------------------------------------------------

def proc_status(key: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM: the peak resident set) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _train_step(model, opt, x):
    from alignlab.objectives import linear_cross_entropy

    loss = linear_cross_entropy(model(x, head=False), model.lm_head.weight, x)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _build(config: dict, method: str, rank: int, grad_ckpt: bool = False):
    from alignlab.model.transformer import CausalLM
    from alignlab.train.optim import build_adamw

    model = CausalLM(ModelConfig(**config))
    if method == "qlora":
        from alignlab.quant import quantize_model

        quantize_model(model)  # every Linear of the blocks in NF4 (double quantisation); not the head
    if method != "full":
        add_lora(model, rank)
    model.gradient_checkpointing = grad_ckpt
    model.train()
    return model, build_adamw(model, 1e-4, 0.0)


def _allocator_peak(model, opt, x) -> int:
    """Peak live tensor bytes of one step, from the profiler's allocation events, plus what was already
    allocated (weights, adapters, optimizer states)."""
    from torch.profiler import ProfilerActivity, profile

    present = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    present += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _train_step(model, opt, x)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return present + peak


def child(spec: dict) -> dict:
    torch.manual_seed(0)
    warm, warm_opt = _build(dict(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=64), spec["method"], 2)
    _train_step(warm, warm_opt, torch.randint(0, 64, (2, 64)))
    del warm, warm_opt
    gc.collect()
    x = torch.randint(0, spec["config"]["vocab_size"], (spec["batch"], spec["seq"]))
    base = proc_status("VmRSS")
    t0 = time.perf_counter()
    model, opt = _build(spec["config"], spec["method"], spec["rank"], spec["grad_ckpt"])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: the model is built (and quantised), nothing trained yet
    for _ in range(spec["steps"]):
        _train_step(model, opt, x)
    out = {"rss_peak": proc_status("VmHWM") - base, "seconds": time.perf_counter() - t0}
    if spec.get("profile", True):
        out["allocator_peak"] = _allocator_peak(model, opt, x)
    return out


# --- the parent -------------------------------------------------------------------------------------

def measure(config: dict, method: str, batch: int, seq: int, rank: int = RANK, grad_ckpt: bool = False,
            steps: int = 2, profile: bool = True) -> dict:
    """Run one measurement in a fresh process; returns rss_peak (and allocator_peak) in bytes."""
    spec = dict(config=config, method=method, batch=batch, seq=seq, rank=rank, grad_ckpt=grad_ckpt, steps=steps,
                profile=profile)
    return run_child(__file__, "--child", spec, timeout=600)


def run_child(script: str, flag: str, spec: dict, timeout: float) -> dict:
    """Run `script flag <spec as JSON>` in a fresh Python process and return the JSON its last line prints.
    glibc is told to return freed blocks over 64 KB to the system at once (MALLOC_MMAP_THRESHOLD_), so the
    child's peak resident memory reflects the tensors alive together, not freed memory malloc kept."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.abspath(script), flag, json.dumps(spec)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"measurement {spec.get('method', '')} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def estimate(config: dict, method: str, batch: int, seq: int, rank: int = RANK, grad_ckpt: bool = False) -> float:
    return estimate_memory(ModelConfig(**config), method=method, seq=seq, batch=batch, rank=rank,
                           grad_ckpt=grad_ckpt).total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--tol", type=float, default=0.2, help="the largest |estimate / RSS - 1| that passes")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    for (name, config, batch, seq), method, ckpt in RUNS:
        params = ModelConfig(**config).num_params()
        m = measure(config, method, batch, seq, grad_ckpt=ckpt, steps=args.steps, profile=not args.no_profile)
        est = estimate(config, method, batch, seq, grad_ckpt=ckpt)
        rows.append(dict(size=name, params=params, method=method, grad_ckpt=ckpt, batch=batch, seq=seq,
                         estimate=est, **m, ratio=est / m["rss_peak"]))
        if not args.json:
            alloc = f"{m['allocator_peak'] / 2**20:7.1f}" if "allocator_peak" in m else "      -"
            label = method + ("+ckpt" if ckpt else "")
            print(f"{name:<7} {params / 1e6:5.2f}M {label:<10} B={batch} T={seq:<5} estimate {est / 2**20:7.1f} MiB"
                  f"   measured: RSS {m['rss_peak'] / 2**20:7.1f} MiB, allocator {alloc} MiB"
                  f"   estimate/RSS {est / m['rss_peak']:.3f}", flush=True)
    print(json.dumps(rows))
    off = [f"{r['size']} {r['method']}{'+ckpt' if r['grad_ckpt'] else ''} ({r['ratio']:.3f})" for r in rows
           if abs(r["ratio"] - 1) > args.tol]
    if off:
        raise SystemExit(f"estimate_memory is off the measured peak by more than {args.tol:.0%} for: "
                         f"{', '.join(off)} (estimate / RSS)")


if __name__ == "__main__":
    main()
