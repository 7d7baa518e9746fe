"""The server under load and at shutdown: many concurrent clients (some leaving mid-stream) get no 5xx and leave the
KV-block pool whole; SIGTERM lets a request in flight finish before `alignlab serve` exits."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from alignlab.serve import build_state

from .test_serve import load, model_dir, serving  # noqa: F401  (model_dir is a fixture)


@pytest.mark.slow
def test_many_concurrent_clients_some_leaving_mid_stream(model_dir):  # noqa: F811
    model, tok = load(model_dir)
    state = build_state(model, tok, model_names=["tiny"], engine="continuous", max_num_seqs=8)
    statuses, texts, errors = [], [], []
    rng = random.Random(0)
    jobs = [(i, rng.random() < 0.25, rng.random() < 0.5) for i in range(200)]  # (id, leave early, stream)
    lock = threading.Lock()

    def client(mine):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i, leave, stream in mine:
                body = {"model": "tiny", "prompt": f"Tom has {i} apples and", "max_tokens": 16 + i % 16,
                        "temperature": 0.8, "seed": i, "stream": stream or leave, "ignore_eos": True}
                try:
                    if stream or leave:
                        with http.stream("POST", "/v1/completions", json=body) as r:
                            for n, _ in enumerate(r.iter_lines()):
                                if leave and n >= 2:
                                    break  # closes the connection mid-stream
                            status = r.status_code
                    else:
                        r = http.post("/v1/completions", json=body)
                        status = r.status_code
                        texts.append(r.json()["choices"][0]["text"])
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    statuses.append(status)

    with serving(state) as server:
        threads = [threading.Thread(target=client, args=(jobs[k::16],)) for k in range(16)]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.time() - start
        deadline = time.time() + 10
        while (state.in_flight or state.backend.counts() != (0, 0)) and time.time() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(server.url + "/metrics").text
    assert not errors, errors[:3]
    assert len(statuses) == 200 and set(statuses) == {200}, sorted(set(statuses))
    assert state.in_flight == 0 and state.backend.counts() == (0, 0)
    assert state.backend.stats["used"] == 0, state.backend.stats  # every block back in the pool
    assert "alignlab_kv_blocks_in_use 0\n" in metrics
    print(f"200 requests from 16 clients in {took:.1f}s")


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight(model_dir):  # noqa: F811
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "alignlab.cli", "serve", str(model_dir), "--port", str(port),
                             "--served-model-name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        body = {"model": "tiny", "prompt": "Tom has", "max_tokens": 100, "temperature": 0, "stream": True,
                "ignore_eos": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in [first, *rest[:-1]] if line]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
        assert "Finished server process" in proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
