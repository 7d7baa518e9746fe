"""The dtype a run computes in: bf16 where the hardware runs it natively and faster, else fp32.

    p = resolve_precision("auto", device, "train")   # Precision(torch.bfloat16, "bf16", "bf16 autocast ...: ...")

`auto` decides by the device:

    CUDA                          bf16
    CPU with bf16 instructions    bf16 if a bf16 matmul runs >= 1.5x as fast as an fp32 one here, else fp32
    (x86 avx512_bf16 or amx_bf16, aarch64 bf16)
    any other CPU                 fp32: without the instructions bf16 is emulated, 8-100x slower than fp32

The speed-up is measured once per machine (square matmuls, about half a second, with torch's threads) and cached
in $ALIGNLAB_CACHE/precision.json under the CPU's name, its bf16 flags, torch's version and the thread count.
Where /proc/cpuinfo does not say (macOS), the measurement alone decides. ALIGNLAB_AUTO_DTYPE=fp32|bf16 replaces
what `auto` picks (the test suite sets fp32, so it computes alike on every machine). fp32 or bf16 asked for by name
is taken as asked; bf16 on a CPU without bf16 instructions warns once that it will be slow.

What bf16 means depends on the purpose:
    train   autocast (Micikevicius et al. 2018, mixed precision): matmuls in bf16; weights, gradients and optimizer
            state stay fp32, so small updates are not rounded away
    infer   bf16 weights: half the bytes read per generated token

The cache directory (`cache_dir`) and its JSON tables are defined here, the lowest layer that writes to the cache.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 and AMX; aarch64's "bf16" feature
MIN_SPEEDUP = 1.5  # auto picks bf16 on a CPU only when its matmuls are at least this much faster
ENV = "ALIGNLAB_AUTO_DTYPE"
_speedups: dict[str, float] = {}  # measured in this process: every call of a run gives the same answer
_warned: set[str] = set()


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype  # torch.bfloat16 or torch.float32
    name: str  # "bf16" | "fp32"
    why: str  # one line for a person: the choice and the reason

    def as_dict(self) -> dict:
        return {"dtype": self.name, "why": self.why}


# --- the cache ---------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """$ALIGNLAB_CACHE if set, else ~/.cache/alignlab (not created here)."""
    return Path(os.environ.get("ALIGNLAB_CACHE") or Path.home() / ".cache" / "alignlab").expanduser()


def read_cache(name: str) -> dict:
    """The JSON table cache_dir()/name, {} if it is missing or unreadable."""
    try:
        return json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}


def write_cache(name: str, table: dict) -> None:
    """Write the table atomically (a temporary file renamed into place); a read-only cache is skipped silently."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


# --- the processor -----------------------------------------------------------------------------------------------


