"""Model FLOPs utilisation: the fraction of the hardware's peak that the model's own arithmetic reaches.

    MFU = (training FLOPs per token * tokens per second) / peak FLOP/s        (Chowdhery et al. 2022, PaLM)

FLOPs per token come from the model config (ModelConfig.flops_per_token). The peak is the sustained speed of
square matrix multiplications in the training dtype (the run's resolved precision: bf16 under bf16 autocast,
whose peak is 2-4x fp32's on a CPU with bf16 instructions) on this device: the best of several sizes (a CPU is fastest
on blocks that fit its caches, a GPU on large ones), each timed over back-to-back batches, measured once and
cached in $ALIGNLAB_CACHE (default ~/.cache/alignlab)/peak_flops.json per (device, dtype, threads, torch
version). A measured peak is stricter than a datasheet number: it is what a perfect implementation could reach
here. It reads low while other programs share the cores: such a measurement is not cached, and where one still
is (or a given peak is low), a model that trains faster than the peak proves it: the trainer then takes the
faster rate as the peak (`raise_peak`, also in the cache), so MFU <= 100%.

With data parallelism the rate is per device: MFU = FLOPs per token * global tokens/s / (world * peak).
"""

from __future__ import annotations

import math
import os
import time

import torch

from alignlab.model.precision import cpu_name, read_cache, write_cache

METHOD = "sustained-v2"  # in the cache key: peaks measured another way are measured again


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] | None = None,
                       seconds: float = 2.0) -> float:
    """The best sustained FLOP/s of n x n matmuls, 2 n^3 per product, over `sizes` (CPU: 512, 1024, 2048; GPU:
    2048, 4096, 8192). Each size gets seconds / len(sizes): a warm-up product, then batches of back-to-back
    products that each take about 50 ms (a single short product under-reads a GPU's clock ramp and over-weights
    the timer), best batch kept. Sizes after the budget is spent are skipped (an emulated bf16 on a CPU without
    bf16 instructions would take minutes on the largest)."""
    device = torch.device(device)
    sizes = sizes or ((2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, start = 0.0, time.perf_counter()
    g = torch.Generator().manual_seed(0)  # its own generator: measuring never moves a seeded run's draws
    for n in sizes:
        if best and time.perf_counter() - start > seconds:
            break
        a = torch.randn(n, n, generator=g).to(device, dtype)
        b = torch.randn(n, n, generator=g).to(device, dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm-up (library handles, kernel choice)
        sync()
        t = time.perf_counter()
        torch.matmul(a, b, out=out)  # one product's time, to size the batches
        sync()
        batch = max(1, math.ceil(0.05 / max(time.perf_counter() - t, 1e-6)))
        deadline = time.perf_counter() + seconds / len(sizes)
        while True:
            t = time.perf_counter()
            for _ in range(batch):
                torch.matmul(a, b, out=out)
            sync()
            best = max(best, batch * 2 * n**3 / (time.perf_counter() - t))
            if time.perf_counter() >= deadline:
                break
    return best


def _key(device: torch.device, dtype: torch.dtype) -> str:
    return f"{_device_name(device)}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}|{METHOD}"


def _read() -> dict:
    return read_cache("peak_flops.json")


def _write(table: dict) -> None:
    write_cache("peak_flops.json", table)  # a read-only home still gets a measured peak, just not a cached one


def _others_cpu_seconds() -> float:
    """CPU seconds used since boot by every process but this one (Linux's /proc; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            times = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return 0.0
    busy = sum(times) - times[3] - times[4]
    return (busy - int(fields[11]) - int(fields[12])) / os.sysconf("SC_CLK_TCK")  # minus our utime + stime


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The cached measured peak for this device/dtype/thread count, measuring it the first time. A CPU measurement
    during which other processes took more than a tenth of the cores is used but not cached: it reads low."""
    device = torch.device(device)
    key, table = _key(device, dtype), _read()
    if key in table:
        return table[key]
    others, start = _others_cpu_seconds(), time.perf_counter()
    peak = measure_peak_flops(device, dtype)
    busy = (_others_cpu_seconds() - others) / ((time.perf_counter() - start) * (os.cpu_count() or 1))
    if device.type == "cuda" or busy < 0.1:
        table[key] = peak
        _write(table)
    return peak


def raise_peak(device: torch.device, dtype: torch.dtype, flops: float) -> float:
    """max(cached peak, flops), kept in the cache: a rate the model reached is one the hardware can reach."""
    device = torch.device(device)
    key, table = _key(device, dtype), _read()
    table[key] = max(table.get(key, 0.0), flops)
    _write(table)
    return table[key]
