"""Model FLOPs utilisation: the fraction of the hardware's peak that the model's own arithmetic reaches.

    MFU = (training FLOPs per token * tokens per second) / peak FLOP/s        (Chowdhery et al. 2022, PaLM)

FLOPs per token come from the model config (ModelConfig.flops_per_token). The peak is the speed of one
large matrix multiplication in the training dtype on this device, measured once and cached in
$ALIGNLAB_CACHE (default ~/.cache/alignlab)/peak_flops.json per (device, dtype, threads, torch version).
A measured peak is stricter than a datasheet number: it is what a perfect implementation could reach here.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """FLOP/s of the fastest n x n matmul over about `seconds` of repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The cached measured peak for this device/dtype/thread count, measuring it the first time."""
    device = torch.device(device)
    key = f"{_device_name(device)}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = cache_dir() / "peak_flops.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = measure_peak_flops(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(table, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home still gets a measured peak, just not a cached one
    return table[key]
