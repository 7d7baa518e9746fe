"""Multi-LoRA greedy decoding: many adapters in one batch (alignlab's MultiLora, both kernels) vs one batch per
adapter vs PEFT's mixed-adapter batch (transformers `generate(adapter_names=...)`), same random weights, fp32.

    OMP_NUM_THREADS=2 python benchmarks/bench_multilora.py [--adapters 16] [--requests 64] [--new 32]
                                                           [--prompt 16] [--reps 3] [--quick]

A random Llama (bench_generate.py's 5M shapes) and --adapters PEFT adapters (init_lora_weights=False, so each
changes the model): ranks 8 and 16 alternate, on q/k/v/o_proj or on every linear layer. Request j uses adapter
j mod --adapters. Every side generates exactly --new tokens for every request from --prompt-token prompts:

    alignlab mixed grouped one batch of all requests, MultiLora(kernel="grouped"): a segment per adapter, all
                           segments in one grouped product (the default on a CPU)
    alignlab mixed sgmv    the same segments, kernel="sgmv": a pair of products per adapter at its own rank
    alignlab mixed bmm     the same, kernel="bmm": every token's A and B gathered, padded to rank 16
    alignlab per adapter   one batch per adapter (its requests only), one after the other, with whichever of
                           grouped and sgmv is faster for it (--per-adapter-kernel)
    alignlab base          one batch of all requests without adapters: the floor the LoRA updates add to
    PEFT mixed             one PeftModel holding every adapter, generate(..., adapter_names=[...])

alignlab's sides share one greedy loop (prefill, then one [B, 1] forward per token with a KV cache), inside
`adapters.rows(adapters.activate(names))`. The tokens of every alignlab side with adapters must equal PEFT's on
at least --agree of the rows (fp32; a near tie can flip a greedy choice when the order of the sums differs), or the
benchmark fails (exit status 1). A side's time is its fastest of --reps runs, after a warm-up; tok/s = requests
* new / time. The last line is JSON with tok/s and the ratios to PEFT and to one batch per adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers as tf
from bench_generate import MODELS, VOCAB, wait_for_idle

from alignlab.lora import MultiLora
from alignlab.model.hf import load_model

QUICK_IDLE_WAIT = 5.0


def adapter_config(i: int) -> peft.LoraConfig:
    r = 8 if i % 2 == 0 else 16
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"] if i % 4 < 2 else "all-linear"
    return peft.LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, target_modules=targets,
                           init_lora_weights=False)


@torch.no_grad()
def shrink_lora(model: torch.nn.Module, factor: float = 0.1):
    """init_lora_weights=False gives nn.Linear's init to B too; scaled down, the updates move the logits without
    swamping the base (greedy rows then do not all collapse to one token)."""
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.mul_(factor)


def build(tmp: Path, n_adapters: int):
    """(alignlab base model, PeftModel with every adapter, {name: directory}), all with the same weights."""
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, **MODELS["5M"])
    hf = tf.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(tmp / "base")
    names = [f"a{i}" for i in range(n_adapters)]
    pm = peft.get_peft_model(hf, adapter_config(0), adapter_name=names[0])
    for i, name in enumerate(names[1:], 1):
        pm.add_adapter(name, adapter_config(i))
    shrink_lora(pm)
    pm.save_pretrained(tmp / "adapters")  # each adapter in a subfolder by name ("default" would go at the top)
    dirs = {name: tmp / "adapters" / name for name in names}
    model = load_model(tmp / "base", dtype=torch.float32).requires_grad_(False)
    return model, pm.eval().requires_grad_(False), dirs


@torch.inference_mode()
def greedy(model, prompts: torch.Tensor, new: int) -> torch.Tensor:
    """Prefill the batch, then one [B, 1] forward per new token with a KV cache; the new tokens [B, new]."""
    cache = model.new_cache(prompts.shape[0], prompts.shape[1] + new)
    logits = model(prompts, cache=cache, last_only=True)
    out = []
    for _ in range(new):
        tok = logits[:, -1].argmax(-1)  # [B]
        out.append(tok)
        logits = model(tok[:, None], cache=cache)
    return torch.stack(out, 1)


def mixed(model, adapters: MultiLora, kernel: str, prompts, names, new):
    adapters.kernel = kernel
    with adapters.rows(adapters.activate(names)):
        return greedy(model, prompts, new)


def per_adapter(model, adapters: MultiLora, prompts, names, new, kernel):
    adapters.kernel = kernel
    out = torch.empty(len(names), new, dtype=torch.long)
    for name in dict.fromkeys(names):
        rows = [b for b, n in enumerate(names) if n == name]
        with adapters.rows(adapters.activate([name] * len(rows))):
            out[rows] = greedy(model, prompts[rows], new)
    return out


def base(model, adapters: MultiLora, prompts, names, new):
    return greedy(model, prompts, new)


@torch.inference_mode()
def peft_mixed(pm, prompts, names, new):
    out = pm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), adapter_names=names,
                      do_sample=False, max_new_tokens=new, min_new_tokens=None, pad_token_id=0)
    return out[:, prompts.shape[1]:]


def timed(fn, reps: int, idle_wait: float):
    """(fastest wall time of reps runs, the result), after one warm-up run."""
    result = fn()
    best = float("inf")
    for _ in range(reps):
        wait_for_idle(idle_wait)
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--per-adapter-kernel", default="sgmv", choices=["sgmv", "grouped"],
                    help="the kernel of the one-batch-per-adapter side (one adapter per batch: sgmv is a pair of "
                         "plain products)")
    ap.add_argument("--order", default="interleaved", choices=["interleaved", "grouped"],
                    help="request j uses adapter j mod --adapters (interleaved), or the requests come grouped by "
                         "adapter, as an engine that orders its rows by adapter batches them (every side gets "
                         "the same order)")
    ap.add_argument("--agree", type=float, default=0.9, help="fraction of rows that must equal PEFT's tokens")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 requests, 8 new tokens, 1 rep, 5 s idle")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.new, args.reps = 16, 8, 1
    idle_wait = QUICK_IDLE_WAIT if args.quick else None

    print(f"torch {torch.__version__}, transformers {tf.__version__}, peft {peft.__version__}, "
          f"threads {torch.get_num_threads()}; 5M Llama, {args.adapters} adapters (r 8/16), {args.requests} "
          f"requests x {args.new} new tokens, prompt {args.prompt}, fp32")
    with tempfile.TemporaryDirectory() as tmp:
        model, pm, dirs = build(Path(tmp), args.adapters)
        adapters = MultiLora(model, max_loras=args.adapters, max_cpu_loras=args.adapters)
        for name, d in dirs.items():
            adapters.load(name, d)
    if args.order == "interleaved":
        names = [f"a{j % args.adapters}" for j in range(args.requests)]
    else:
        names = [f"a{j * args.adapters // args.requests}" for j in range(args.requests)]
    prompts = torch.randint(0, VOCAB, (args.requests, args.prompt), generator=torch.Generator().manual_seed(0))

    sides = {
        "alignlab mixed grouped": lambda: mixed(model, adapters, "grouped", prompts, names, args.new),
        "alignlab mixed sgmv": lambda: mixed(model, adapters, "sgmv", prompts, names, args.new),
        "alignlab mixed bmm": lambda: mixed(model, adapters, "bmm", prompts, names, args.new),
        "alignlab per adapter": lambda: per_adapter(model, adapters, prompts, names, args.new,
                                                    args.per_adapter_kernel),
        "alignlab base": lambda: base(model, adapters, prompts, names, args.new),
        "PEFT mixed": lambda: peft_mixed(pm, prompts, names, args.new),
    }
    times, tokens = {}, {}
    for side, fn in sides.items():
        times[side], tokens[side] = timed(fn, args.reps, idle_wait)
    ref = tokens["PEFT mixed"]
    print(f"{'side':<22} {'tok/s':>8} {'vs PEFT':>8} {'vs per adapter':>15} {'rows = PEFT':>12}")
    tps, failed = {}, False
    for side, t in times.items():
        tps[side] = args.requests * args.new / t
        same = (tokens[side] == ref).all(1).float().mean().item()
        check = "" if side == "alignlab base" else f"{same:>12.2f}"
        failed |= side != "alignlab base" and same < args.agree
        print(f"{side:<22} {tps[side]:>8.0f} {times['PEFT mixed'] / t:>7.2f}x "
              f"{times['alignlab per adapter'] / t:>14.2f}x {check}")
    base_same = (tokens["alignlab base"] == ref).all(1).float().mean().item()
    print(f"(the base alone equals the adapters' tokens on {base_same:.2f} of the rows: the adapters matter)")
    print(json.dumps({
        "tok_per_s": {k: round(v, 1) for k, v in tps.items()},
        "mixed_grouped_vs_peft": round(times["PEFT mixed"] / times["alignlab mixed grouped"], 3),
        "mixed_grouped_vs_per_adapter": round(times["alignlab per adapter"] / times["alignlab mixed grouped"], 3),
        "mixed_sgmv_vs_peft": round(times["PEFT mixed"] / times["alignlab mixed sgmv"], 3),
        "mixed_bmm_vs_peft": round(times["PEFT mixed"] / times["alignlab mixed bmm"], 3),
        "mixed_sgmv_vs_per_adapter": round(times["alignlab per adapter"] / times["alignlab mixed sgmv"], 3),
        "mixed_bmm_vs_per_adapter": round(times["alignlab per adapter"] / times["alignlab mixed bmm"], 3),
        "sgmv_vs_bmm": round(times["alignlab mixed bmm"] / times["alignlab mixed sgmv"], 3),
        "base_vs_mixed_grouped": round(times["alignlab mixed grouped"] / times["alignlab base"], 3),
        "adapters": args.adapters, "requests": args.requests, "new": args.new, "threads": torch.get_num_threads(),
        "quick": args.quick}))
    if failed:
        print(f"FAILED: a side's tokens equal PEFT's on fewer than {args.agree:.0%} of the rows")
        sys.exit(1)


if __name__ == "__main__":
    main()
