"""Greedy generation speed: alignlab's Engine vs transformers' `generate`, same random Llama weights.

    OMP_NUM_THREADS=2 python benchmarks/bench_generate.py [--reps 5] [--new 128] [--prompt 32]

Both sides get the same prompts, generate exactly --new tokens (no end-of-sequence token exists), in fp32
on 2 threads, after a warm-up run. Each (model, batch) cell times the two sides alternately --reps times
and times every forward call (prefill, then one per token). Made for a shared machine: each run first
waits (up to 60 s) for the CPUs to be idle, and a side's time is the sum over steps of that step's fastest
time across the reps, so a burst of someone else's load does not land in one side's numbers (the ratio
of best-of wall times is printed too). tok/s = batch * new / that time, prefill included. The two sides
must produce identical tokens, or the benchmark fails (exit status 1). The last line is JSON with every ratio
(alignlab tok/s / HF tok/s).

--ragged also times the engine on a batch of 16 requests wanting 8..128 new tokens, with and without
compacting finished rows out of the batch; both must generate the same tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import transformers as tf

import alignlab.infer.engine as engine_module
from alignlab.infer import Engine, SamplingParams
from alignlab.model.hf import load_model

MODELS = {  # Llama shapes; vocab 8192
    "5M": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=688),
    "27M": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=1376),
}
VOCAB = 8192


def build(name: str, tmp: str):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, **MODELS[name])
    hf = tf.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(tmp)
    return hf, load_model(tmp)


def run_hf(hf, prompts: torch.Tensor, new: int) -> torch.Tensor:
    with torch.inference_mode():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=new,
                          min_new_tokens=None, pad_token_id=0)
    return out[:, prompts.shape[1]:]


def run_ours(engine: Engine, prompts: torch.Tensor, new: int) -> torch.Tensor:
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    return torch.tensor([c.token_ids for c in engine.generate(prompts.tolist(), params)])


def cpu_idle_fraction(window: float = 0.5) -> float:
    """Fraction of CPU time spent idle over `window` seconds (1.0 where /proc/stat does not exist)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        idle0, total0 = read()
        time.sleep(window)
        idle1, total1 = read()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle(max_wait: float = 60.0, idle: float = 0.9):
    deadline = time.time() + max_wait
    while cpu_idle_fraction() < idle and time.time() < deadline:
        pass


class StepClock:
    """Timestamps every forward call of a model: the prefill, then one call per generated token."""

    def __init__(self, model: torch.nn.Module):
        self.ticks: list[float] = []
        model.register_forward_pre_hook(lambda module, args: self.ticks.append(time.perf_counter()))

    def run(self, fn, *fn_args):
        """(durations of [prefill, step 1, ..., step n-1, finish], fn's result) for one timed run."""
        wait_for_idle()
        self.ticks = []
        t0 = time.perf_counter()
        out = fn(*fn_args)
        t1 = time.perf_counter()
        marks = [t0, *self.ticks, t1]
        return [b - a for a, b in zip(marks, marks[1:])], out


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
    ap.add_argument("--ragged", action="store_true", help="also time batch compaction on ragged lengths")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}, "
          f"prompt {args.prompt}, new {args.new}, {args.reps} reps")
    print(f"{'model':>6} {'batch':>5} {'HF tok/s':>9} {'alignlab tok/s':>14} {'ratio':>6}  (best-of wall-time ratio)")
    ratios, wall_ratios = {}, {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            hf, model = build(name, tmp)
        engine = Engine(model)
        hf_clock, our_clock = StepClock(hf), StepClock(model)
        for batch in map(int, args.batches.split(",")):
            prompts = torch.randint(0, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
            want = run_hf(hf, prompts, args.new)  # warm-up, and the reference tokens
            same_tokens(run_ours(engine, prompts, args.new), want, f"{name} batch {batch}: alignlab vs HF")
            runs_hf, runs_ours = [], []
            for rep in range(args.reps):
                steps, out = hf_clock.run(run_hf, hf, prompts, args.new)
                same_tokens(out, want, f"{name} batch {batch}: HF run {rep + 1} vs its first")
                runs_hf.append(steps)
                steps, out = our_clock.run(run_ours, engine, prompts, args.new)
                same_tokens(out, want, f"{name} batch {batch}: alignlab run {rep + 1} vs HF")
                runs_ours.append(steps)
            n = batch * args.new
            hf_tps, ours_tps = n / robust_seconds(runs_hf), n / robust_seconds(runs_ours)
            wall = min(map(sum, runs_hf)) / min(map(sum, runs_ours))
            key = f"{name}/b{batch}"
            ratios[key], wall_ratios[key] = round(ours_tps / hf_tps, 2), round(wall, 2)
            print(f"{name:>6} {batch:>5} {hf_tps:>9.0f} {ours_tps:>14.0f} {ours_tps / hf_tps:>5.2f}x  ({wall:.2f}x)",
                  flush=True)
        if args.ragged:
            ragged(engine, our_clock, name, args)
    print(json.dumps({"ratios": ratios, "wall_time_ratios": wall_ratios}))


def same_tokens(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Exit with a message unless the two [batch, new] token tensors are identical."""
    if got.shape != want.shape:
        raise SystemExit(f"{what}: generated {tuple(got.shape)} tokens, expected {tuple(want.shape)}")
    if not torch.equal(got, want):
        row, col = (got != want).nonzero()[0].tolist()
        raise SystemExit(f"{what}: different tokens (first at row {row}, position {col}: {got[row, col]} vs "
                         f"{want[row, col]})")


def ragged(engine: Engine, clock: StepClock, name: str, args):
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
    if tokens["compacting"] != tokens["never compacting"]:
        raise SystemExit(f"{name} ragged batch: compacting finished rows changed the generated tokens")
    print(f"{name:>6} ragged batch 16 (8..{args.new} new tokens): " +
          ", ".join(f"{label} {v:.0f} tok/s" for label, v in tps.items()))


if __name__ == "__main__":
    main()
