"""The serving benchmarks run end to end in their --quick form: bench_serve.py fails (exit status 1) unless
LLMEngine, the static Engine and transformers give the same tokens for every request, and bench_multilora.py
unless every kernel's tokens equal PEFT's; both end with their JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "instructions" / "alpaca_en_demo.json"


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args], cwd=ROOT / "benchmarks",
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.shared_data(ALPACA)
def test_bench_serve_quick():
    result = run("bench_serve.py", "--vllm-python", "/nonexistent")
    assert result["quick"] and set(result["tok_per_s"]["b8"]) == {"continuous", "static", "transformers"}
    waste = result["memory"]["block16"]["paged_wasted_fraction"]
    assert 0 < waste < 15 / 16 and waste < result["memory"]["block16"]["static_wasted_fraction"]


@pytest.mark.slow
def test_bench_multilora_quick():
    result = run("bench_multilora.py")
    assert result["quick"] and {"alignlab mixed grouped", "PEFT mixed"} <= set(result["tok_per_s"])
