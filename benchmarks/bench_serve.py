"""Serving throughput: alignlab's LLMEngine (paged KV cache, continuous batching) vs its static Engine vs
transformers' `generate`, on one fixed workload; and the KV memory the paged cache wastes and saves.

    OMP_NUM_THREADS=2 python benchmarks/bench_serve.py [--requests 256] [--max-new 256] [--batches 32,64,128,256]
                                                       [--reps 1] [--block-sizes 16,8] [--vllm-python PY] [--quick]
                                                       [--one-group]

Workload. --requests requests drawn (seed 0, with replacement) from the Alpaca sample in
../shared/data/instructions/alpaca_en_demo.json. Real tokens: a byte-level BPE with 8192 ids (alignlab.text.train_bpe
on the sample's text) encodes each row's instruction (+ input) as the prompt; the row's output, encoded, gives
the number of tokens to generate (capped at --max-new). Lengths vary as in real traffic (prompts ~20 tokens,
outputs from a few to hundreds), which is what continuous batching is for. Greedy, ignore_eos (the random model
would otherwise stop anywhere), fp32, a random Llama with bench_generate.py's 5M shapes (seed 0), all requests
present at the start (offline throughput), --batches giving the concurrency:

    alignlab LLMEngine    max_num_seqs = batch: a finished request's place is taken at the next step
    alignlab Engine       static batches of `batch` requests in arrival order; each request stops at its own
                          length, but its batch's next one waits for the batch's longest
    transformers          generate on left-padded batches of `batch`, each run to the batch's longest request
    vLLM                  with --vllm-python (default .venv-vllm/bin/python where it exists): vLLM's offline `LLM`
                          with max_num_seqs = batch, run by that interpreter (vllm_throughput.py; its CPU build
                          takes 32-token blocks); its tokens are compared with transformers' and the share that
                          agree is reported (fp32 on both, but other kernels: a near tie can flip)

--one-group adds a row: LLMEngine with every row's attention in one group, padded to the longest row, as
against its default of grouping rows of similar length (paged.py: length_groups); the same tokens, other speed.

tok/s counts the tokens the requests asked for (a static batch's extra tokens past a request's length count as
waste, not throughput). The three must produce the same tokens for every request (the transformers rows cut to
their request's length), or the benchmark fails (exit status 1). After a warm-up, the three run in turn --reps
times, on torch's threads (OMP_NUM_THREADS), and each keeps its fastest run. Two comparisons come out: at each
batch (the same concurrency on each side), and each side at its best batch of those tried ("best vs best": what
a user who tunes the batch gets from each; a padded batch trades the padding's waste against larger products).

KV memory, measured in separate untimed runs at each of --block-sizes: (1) wasted slots: of all the slots the
paged pool had allocated, summed over the LLMEngine's steps, the fraction holding no token (only each
sequence's last block can have empty slots; about (block_size - 1) / 2 per sequence), against the static cache,
which reserves max prompt + max new slots per row of its batch. (2) sharing: 8 requests of one prompt (n = 8
samples, as GRPO asks for) hold the prompt's blocks once; the blocks saved = 8 x the prompt's blocks - the blocks
in use after the prefill.

The last line is JSON with the throughput ratios (LLMEngine / static, LLMEngine / transformers at each batch, and
best vs best) and the memory figures. On a shared machine the timings move with other load; the token check
does not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf

from alignlab.infer import Engine, LLMEngine, SamplingParams
from alignlab.model.hf import load_model
from alignlab.text import train_bpe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DATA = SHARED_DATA / "instructions" / "alpaca_en_demo.json"
VOCAB = 8192


def workload(n: int, max_new: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """n (prompt ids, tokens to generate) pairs drawn from the Alpaca sample, tokenised by a BPE trained on it."""
    rows = json.loads(DATA.read_text())
    text = "\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows)
    tok = train_bpe(text, VOCAB, progress=False)
    rng = random.Random(seed)
    out = []
    for r in rng.choices(rows, k=n):
        prompt = tok.encode(r["instruction"] + ("\n" + r["input"] if r["input"] else ""), add_special_tokens=False)
        out.append((prompt, max(1, min(max_new, len(tok.encode(r["output"], add_special_tokens=False))))))
    return out


def build(tmp: str):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, **MODELS["5M"])
    hf = tf.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(tmp)
    model = load_model(tmp)
    for m in (hf, model):
        m.requires_grad_(False)
    return hf, model


def params_of(work) -> list[SamplingParams]:
    return [SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True) for _, n in work]


def run_continuous(model, work, batch: int, block_size: int = 16, measure: bool = False, one_group: bool = False):
    """Every request added at once; max_num_seqs = batch. With measure, also the fraction of the allocated slots
    that held no token, summed over the steps (engine.stats() after each step, outside the timed runs). With
    one_group, attention reads every row padded to the longest (no length groups: see infer/paged.py)."""
    engine = LLMEngine(model, max_num_seqs=batch, max_num_batched_tokens=512, block_size=block_size)
    if one_group:
        engine.cache.group_cost = 10 ** 12
    for i, (p, q) in enumerate(zip([p for p, _ in work], params_of(work))):
        engine.add_request(str(i), p, q)
    done, wasted, allocated = {}, 0, 0
    while engine.has_unfinished():
        done.update((o.request_id, o.completion.token_ids) for o in engine.step() if o.finished)
        if measure:
            s = engine.stats()
            wasted, allocated = wasted + s["wasted"], allocated + s["used"] * block_size
    return [done[str(i)] for i in range(len(work))], (wasted / allocated if measure else None)


def run_static(model, work, batch: int):
    engine, out = Engine(model), []
    for s in range(0, len(work), batch):
        chunk = work[s:s + batch]
        out += [c.token_ids for c in engine.generate([p for p, _ in chunk], params_of(chunk))]
    return out


def static_waste(work, batch: int) -> float:
    """Fraction of the static cache's slots (rows x (longest prompt + most new tokens)) never holding a token."""
    reserved = held = 0
    for s in range(0, len(work), batch):
        chunk = work[s:s + batch]
        reserved += len(chunk) * (max(len(p) for p, _ in chunk) + max(n for _, n in chunk))
        held += sum(len(p) + n for p, n in chunk)
    return 1 - held / reserved


