"""Server latency under concurrent users: `alignlab serve` driven by the official `openai` client from 1, 8 and 32
users at once; time to first token, inter-token latency, throughput and errors at each level.

    OMP_NUM_THREADS=2 python benchmarks/bench_serve_latency.py [--users 1,8,32] [--requests 96] [--max-new 64]
                                                               [--quick] [--save-model DIR] [--url URL --model NAME]

Server. A random Llama with bench_generate.py's 5M shapes (seed 0, fp32) and a byte-level BPE with 8192 ids trained
on the Alpaca sample in ../shared/data/instructions (as bench_serve.py builds it, plus the ChatML template), saved
to a temporary directory and served by `alignlab serve` in a subprocess on a free local port (the engine: LLMEngine,
continuous batching, --max-num-seqs 64). --url points the same clients at a server already running instead (vLLM,
say, serving the directory that --save-model DIR writes: `--url http://127.0.0.1:8000/v1 --model base`); it must
accept `ignore_eos`, as vLLM does.

Workload. --requests requests drawn (seed 0) from the Alpaca sample, the same list at every level: even ones are
streamed chat completions (the instruction as the user's message), odd ones streamed text completions (the
instruction as the prompt); each generates as many tokens as the row's output has (at most --max-new), greedy,
with ignore_eos (a random model would stop anywhere). At a level of U users, U asyncio tasks (AsyncOpenAI, no
retries) take the next request from the list as soon as their previous one ends, until the list is done; a
warm-up round of the list's first U requests at that concurrency comes first and is not counted.

Measures, per level (as vLLM's benchmark_serving reports them):

    TTFT      time to first token: from sending the request to the first chunk that carries text
    ITL       inter-token latency: the gaps between successive text chunks, pooled over all requests (a chunk may
              carry more than one token where the server holds text back, e.g. an incomplete UTF-8 character)
    TPOT      time per output token after the first: (latency - TTFT) / (tokens - 1), per request
    tok/s     output tokens (the streams' usage) / the level's wall time; req/s likewise
    errors    requests that raised (an HTTP error status, a broken stream), by exception type

p50 and p99 are the 50th and 99th percentiles. Client and server share the machine: on a 2-core CPU the clients'
own work (parsing the stream) takes time from the server, and the p99 moves with other load. The last line is
JSON with every level's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import openai
import torch
import transformers as tf

from alignlab.text import train_bpe
from alignlab.text.template import CHATML

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import MODELS  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED_DATA / "instructions" / "alpaca_en_demo.json"
VOCAB = 8192
NAME = "bench"  # the served model name


def build_model(out: Path):
    """(directory, tokenizer): the random 5M Llama and its tokenizer saved in `out`, as `alignlab serve` loads them."""
    rows = json.loads(DATA.read_text())
    text = "\n".join(r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows)
    tok = train_bpe(text, VOCAB, progress=False, chat_template=CHATML)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=None, **MODELS["5M"])
    tf.LlamaForCausalLM(cfg).float().save_pretrained(out)
    tok.save(out)
    return out, tok


def workload(tok, n: int, max_new: int, seed: int = 0) -> list[dict]:
    """n requests: {"chat": bool, "text": prompt or user message, "max_tokens": the row's output length}."""
    rows = json.loads(DATA.read_text())
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rng.choices(rows, k=n)):
        prompt = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        new = max(1, min(max_new, len(tok.encode(r["output"], add_special_tokens=False))))
        out.append({"chat": i % 2 == 0, "text": prompt, "max_tokens": new})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int) -> subprocess.Popen:
    """`alignlab serve` in a subprocess; returns once /health answers (or raises with the server's log)."""
    import httpx

    cmd = [sys.executable, "-m", "alignlab.cli", "serve", str(model_dir), "--served-model-name", NAME,
           "--port", str(port), "--max-num-seqs", "64"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"alignlab serve exited with {proc.returncode}:\n{log.read().decode()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("alignlab serve did not answer /health within 120 s")


async def one_request(client: openai.AsyncOpenAI, model: str, req: dict) -> dict:
    """Stream one request; the send time, each text chunk's arrival time, and the output tokens (usage)."""
    common = dict(model=model, max_tokens=req["max_tokens"], temperature=0.0, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    t0 = time.perf_counter()
    arrivals, tokens = [], None
    if req["chat"]:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": req["text"]}], **common)
    else:
        stream = await client.completions.create(prompt=req["text"], **common)
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            piece = c.delta.content if req["chat"] else c.text
            if piece:
                arrivals.append(time.perf_counter())
    return {"t0": t0, "arrivals": arrivals, "end": time.perf_counter(), "tokens": tokens}


async def run_level(base_url: str, model: str, work: list[dict], users: int) -> dict:
    """`users` tasks working through `work`; per-request timings and errors."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                max_retries=0, timeout=600)
    queue = list(reversed(work))
    done, errors = [], Counter()

    async def user():
        while queue:
            req = queue.pop()
            try:
                done.append(await one_request(client, model, req))
            except Exception as e:  # an error status or a broken stream: counted, the user goes on
                errors[type(e).__name__] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(users)))
    wall = time.perf_counter() - t0
    await client.close()
    return summarize(done, errors, wall, users)


def pct(xs, q) -> float | None:
    return round(float(np.percentile(xs, q)) * 1000, 2) if len(xs) else None


def summarize(done: list[dict], errors: Counter, wall: float, users: int) -> dict:
    """Milliseconds for TTFT/ITL/TPOT; tokens from usage (chunks counted where a server sends no usage)."""
    ttft = [d["arrivals"][0] - d["t0"] for d in done if d["arrivals"]]
    itl = [b - a for d in done for a, b in zip(d["arrivals"], d["arrivals"][1:])]
    tokens = [d["tokens"] if d["tokens"] is not None else len(d["arrivals"]) for d in done]
    tpot = [(d["end"] - d["arrivals"][0]) / (n - 1) for d, n in zip(done, tokens) if d["arrivals"] and n > 1]
    return {"users": users, "requests": len(done) + sum(errors.values()), "errors": sum(errors.values()),
            "error_types": dict(errors), "wall_s": round(wall, 2), "output_tokens": sum(tokens),
            "tok_per_s": round(sum(tokens) / wall, 1), "req_per_s": round(len(done) / wall, 2),
            "ttft_ms": {"p50": pct(ttft, 50), "p99": pct(ttft, 99)},
            "itl_ms": {"p50": pct(itl, 50), "p99": pct(itl, 99)},
            "tpot_ms": {"p50": pct(tpot, 50), "p99": pct(tpot, 99)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1,8,32", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=96, help="requests at each level (the same list)")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--url", default=None, help="an OpenAI-compatible server's /v1 URL to drive instead")
    ap.add_argument("--model", default=None, help="with --url: the model name to request")
    ap.add_argument("--save-model", default=None, metavar="DIR",
                    help="also write the 5M model and its tokenizer to DIR (for another server to serve)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 64 requests of at most 32 new tokens")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_new = 64, 32
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing (../shared/data beside the checkout)")
    if args.url and not args.model:
        raise SystemExit("--url needs --model (the name the server serves)")
    levels = [int(u) for u in args.users.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tok = build_model(Path(args.save_model or tmp))
        work = workload(tok, args.requests, args.max_new)
        proc = None
        if args.url:
            base_url, model, server = args.url, args.model, args.url
        else:
            port = free_port()
            proc = start_server(model_dir, port)
            base_url, model, server = f"http://127.0.0.1:{port}/v1", NAME, "alignlab serve"
        try:
            print(f"server: {server}; {len(work)} requests per level ({sum(w['chat'] for w in work)} chat), "
                  f"{sum(w['max_tokens'] for w in work)} output tokens, at most {args.max_new} per request; "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
            head = (f"{'users':>5} {'reqs':>5} {'errors':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} "
                    f"{'ITL p99':>8} {'TPOT p50':>9} {'tok/s':>7} {'req/s':>6}")
            print(head + "   (milliseconds)")
            results = []
            for users in levels:
                asyncio.run(run_level(base_url, model, work[:users], users))  # warm-up: the level's batch shapes
                r = asyncio.run(run_level(base_url, model, work, users))
                results.append(r)
                print(f"{users:>5} {r['requests']:>5} {r['errors']:>6} {r['ttft_ms']['p50']:>9} "
                      f"{r['ttft_ms']['p99']:>9} {r['itl_ms']['p50']:>8} {r['itl_ms']['p99']:>8} "
                      f"{r['tpot_ms']['p50']:>9} {r['tok_per_s']:>7} {r['req_per_s']:>6}", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    print(json.dumps({"bench": "serve_latency", "server": server, "requests": len(work), "max_new": args.max_new,
                      "levels": results, "quick": args.quick}))
    if any(r["errors"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