def _cpuinfo() -> list[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return None


def cpu_name() -> str:
    for line in _cpuinfo() or []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def cpu_flags() -> set[str] | None:
    """The first processor's flags (x86 "flags", aarch64 "Features"); None where /proc/cpuinfo does not exist."""
    lines = _cpuinfo()
    if lines is None:
        return None
    for line in lines:
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_capability() -> str:
    """The vector instructions torch's CPU kernels use: AVX512, AVX2, DEFAULT, ..."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else "unknown"


def _hardware(capability: str, flags: set[str] | None) -> tuple[bool | None, str]:
    """(native bf16: True, False or None for unknown; the processor in words)."""
    if flags is None:
        return None, f"{capability} (CPU flags unknown)"
    have = [f for f in BF16_FLAGS if f in flags]
    if have:
        return True, f"{capability} with {' and '.join(have)}"
    if capability == "AVX2":
        return False, "AVX2 only (no native bf16)"
    return False, f"{capability} without avx512_bf16 or amx_bf16 (no native bf16)"


def bf16_speedup(sizes: tuple[int, ...] = (256, 512, 1024), seconds: float = 0.5) -> float:
    """fp32 time / bf16 time of n x n matmuls: the geometric mean over `sizes`, each the ratio of the best of many
    products, fp32 and bf16 taking turns so that a core busy with other work slows both alike. Stops after a size
    where bf16 is slower than half of fp32 (an emulated bf16 would take minutes on the larger sizes)."""
    logs, g = [], torch.Generator().manual_seed(0)  # its own generator: a run's seeded draws stay as they were
    for n in sizes:
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        pairs = ((a, b), (a.bfloat16(), b.bfloat16()))
        for x, y in pairs:  # warm-up: kernel choice, packing buffers
            torch.mm(x, y)
        best = [math.inf, math.inf]
        deadline = time.perf_counter() + seconds / len(sizes)
        while time.perf_counter() < deadline or math.inf in best:
            for i, (x, y) in enumerate(pairs):
                t = time.perf_counter()
                torch.mm(x, y)
                best[i] = min(best[i], time.perf_counter() - t)
        logs.append(math.log(best[0] / best[1]))
        if best[0] / best[1] < 0.5:
            break
    return math.exp(sum(logs) / len(logs))


def _key(flags: set[str] | None) -> str:
    have = ",".join(f for f in BF16_FLAGS if flags and f in flags) or ("unknown" if flags is None else "none")
    return f"{cpu_name()}|{cpu_capability()}|{have}|torch={torch.__version__}|threads={torch.get_num_threads()}"


def cached_bf16_speedup(flags: set[str] | None) -> float:
    """bf16_speedup() measured once per (CPU, bf16 flags, capability, torch, threads) and kept in precision.json."""
    key = _key(flags)
    if key not in _speedups:
        table = read_cache("precision.json")
        if key not in table:
            table[key] = round(bf16_speedup(), 3)
            write_cache("precision.json", table)
        _speedups[key] = table[key]
    return _speedups[key]


# --- the decision ------------------------------------------------------------------------------------------------


def _mode(name: str, purpose: str) -> str:
    if name == "fp32":
        return "fp32"
    return "bf16 autocast (fp32 master weights)" if purpose == "train" else "bf16 weights"


def _warn_slow(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"bf16 on this CPU ({reason}) is emulated and will be much slower than fp32 "
                      "(dtype=auto picks fp32 here)", RuntimeWarning, stacklevel=3)


def resolve_precision(requested: str = "auto", device: str | torch.device = "cpu",
                      purpose: str = "train") -> Precision:
    """The precision of a run: `requested` (auto | fp32 | bf16) on `device`, for `purpose` (train | infer).

    Raises:
        ConfigError: an unknown dtype, purpose or $ALIGNLAB_AUTO_DTYPE value.
    """
    if requested not in ("auto", *DTYPES):
        raise ConfigError(f"dtype must be auto, fp32 or bf16, got {requested!r}")
    if purpose not in ("train", "infer"):
        raise ConfigError(f"purpose must be train or infer, got {purpose!r}")
    device = torch.device(device)

    def chose(name: str, reason: str) -> Precision:
        return Precision(DTYPES[name], name, f"{_mode(name, purpose)}: {reason}")

    forced = os.environ.get(ENV, "").strip().lower()
    if requested == "auto" and forced:
        if forced not in DTYPES:
            raise ConfigError(f"{ENV}={forced!r}: expected fp32 or bf16")
        requested, source = forced, f"{ENV}={forced}"
    else:
        source = "asked for"
    if requested != "auto":
        if requested == "bf16" and device.type == "cpu":
            native, hardware = _hardware(cpu_capability(), cpu_flags())
            if native is False:
                _warn_slow(hardware)
                return chose("bf16", f"{source}, though this CPU is {hardware}: slow")
        return chose(requested, source)

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "GPU"
        if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] < 8:  # T4, V100: no bf16 units
            return chose("fp32", f"CUDA ({name}): no native bf16 before compute capability 8.0 (Ampere)")
        return chose("bf16", f"CUDA ({name})")
    if device.type != "cpu":
        return chose("fp32", f"{device.type}: auto picks bf16 on CUDA and on CPUs with native bf16 only")
    flags = cpu_flags()
    native, hardware = _hardware(cpu_capability(), flags)
    if native is False:
        return chose("fp32", hardware)
    speedup = cached_bf16_speedup(flags)
    measured = f"bf16 matmul {speedup:.1f}x fp32 (measured once, cached)"
    if speedup >= MIN_SPEEDUP:
        return chose("bf16", f"{hardware}, {measured}")
    return chose("fp32", f"{hardware}, but {measured}, below {MIN_SPEEDUP}x")
