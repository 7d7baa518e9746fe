"""Speculative decoding's speed-up: greedy, a draft guessing k = 1..8 tokens a round, against the target alone.

    OMP_NUM_THREADS=2 python benchmarks/bench_speculative.py [--target DIR] [--draft DIR] [--prompts 24]
                                                             [--max-new-tokens 64] [--ks 1,2,3,4,5,6,7,8] [--reps 3]

Both sides run the static Engine at batch 1, one prompt after another, on the same prompts with the same
SamplingParams (greedy, max_new_tokens, stopping at end-of-sequence); the speculative side adds draft_model and
num_speculative_tokens = k. Greedy speculative decoding must give the target's own tokens: every row is checked
identical to the plain engine's, else the benchmark fails (exit status 1). For each k it prints the acceptance
rate alpha-hat = accepted / proposed, the accepted guesses and the tokens per target forward (a round's accepted
guesses + the target's own token), what the formula below predicts from alpha-hat, tokens/s and the speed-up over
the target alone. Each configuration runs --reps times, alternating with the others, and a prompt's time is its
fastest run (another job's burst rarely lands on the same prompt in every rep); each pass first waits up to 10 s
for idle CPUs (the idle fractions seen are printed). The last line is JSON with the best ratio, its k, and the CPU.

Prompts: TinyWorld's held-out chat prompts (math levels 1-4 and safety prompts of the test split, which no training
data holds, rendered with the chat template) when the target's tokenizer is TinyWorld's (--world-seed), else random
token prompts of 16 tokens (then the rows run to max_new_tokens: ignore_eos).

Defaults: the target is runs/table/seed0/sft/model (the pipeline's SFT model: a 4-layer, 128-dim Llama), the draft
the first of DRAFTS that exists: runs/table/seed0/distill_2x128/kd_pre_prune_beta0.0_lmbda0.0/model (that model's
base cut to 2 blocks and distilled, `python scripts/distill_tinyworld.py --run runs/table/seed0 --init prune
--kd-pretrain --beta 0 --lmbda 0`), else the 2-layer student the script distils from its own base (its default run).
Both share the target's tokenizer. Without a draft the script says so and stops: it trains nothing
(--draft-layers/--draft-dim only name the student one would distil, with `alignlab distill`).

When does it pay? With alpha the chance that the target accepts a guess (taken as independent of the position) and
c the cost of a draft forward over a target forward, a round of k guesses costs k c + 1 target forwards (the
verification over k + 1 tokens costs about one one-token forward where decoding is bound by weights or overhead)
and yields

    E[tokens per round] = 1 + alpha + ... + alpha^k = (1 - alpha^{k+1}) / (1 - alpha)

tokens (Leviathan et al. 2023, arXiv:2211.17192), so the speed-up over the target alone is

    S(k) = (1 - alpha^{k+1}) / ((1 - alpha) (k c + 1)),

above 1 only when alpha is well above c: c = 0.1, alpha = 0.8 gives S = 2.4 at k = 4; c = 0.5, alpha = 0.8 gives
S = 1.2 at k = 1 to 3 and less beyond; c = 0.6 needs alpha > 0.6 to break even at k = 1 (S(1) = (1 + alpha) / 1.6).
(The printed "formula" column takes alpha as the measured accepted / proposed; acceptance is higher early in a round
and at easy positions, so the measured tokens per forward can beat it at large k.)

Here both models are tiny (1.05M and 0.62M parameters) and a forward on a 2-core CPU costs mostly its fixed Python
and kernel-launch overhead, which does not shrink with the model: the 2-layer draft costs about half of the 4-layer
target (c = 0.50 measured), not its parameter ratio, and each round adds its own bookkeeping (the acceptance test,
the cache rollback, a (k + 1)-token verification that costs more than a one-token step). With the draft cut from the
target's own base (acceptance 0.98 at k = 1 down to 0.84 at k = 8) the formula allows S = 1.48 at best (k = 3); one
measures 1.1-1.23x in fp32 (k = 3 to 7, idle Xeon with AMX), the rest lost to that bookkeeping; in bf16 the plain
engine's flat one-token step (model/decode.py) is cheaper than the verification forward and speculation loses. A
draft 10x cheaper than the target (c = 0.1: a large target, a GPU, memory-bound decoding) would turn the same 3.76
tokens per target forward (k = 3) into about 2.9x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from dtypes import cpu_idle_fraction, cpu_line, cpuinfo

from alignlab.data.world import MATH_LEVELS, TinyWorld
from alignlab.infer import Engine, SamplingParams
from alignlab.infer.speculative import Stats
from alignlab.model.hf import load_model
from alignlab.text import load_tokenizer

TARGET = "runs/table/seed0/sft/model"
DRAFTS = ("runs/table/seed0/distill_2x128/kd_pre_prune_beta0.0_lmbda0.0/model",
          "runs/table/seed0/distill_2x128/kd_beta0.5_lmbda0.5/model")
IDLE_WAIT = 10.0  # seconds each timed pass waits for idle CPUs at most (a shared machine)


def expected_tokens(alpha: float, k: int) -> float:
    """E[tokens per round] = (1 - alpha^{k+1}) / (1 - alpha): the accepted guesses + the target's own token."""
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def world_prompts(tok, n: int, seed: int) -> list[list[int]] | None:
    """n held-out TinyWorld chat prompts (math levels 1-4 and safety, in turn) as token ids, or None when the
    tokenizer is not TinyWorld's."""
    world = TinyWorld(seed=seed)
    ours = world.tokenizer()
    V = tok.vocab_size
    if ours.vocab_size != V or any(ours.id_to_token(i) != tok.id_to_token(i) for i in range(V)):
        return None
    pools = [world.rl_prompts("test", level=level) for level in MATH_LEVELS] + [world.safety_prompts("test")]
    chats = [pool[i] for i in range(n) for pool in pools if i < len(pool)][:n]
    return [tok.apply_chat_template(c["prompt"], add_generation_prompt=True, tokenize=True) for c in chats]


