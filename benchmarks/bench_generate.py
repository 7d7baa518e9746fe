"""Greedy generation speed: alignlab's Engine vs transformers' `generate`, same random Llama weights, fp32 and bf16.

    OMP_NUM_THREADS=2 python benchmarks/bench_generate.py [--dtype fp32,bf16] [--reps 5] [--new 128] [--prompt 32]
                                                          [--quick]

Both sides get the same prompts, generate exactly --new tokens (no end-of-sequence token exists), on 2 threads,
after a warm-up run. --dtype (default: fp32,bf16 where the CPU runs bf16 natively, else fp32; see dtypes.py) runs
both sides at each dtype back to back: fp32 weights, or bf16 weights on both sides (transformers: the model cast
with .to(torch.bfloat16); alignlab: load_model(dir, dtype=torch.bfloat16)). Each (model, batch, dtype) cell times
the two sides alternately --reps times and times every forward call (prefill, then one per token). Made for a
shared machine: each run first waits (up to 60 s) for the CPUs to be idle, and a side's time is the sum over steps
of that step's fastest time across the reps, so a burst of someone else's load does not land in one side's
numbers (the ratio of best-of wall times is printed too). tok/s = batch * new / that time, prefill included.

Tokens. In fp32 the two sides must produce identical tokens, or the benchmark fails (exit status 1). In bf16 a
greedy choice between two tokens whose logits are nearly equal can go either way with rounding, so a row may part
from transformers' and then continue differently; with random weights near ties are common (the top two logits are
within 0.025 standard deviations of the position's logits at one position in ten), and few of 128-token rows stay
identical, between the two sides as between transformers' own bf16 and fp32 runs. A bf16 row agrees when it is
identical to transformers' bf16 row, or when it first differs at a near tie: the two tokens' logits, computed in
fp32 by transformers on the shared prefix, are within TIE = 0.1 standard deviations of that position's logits.
Measured against fp32 (640 positions, either side), bf16 weights move the difference of the top two logits by 0.01
std (median), 0.045 (99th percentile), 0.055 at most; TIE is twice that. A model that computes something else parts
at ordinary gaps (median 0.14 std). The benchmark fails when fewer than --bf16-agree (default 0.9) of a cell's rows
agree; it prints how many rows are identical, the mean length of the shared prefix, and for scale how many of
transformers' bf16 rows equal its fp32 rows. Repeated runs of one side at one dtype must be identical in both
dtypes. The last line is JSON with every ratio by dtype (alignlab tok/s / HF tok/s), the bf16 token agreement and
the CPU.

--ragged also times the engine on a batch of 16 requests wanting 8..128 new tokens, with and without
compacting finished rows out of the batch; both must generate the same tokens (in bf16: agree, as above).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import torch
import transformers as tf
from dtypes import DTYPES, add_dtype_argument, capability, cpu_idle_fraction, describe, parse_dtypes

import alignlab.infer.engine as engine_module
from alignlab.infer import Engine, SamplingParams
from alignlab.model.decode import DecodeStep
from alignlab.model.hf import load_model

MODELS = {  # Llama shapes; vocab 8192
    "5M": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=688),
    "27M": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=1376),
}
VOCAB = 8192
IDLE_WAIT = 60.0  # seconds a timed run waits for idle CPUs at most (--quick: QUICK_IDLE_WAIT)
QUICK_IDLE_WAIT = 5.0
TIE = 0.1  # bf16: rows may part where the top two fp32 logits are within TIE standard deviations of the logits


def build(name: str, tmp: str, dtypes: list[str]):
    """(transformers fp32 model, {dtype: (transformers model, alignlab model)}), all with the same weights."""
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, **MODELS[name])
    hf = tf.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(tmp)
    pairs = {d: (hf if d == "fp32" else copy.deepcopy(hf).to(DTYPES[d]), load_model(tmp, dtype=DTYPES[d]))
             for d in dtypes}
    for pair in pairs.values():  # inference models on both sides (alignlab's engine then packs the weights once)
        for model in pair:
            model.requires_grad_(False)
    return hf, pairs


def run_hf(hf, prompts: torch.Tensor, new: int) -> torch.Tensor:
    with torch.inference_mode():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=new,
                          min_new_tokens=None, pad_token_id=0)
    return out[:, prompts.shape[1]:]


def run_ours(engine: Engine, prompts: torch.Tensor, new: int) -> torch.Tensor:
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    return torch.tensor([c.token_ids for c in engine.generate(prompts.tolist(), params)])


def wait_for_idle(max_wait: float | None = None, idle: float = 0.9):
    """Wait until the CPUs are `idle` idle, at most max_wait seconds (default IDLE_WAIT)."""
    deadline = time.time() + (IDLE_WAIT if max_wait is None else max_wait)
    while cpu_idle_fraction() < idle and time.time() < deadline:
        pass


class StepClock:
    """Timestamps every forward call of a model: the prefill, then one call per generated token (alignlab's engine
    decodes through model/decode.py's DecodeStep where it applies, and those calls tick the running clock too)."""

    running: StepClock | None = None

    def __init__(self, model: torch.nn.Module):
        self.ticks: list[float] = []
        model.register_forward_pre_hook(lambda module, args: self.ticks.append(time.perf_counter()))

    def run(self, fn, *fn_args):
        """(durations of [prefill, step 1, ..., step n-1, finish], fn's result) for one timed run."""
        wait_for_idle()
        self.ticks = []
        StepClock.running = self
        t0 = time.perf_counter()
        out = fn(*fn_args)
        t1 = time.perf_counter()
        marks = [t0, *self.ticks, t1]
        return [b - a for a, b in zip(marks, marks[1:])], out


def _ticking(call):
    def step(*args, **kwargs):
        if StepClock.running is not None:
            StepClock.running.ticks.append(time.perf_counter())
        return call(*args, **kwargs)
    return step


DecodeStep.__call__ = _ticking(DecodeStep.__call__)


def robust_seconds(runs: list[list[float]]) -> float:
    """Sum over steps of each step's fastest time across runs. Another job on the machine slows some steps
    of some runs, rarely the same step of every run, so this estimates an undisturbed run."""
    return sum(min(step) for step in zip(*runs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--models", default="5M,27M")
    add_dtype_argument(ap)
    ap.add_argument("--bf16-agree", type=float, default=0.9,
                    help="the smallest fraction of a cell's bf16 rows that must agree with transformers' (see above)")
    ap.add_argument("--ragged", action="store_true", help="also time batch compaction on ragged lengths")
    ap.add_argument("--quick", action="store_true",
                    help=f"a smoke run: model 5M, 2 reps, 32 new tokens, idle wait {QUICK_IDLE_WAIT:g} s")
    args = ap.parse_args()
    if args.quick:
        global IDLE_WAIT
        args.models, args.reps, args.new, IDLE_WAIT = "5M", 2, 32, QUICK_IDLE_WAIT
    torch.set_num_threads(2)
    dtypes = parse_dtypes(args.dtype, "infer")
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}, "
          f"prompt {args.prompt}, new {args.new}, {args.reps} reps")
    print(describe(dtypes, "infer"))
    print(f"{'model':>6} {'batch':>5} {'dtype':>5} {'HF tok/s':>9} {'alignlab tok/s':>14} {'ratio':>6}  "
          "(best-of wall-time ratio)")
    ratios, wall_ratios = {d: {} for d in dtypes}, {d: {} for d in dtypes}
    agreement = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf32, pairs = build(name, tmp, dtypes)
        engines, clocks = {}, {}
        for dtype, (hf, model) in pairs.items():
            engines[dtype] = Engine(model)
            weights = {p.dtype for p in engines[dtype].model.parameters()} | {p.dtype for p in hf.parameters()}
            if weights != {DTYPES[dtype]}:
                raise SystemExit(f"{name} {dtype}: the weights are {weights}, not {DTYPES[dtype]}")
            clocks[dtype] = StepClock(hf), StepClock(model)
        for batch in map(int, args.batches.split(",")):
            prompts = torch.randint(0, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
            key = f"{name}/b{batch}"
            for dtype, (hf, _) in pairs.items():
                engine, (hf_clock, our_clock) = engines[dtype], clocks[dtype]
                want = run_hf(hf, prompts, args.new)  # warm-up, and the reference tokens
                first = run_ours(engine, prompts, args.new)
                if dtype == "fp32":
                    same_tokens(first, want, f"{name} batch {batch}: alignlab vs HF")
                else:
                    agreement[key] = bf16_agreement(first.tolist(), want.tolist(), prompts.tolist(), hf32)
                    agreement[key]["hf_bf16_vs_fp32_identical"] = int(
                        (want == run_hf(hf32, prompts, args.new)).all(1).sum())
                runs_hf, runs_ours = [], []
                for rep in range(args.reps):
                    steps, out = hf_clock.run(run_hf, hf, prompts, args.new)
                    same_tokens(out, want, f"{name} batch {batch} {dtype}: HF run {rep + 1} vs its first")
                    runs_hf.append(steps)
                    steps, out = our_clock.run(run_ours, engine, prompts, args.new)
                    same_tokens(out, first, f"{name} batch {batch} {dtype}: alignlab run {rep + 1} vs its first")
                    runs_ours.append(steps)
                n = batch * args.new
                hf_tps, ours_tps = n / robust_seconds(runs_hf), n / robust_seconds(runs_ours)
                wall = min(map(sum, runs_hf)) / min(map(sum, runs_ours))
                ratios[dtype][key], wall_ratios[dtype][key] = round(ours_tps / hf_tps, 2), round(wall, 2)
                print(f"{name:>6} {batch:>5} {dtype:>5} {hf_tps:>9.0f} {ours_tps:>14.0f} {ours_tps / hf_tps:>5.2f}x  "
                      f"({wall:.2f}x)", flush=True)
        if args.ragged:
            for dtype in pairs:
                ragged(engines[dtype], clocks[dtype][1], name, dtype, hf32, args)
    failed = []
    for key, a in agreement.items():
        parted = (f"the others part at a gap of at most {a['largest_gap']:.3f} std, tie {TIE}"
                  if a["identical"] < a["rows"] else "none parts")
        print(f"{key} bf16 tokens: alignlab equals transformers on {a['identical']}/{a['rows']} rows (mean shared "
              f"prefix {a['mean_prefix']:.0f} of {args.new}), {a['agree']}/{a['rows']} agree ({parted}); for scale, "
              f"transformers' bf16 rows equal its fp32 rows on {a['hf_bf16_vs_fp32_identical']}/{a['rows']}")
        if a["agree"] < args.bf16_agree * a["rows"]:
            failed.append(key)
    if failed:
        raise SystemExit(f"{', '.join(failed)}: fewer than {args.bf16_agree:.0%} of the bf16 rows agree with "
                         f"transformers' (identical, or parting at a near tie within {TIE} std)")
    print(json.dumps({"ratio": ratios, "wall_time_ratio": wall_ratios, "bf16_tokens": agreement, "cpu": capability(),
                      "new": args.new, "prompt": args.prompt, "reps": args.reps}))


def same_tokens(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Exit with a message unless the two [batch, new] token tensors are identical."""
    if got.shape != want.shape:
        raise SystemExit(f"{what}: generated {tuple(got.shape)} tokens, expected {tuple(want.shape)}")
    if not torch.equal(got, want):
        row, col = (got != want).nonzero()[0].tolist()
        raise SystemExit(f"{what}: different tokens (first at row {row}, position {col}: {got[row, col]} vs "
                         f"{want[row, col]})")


def bf16_agreement(got: list[list[int]], want: list[list[int]], prompts: list[list[int]], hf32) -> dict:
    """How many rows are identical, and how many agree: identical, or first differing where transformers in fp32
    (hf32) puts the two tokens' logits within TIE standard deviations of that position's logits (a near tie, which
    bf16 rounding can flip)."""
    identical, agree, prefixes, gaps = 0, 0, [], []
    for g, w, p in zip(got, want, prompts):
        j = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), None)
        if j is None and len(g) == len(w):
            identical += 1
            agree += 1
            prefixes.append(len(w))
            continue
        j = min(len(g), len(w)) if j is None else j
        prefixes.append(j)
        if j >= min(len(g), len(w)):
            continue  # one row is longer: not a tie
        with torch.inference_mode():
            logits = hf32(torch.tensor([p + w[:j]])).logits[0, -1].float()
        gap = float((logits[g[j]] - logits[w[j]]).abs() / logits.std())
        gaps.append(gap)
        agree += gap <= TIE
    return {"rows": len(want), "identical": identical, "agree": agree, "mean_prefix": sum(prefixes) / len(prefixes),
            "largest_gap": max(gaps, default=0.0)}


def ragged(engine: Engine, clock: StepClock, name: str, dtype: str, hf32, args):
    """16 requests wanting 8..128 tokens: compacting finished rows away vs computing them to the end."""
    lengths = torch.linspace(8, args.new, 16).long().tolist()
    prompts = torch.randint(0, VOCAB, (16, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    params = [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    default = engine_module.COMPACT_FRACTION
    tps, tokens = {}, {}
    for label, fraction in (("compacting", default), ("never compacting", float("inf"))):
        engine_module.COMPACT_FRACTION = fraction
        tokens[label] = [c.token_ids for c in engine.generate(prompts, params)]
        runs = [clock.run(engine.generate, prompts, params)[0] for _ in range(args.reps)]
        tps[label] = sum(lengths) / robust_seconds(runs)
    engine_module.COMPACT_FRACTION = default
    a, b = tokens["compacting"], tokens["never compacting"]
    if dtype == "fp32" and a != b:
        raise SystemExit(f"{name} ragged batch: compacting finished rows changed the generated tokens")
    note = ""
    if dtype != "fp32":
        agree = bf16_agreement(a, b, prompts, hf32)
        if agree["agree"] < args.bf16_agree * agree["rows"]:
            raise SystemExit(f"{name} ragged batch {dtype}: compacting changed {agree['rows'] - agree['agree']} rows "
                             "beyond a near tie")
        note = f" (rows identical with and without compacting: {agree['identical']}/16, agreeing {agree['agree']}/16)"
    print(f"{name:>6} ragged batch 16 {dtype} (8..{args.new} new tokens): " +
          ", ".join(f"{label} {v:.0f} tok/s" for label, v in tps.items()) + note)


if __name__ == "__main__":
    main()