def run_hf(hf, work, batch: int):
    out = []
    for s in range(0, len(work), batch):
        chunk = work[s:s + batch]
        L = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, _) in enumerate(chunk):
            ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
        with torch.inference_mode():
            gen = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max(n for _, n in chunk),
                              pad_token_id=0)
        out += [gen[i, L:L + n].tolist() for i, (_, n) in enumerate(chunk)]
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run_vllm(python: str, model_dir: str, work, batches: list[int], reps: int) -> dict:
    """vllm_throughput.py in the vLLM venv: {"seconds": {batch: s}, "tokens": [...], "version": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "work.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"model": model_dir, "prompts": [p for p, _ in work],
                                    "max_tokens": [n for _, n in work], "batches": batches, "reps": reps}))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        subprocess.run([python, str(ROOT / "benchmarks" / "vllm_throughput.py"), str(spec), str(out)], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def sharing(model, prompt: list[int], n: int = 8) -> dict:
    """Blocks in use after n samples of one prompt are prefilled, against n private copies."""
    engine = LLMEngine(model, block_size=16)
    for i in range(n):
        engine.add_request(str(i), prompt, SamplingParams(max_new_tokens=4, temperature=1.0, seed=i))
    engine.step()
    used = engine.stats()["used"]
    private = n * engine.cache.blocks_for(len(prompt))
    while engine.has_unfinished():
        engine.step()
    return {"prompt_tokens": len(prompt), "n": n, "blocks_private": private, "blocks_shared": used,
            "blocks_saved": private - used}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--block-sizes", default="16,8", help="the KV waste is measured at each (throughput at 16)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--one-group", action="store_true",
                    help="also time LLMEngine with every row in one attention group (padded to the longest)")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                    help="a Python with vLLM (skipped where it does not exist)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 requests of at most 32 new tokens, batch 8")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_new, args.batches, args.block_sizes = 32, 32, "8", "16"
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing (../shared/data beside the checkout)")
    work = workload(args.requests, args.max_new)
    wanted = sum(n for _, n in work)
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}; "
          f"{len(work)} requests, prompts {sum(len(p) for p, _ in work) / len(work):.1f} tokens on average, "
          f"{wanted} tokens to generate ({wanted / len(work):.1f} per request, at most {args.max_new})")
    model_dir = tempfile.TemporaryDirectory()
    hf, model = build(model_dir.name)
    warm = work[:4]
    run_continuous(model, warm, 4), run_static(model, warm, 4), run_hf(hf, warm, 4)
    print(f"{'batch':>5} {'engine':>22} {'seconds':>8} {'tok/s':>8}")
    ratios, result, secs_at = {}, {}, {}
    for batch in map(int, args.batches.split(",")):
        secs = {"continuous": float("inf"), "static": float("inf"), "transformers": float("inf")}
        if args.one_group:
            secs["one_group"] = float("inf")
        for _ in range(args.reps):
            t, (cont, _) = timed(run_continuous, model, work, batch)
            secs["continuous"] = min(secs["continuous"], t)
            if args.one_group:
                t, (padded, _) = timed(run_continuous, model, work, batch, 16, False, True)
                secs["one_group"] = min(secs["one_group"], t)
                if padded != cont:
                    raise SystemExit(f"batch {batch}: LLMEngine in one group differs from its grouped run")
            t, static = timed(run_static, model, work, batch)
            secs["static"] = min(secs["static"], t)
            t, ref = timed(run_hf, hf, work, batch)
            secs["transformers"] = min(secs["transformers"], t)
        for name, out in (("LLMEngine", cont), ("static Engine", static)):
            bad = [i for i, (a, b) in enumerate(zip(out, ref)) if a != b]
            if bad:
                raise SystemExit(f"batch {batch}: {name} differs from transformers on requests {bad[:10]}")
        for name, label in (("continuous", "alignlab LLMEngine"), ("one_group", "LLMEngine, one group"),
                            ("static", "alignlab Engine (static)"), ("transformers", "transformers generate")):
            if name not in secs:
                continue
            print(f"{batch:>5} {label:>22} {secs[name]:>8.2f} {wanted / secs[name]:>8.0f}", flush=True)
        ratios[f"b{batch}"] = {"vs_static": round(secs["static"] / secs["continuous"], 2),
                               "vs_transformers": round(secs["transformers"] / secs["continuous"], 2)}
        result[f"b{batch}"] = {k: round(wanted / v, 1) for k, v in secs.items()}
        secs_at[batch] = secs
    best = {side: min(secs_at, key=lambda b: secs_at[b][side]) for side in ("continuous", "static", "transformers")}
    fastest = {side: secs_at[b][side] for side, b in best.items()}
    ratios["best_vs_best"] = {"vs_static": round(fastest["static"] / fastest["continuous"], 2),
                              "vs_transformers": round(fastest["transformers"] / fastest["continuous"], 2),
                              "batches": {side: b for side, b in best.items()}}
    print(f"best vs best: LLMEngine at batch {best['continuous']} ({wanted / fastest['continuous']:.0f} tok/s) is "
          f"{ratios['best_vs_best']['vs_transformers']:.2f}x transformers at batch {best['transformers']} "
          f"({wanted / fastest['transformers']:.0f} tok/s) and {ratios['best_vs_best']['vs_static']:.2f}x the static "
          f"Engine at batch {best['static']}")
    if Path(args.vllm_python).exists() and not args.quick:
        batches = [int(b) for b in args.batches.split(",")]
        vllm = run_vllm(args.vllm_python, model_dir.name, work, batches, args.reps)
        agree = sum(a == b for a, b in zip(vllm["tokens"], ref)) / len(work)
        for b in batches:
            secs = vllm["seconds"][str(b)]
            result[f"b{b}"]["vllm"] = round(wanted / secs, 1)
            ratios[f"b{b}"]["vs_vllm"] = round(secs / secs_at[b]["continuous"], 2)
            print(f"{b:>5} {'vLLM ' + vllm['version']:>22} {secs:>8.2f} {wanted / secs:>8.0f}")
        vbest = min(batches, key=lambda b: vllm["seconds"][str(b)])
        ratios["best_vs_best"]["vs_vllm"] = round(vllm["seconds"][str(vbest)] / fastest["continuous"], 2)
        ratios["best_vs_best"]["batches"]["vllm"] = vbest
        ratios["vllm_tokens_agree"] = round(agree, 3)
        print(f"best vs best: LLMEngine is {ratios['best_vs_best']['vs_vllm']:.2f}x vLLM at batch {vbest}; vLLM's "
              f"tokens equal transformers' on {agree:.1%} of the requests (batch {batches[-1]})")
    else:
        print(f"vLLM: no {args.vllm_python} (infra/README.md sets one up); its rows are left out")
    memory = {}
    for bs in map(int, args.block_sizes.split(",")):
        b = best["continuous"]
        _, w = run_continuous(model, work, b, block_size=bs, measure=True)
        memory[f"block{bs}"] = {"batch": b, "paged_wasted_fraction": round(w, 4),
                                "static_wasted_fraction": round(static_waste(work, b), 4)}
        print(f"KV slots wasted, batch {b}, block size {bs}: paged {w:.1%} of the allocated slots over the run vs "
              f"static {static_waste(work, b):.1%} (reserved, never filled)")
    longest = max((p for p, _ in work), key=len)
    memory["sharing"] = sharing(model, longest)
    s = memory["sharing"]
    print(f"n={s['n']} samples of a {s['prompt_tokens']}-token prompt: {s['blocks_shared']} blocks instead of "
          f"{s['blocks_private']} ({s['blocks_saved']} saved)")
    print(json.dumps({"bench": "serve", "requests": len(work), "tokens": wanted, "tok_per_s": result,
                      "ratio": ratios, "memory": memory, "quick": args.quick}))


if __name__ == "__main__":
    main()