def wait_for_idle(max_wait: float = IDLE_WAIT, idle: float = 0.9) -> float:
    """Wait until the CPUs are `idle` idle, at most max_wait seconds; returns the last idle fraction seen."""
    deadline = time.time() + max_wait
    while (seen := cpu_idle_fraction()) < idle and time.time() < deadline:
        pass
    return seen


def forward_ms(model, reps: int = 50) -> float:
    """One-token forward with a KV cache of 32 tokens, in ms: the fastest of `reps`, after 5 untimed (on a shared
    machine a forward whose thread lost its core takes 100x longer, so the median is no better than the minimum)."""
    cache = model.new_cache(1, 64)
    times = []
    with torch.inference_mode():
        model(torch.zeros(1, 32, dtype=torch.long), cache=cache)
        for i in range(reps + 5):
            if i == 5:
                times = []
            t0 = time.perf_counter()
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
            times.append(time.perf_counter() - t0)
            cache.truncate(32)
    return 1e3 * min(times)


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> tuple[list[float], list[list[int]]]:
    """Per prompt: seconds and tokens, batch 1."""
    seconds, tokens = [], []
    for p in prompts:
        t0 = time.perf_counter()
        (c,) = engine.generate([p], params)
        seconds.append(time.perf_counter() - t0)
        tokens.append(c.token_ids)
    return seconds, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=TARGET)
    ap.add_argument("--draft", default=None, help=f"default: the first of {', '.join(DRAFTS)} that exists")
    ap.add_argument("--draft-layers", type=int, default=2, help="the student to distil when no draft exists (info)")
    ap.add_argument("--draft-dim", type=int, default=128, help="the student to distil when no draft exists (info)")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--ks", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--world-seed", type=int, default=0, help="the TinyWorld the target was trained on")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="both models' weights (bf16: the engine's packed bf16 path; a near tie may then part)")
    args = ap.parse_args()
    draft_dir = args.draft or next((d for d in DRAFTS if Path(d).is_dir()), None)
    if not Path(args.target).is_dir() or draft_dir is None or not Path(draft_dir).is_dir():
        missing = args.target if not Path(args.target).is_dir() else draft_dir or " or ".join(DRAFTS)
        print(f"bench_speculative: {missing}: no such model directory. Speculative decoding needs a target and a "
              f"draft model with the same tokenizer; this script trains none. Distil a {args.draft_layers}-layer, "
              f"{args.draft_dim}-dim student from the target with `alignlab distill`, then pass --draft DIR.")
        sys.exit(2)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    target, draft = load_model(args.target, dtype=dtype), load_model(draft_dir, dtype=dtype)
    for m in (target, draft):
        m.requires_grad_(False)
    tok = load_tokenizer(args.target)
    if draft.config.vocab_size != target.config.vocab_size:
        raise SystemExit(f"the draft's vocabulary ({draft.config.vocab_size}) is not the target's "
                         f"({target.config.vocab_size})")
    prompts = world_prompts(tok, args.prompts, args.world_seed)
    source = f"TinyWorld (seed {args.world_seed}) held-out chat prompts"
    ignore_eos = prompts is None
    if prompts is None:
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, target.config.vocab_size, (args.prompts, 16), generator=g).tolist()
        source = "random 16-token prompts (ignore_eos)"
    ks = [int(k) for k in args.ks.split(",")]
    n_params = [sum(p.numel() for p in m.parameters()) for m in (target, draft)]
    t_ms, d_ms = forward_ms(target), forward_ms(draft)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.dtype}; {cpu_line()}")
    print(f"target {args.target} ({n_params[0] / 1e6:.2f}M params, {target.config.n_layers}x{target.config.dim}), "
          f"draft {draft_dir} ({n_params[1] / 1e6:.2f}M, {draft.config.n_layers}x{draft.config.dim})")
    print(f"one-token forward: target {t_ms:.3f} ms, draft {d_ms:.3f} ms, c = {d_ms / t_ms:.2f}")
    print(f"{len(prompts)} {source}, max_new_tokens {args.max_new_tokens}, greedy, batch 1, best of {args.reps}")

    engine = Engine(target, tok)
    plain = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, ignore_eos=ignore_eos)
    configs = {0: plain} | {k: SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0,
                                              ignore_eos=ignore_eos, draft_model=draft, num_speculative_tokens=k)
                            for k in ks}
    run(engine, prompts[:2], plain)  # warm-up
    run(engine, prompts[:2], configs[ks[0]])
    best: dict[int, list[float]] = {}
    tokens: dict[int, list[list[int]]] = {}
    stats: dict[int, Stats] = {}
    idle = []
    for rep in range(args.reps):
        for k, params in configs.items():
            idle.append(wait_for_idle())
            engine.speculative_stats = Stats()
            seconds, tokens[k] = run(engine, prompts, params)
            best[k] = seconds if rep == 0 else [min(a, b) for a, b in zip(best[k], seconds)]
            stats[k] = engine.speculative_stats
    n_tokens = sum(len(t) for t in tokens[0])
    base = n_tokens / sum(best[0])
    print(f"target alone: {n_tokens} tokens, {base:.1f} tok/s; CPUs idle before the passes: "
          f"{min(idle):.0%} to {max(idle):.0%}")
    print(f"{'k':>2} {'accept':>7} {'acc/fwd':>8} {'tok/fwd':>8} {'formula':>8} {'tok/s':>8} {'speed-up':>9} "
          f"{'S(k) pred.':>10} {'identical':>10}")
    c = d_ms / t_ms
    rows, failed = [], False
    for k in ks:
        s = stats[k]
        same = sum(a == b for a, b in zip(tokens[k], tokens[0]))
        failed |= same < len(prompts) and args.dtype == "fp32"
        speed = sum(map(len, tokens[k])) / sum(best[k])
        alpha = s.acceptance_rate
        predicted = expected_tokens(alpha, k) / (k * c + 1)
        rows.append({"k": k, "acceptance_rate": round(alpha, 4),
                     "accepted_per_target_forward": round(s.accepted_per_target_forward, 3),
                     "tokens_per_target_forward": round(s.tokens_per_target_forward, 3),
                     "tok_s": round(speed, 1), "speedup": round(speed / base, 3), "identical": same})
        print(f"{k:>2} {alpha:>7.3f} {s.accepted_per_target_forward:>8.2f} {s.tokens_per_target_forward:>8.2f} "
              f"{expected_tokens(alpha, k):>8.2f} {speed:>8.1f} {speed / base:>8.2f}x {predicted:>9.2f}x "
              f"{same:>5}/{len(prompts)}")
    top = max(rows, key=lambda r: r["speedup"])
    print("formula: (1 - a^(k+1)) / (1 - a) at the measured acceptance a; S(k) pred.: that over k c + 1")
    print(json.dumps({"best_k": top["k"], "best_speedup": top["speedup"], "target_tok_s": round(base, 1),
                      "c": round(c, 3), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                      "dtype": args.dtype, "min_idle": round(min(idle), 2), "rows": rows, "cpu": cpuinfo()[0],
                      "bf16_flags": list(cpuinfo()[1])}))
    if failed:
        print("FAIL: greedy speculative tokens differ from the target's own", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
