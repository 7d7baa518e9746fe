"""A load test of `alignlab serve`: thousands of mixed requests from concurrent clients, some leaving mid-stream; zero
5xx, zero transport errors, and every KV block back in the pool afterwards.

    OMP_NUM_THREADS=2 python benchmarks/load_serve.py [--requests 2000] [--clients 32] [--seed 0] [--max-num-seqs 32]

Server. A random 2-layer Llama (dim 64) with TinyWorld's tokenizer and three random LoRA adapters (a, b, c: rank 4
on q, v and down), saved to a temporary directory and served by `alignlab serve --lora a=... --lora b=... --lora
c=...` in a subprocess on a free local port (continuous batching over the paged KV cache).

Workload. --requests requests drawn with --seed, split over --clients threads, each with its own connection pool:
the model is the base or one of the adapters; half go to /v1/completions and half to /v1/chat/completions; half are
streamed; max_tokens 1-64; a third carry a stop string (" the" or "."), a third n = 2 (not streamed); temperature 0
or 0.8 with a seed; a quarter of the streamed ones disconnect after their second chunk. Every status is counted.

After the clients finish, the script waits for the server to settle (no request in flight) and reads /metrics:
alignlab_kv_blocks_in_use must be 0 (no block leaked by a finished, aborted or disconnected request). Exit status 1
on any 5xx, any transport error or a leaked block. The last line is JSON with the counts and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from alignlab.data.world import TinyWorld
from alignlab.lora import LoraConfig, apply_lora, save_adapter
from alignlab.model.config import preset
from alignlab.model.hf import load_model, save_model
from alignlab.model.transformer import CausalLM

ADAPTERS = ("a", "b", "c")


def build(root: Path) -> tuple[Path, dict[str, Path]]:
    """The base model's directory and each adapter's, under root."""
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=512,
                            eos_token_id=tok.eos_token_id))
    base = save_model(model, root / "base", tokenizer=tok)
    adapters = {}
    for seed, name in enumerate(ADAPTERS, 1):
        torch.manual_seed(seed)
        lora = apply_lora(load_model(base), LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"],
                                                       init_lora_weights=False))
        adapters[name] = save_adapter(lora, root / name)
    return base, adapters


def start_server(base: Path, adapters: dict[str, Path], max_num_seqs: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "alignlab.cli", "serve", str(base), "--served-model-name", "base", "--port",
           str(port), "--max-num-seqs", str(max_num_seqs)]
    for name, path in adapters.items():
        cmd += ["--lora", f"{name}={path}"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"alignlab serve exited with {proc.returncode}:\n{log.read().decode()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("alignlab serve did not answer /health within 120 s")


def workload(n: int, seed: int) -> list[dict]:
    """n requests: (path, body, leave early) with random model, endpoint, stream, length, stop, n, temperature."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        chat, stream = rng.random() < 0.5, rng.random() < 0.5
        body = {"model": rng.choice(("base",) + ADAPTERS), "max_tokens": rng.randint(1, 64),
                "temperature": rng.choice((0.0, 0.8)), "seed": i, "stream": stream}
        kind = rng.randrange(3)
        if kind == 0:
            body["stop"] = rng.choice((" the", "."))
        elif kind == 1 and not stream:
            body["n"] = 2
        text = f"Request {i}: Tom has {rng.randint(1, 99)} apples and"
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        path = "/v1/chat/completions" if chat else "/v1/completions"
        out.append((path, body, stream and rng.random() < 0.25))
    return out


def client(url: str, jobs: list, statuses: Counter, errors: Counter, lock: threading.Lock):
    with httpx.Client(base_url=url, timeout=120) as http:
        for path, body, leave in jobs:
            try:
                if body["stream"]:
                    with http.stream("POST", path, json=body) as r:
                        for k, _ in enumerate(r.iter_lines()):
                            if leave and k >= 2:
                                break  # closes the connection mid-stream
                        status = r.status_code
                else:
                    status = http.post(path, json=body).status_code
            except httpx.HTTPError as e:
                with lock:
                    errors[type(e).__name__] += 1
                continue
            with lock:
                statuses[status] += 1


def gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"/metrics has no {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, adapters = build(Path(tmp))
        proc, url = start_server(base, adapters, args.max_num_seqs)
        try:
            jobs = workload(args.requests, args.seed)
            statuses, errors, lock = Counter(), Counter(), threading.Lock()
            threads = [threading.Thread(target=client, args=(url, jobs[k::args.clients], statuses, errors, lock))
                       for k in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            deadline = time.monotonic() + 30
            while True:  # disconnected requests are aborted at the engine's next step
                metrics = httpx.get(url + "/metrics").text
                if gauge(metrics, "alignlab_requests_in_flight") == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    in_use, total = gauge(metrics, "alignlab_kv_blocks_in_use"), gauge(metrics, "alignlab_kv_blocks_total")
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    leaving = sum(leave for _, _, leave in jobs)
    print(f"{args.requests} requests from {args.clients} clients in {wall:.1f} s ({args.requests / wall:.1f} req/s); "
          f"{leaving} left mid-stream")
    print(f"statuses: {dict(sorted(statuses.items()))}; transport errors: {dict(errors) or 'none'}")
    print(f"KV blocks in use after the run: {in_use:g} of {total:g}")
    ok = server_errors == 0 and not errors and in_use == 0 and sum(statuses.values()) == args.requests
    print(json.dumps({"benchmark": "load_serve", "requests": args.requests, "clients": args.clients,
                      "statuses": {str(s): n for s, n in sorted(statuses.items())}, "transport_errors": dict(errors),
                      "left_mid_stream": leaving, "kv_blocks_in_use_after": in_use, "wall_s": round(wall, 1),
                      "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
