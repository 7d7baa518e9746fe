"""Serving throughput: alignlab's LLMEngine (paged KV cache, continuous batching) vs its static Engine vs
transformers' `generate`, on one fixed workload; and the KV memory the paged cache wastes and saves.

    OMP_NUM_THREADS=2 python benchmarks/bench_serve.py [--requests 256] [--max-new 256] [--batches 16,32] [--reps 1]
                                                       [--quick]

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

tok/s counts the tokens the requests asked for (a static batch's extra tokens past a request's length count as
waste, not throughput). The three must produce the same tokens for every request (the transformers rows cut to
their request's length), or the benchmark fails (exit status 1). After a warm-up, the three run in turn --reps
times, on torch's threads (OMP_NUM_THREADS), and each keeps its fastest run.

KV memory. (1) wasted slots: the fraction of the paged pool's allocated slots that hold no token, averaged over the
LLMEngine's steps (only each sequence's last block can have empty slots), against the static cache, which reserves
max prompt + max new slots per row of its batch. (2) sharing: 8 requests of one prompt (n = 8 samples, as GRPO asks
for) hold the prompt's blocks once; the blocks saved = 8 x the prompt's blocks - the blocks in use after the prefill.

The last line is JSON with the throughput ratios (LLMEngine / static, LLMEngine / transformers at each batch) and
the memory figures. On a shared machine the timings move with other load; the token check does not.
"""

from __future__ import annotations

import argparse
import json
import random
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

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def run_continuous(model, work, batch: int):
    """Every request added at once; max_num_seqs = batch. Also the mean wasted fraction of allocated slots."""
    engine = LLMEngine(model, max_num_seqs=batch, max_num_batched_tokens=512)
    for i, (p, q) in enumerate(zip([p for p, _ in work], params_of(work))):
        engine.add_request(str(i), p, q)
    done, waste = {}, []
    while engine.has_unfinished():
        done.update((o.request_id, o.completion.token_ids) for o in engine.step() if o.finished)
        s = engine.stats()
        if s["used"]:
            waste.append(s["wasted"] / (s["used"] * engine.cache.block_size))
    return [done[str(i)] for i in range(len(work))], sum(waste) / len(waste)


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
    ap.add_argument("--batches", default="16,32")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 requests of at most 32 new tokens, batch 8")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_new, args.batches = 32, 32, "8"
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing (../shared/data beside the checkout)")
    work = workload(args.requests, args.max_new)
    wanted = sum(n for _, n in work)
    print(f"torch {torch.__version__}, transformers {tf.__version__}, threads {torch.get_num_threads()}; "
          f"{len(work)} requests, prompts {sum(len(p) for p, _ in work) / len(work):.1f} tokens on average, "
          f"{wanted} tokens to generate ({wanted / len(work):.1f} per request, at most {args.max_new})")
    with tempfile.TemporaryDirectory() as tmp:
        hf, model = build(tmp)
    warm = work[:4]
    run_continuous(model, warm, 4), run_static(model, warm, 4), run_hf(hf, warm, 4)
    print(f"{'batch':>5} {'engine':>22} {'seconds':>8} {'tok/s':>8}")
    ratios, result, waste = {}, {}, {}
    for batch in map(int, args.batches.split(",")):
        secs = {"continuous": float("inf"), "static": float("inf"), "transformers": float("inf")}
        for _ in range(args.reps):
            t, (cont, waste[batch]) = timed(run_continuous, model, work, batch)
            secs["continuous"] = min(secs["continuous"], t)
            t, static = timed(run_static, model, work, batch)
            secs["static"] = min(secs["static"], t)
            t, ref = timed(run_hf, hf, work, batch)
            secs["transformers"] = min(secs["transformers"], t)
        for name, out in (("LLMEngine", cont), ("static Engine", static)):
            bad = [i for i, (a, b) in enumerate(zip(out, ref)) if a != b]
            if bad:
                raise SystemExit(f"batch {batch}: {name} differs from transformers on requests {bad[:10]}")
        for name, label in (("continuous", "alignlab LLMEngine"), ("static", "alignlab Engine (static)"),
                            ("transformers", "transformers generate")):
            print(f"{batch:>5} {label:>22} {secs[name]:>8.2f} {wanted / secs[name]:>8.0f}", flush=True)
        ratios[f"b{batch}"] = {"vs_static": round(secs["static"] / secs["continuous"], 2),
                               "vs_transformers": round(secs["transformers"] / secs["continuous"], 2)}
        result[f"b{batch}"] = {k: round(wanted / v, 1) for k, v in secs.items()}
    memory = {f"b{b}": {"paged_wasted_fraction": round(w, 4), "static_wasted_fraction": round(static_waste(work, b), 4)}
              for b, w in waste.items()}
    longest = max((p for p, _ in work), key=len)
    memory["sharing"] = sharing(model, longest)
    for b, m in memory.items():
        if b != "sharing":
            print(f"KV slots wasted, batch {b[1:]}: paged {m['paged_wasted_fraction']:.1%} (mean over steps) vs "
                  f"static {m['static_wasted_fraction']:.1%} (reserved, never filled)")
    s = memory["sharing"]
    print(f"n={s['n']} samples of a {s['prompt_tokens']}-token prompt: {s['blocks_shared']} blocks instead of "
          f"{s['blocks_private']} ({s['blocks_saved']} saved)")
    print(json.dumps({"bench": "serve", "requests": len(work), "tokens": wanted, "tok_per_s": result,
                      "ratio": ratios, "memory": memory, "quick": args.quick}))


if __name__ == "__main__":
    main()
