"""The dtype axis of the benchmarks: which dtypes to run, the CPU they run on, what a forward computed in.

Every benchmark takes `--dtype fp32,bf16` (a comma list) and runs both sides at each dtype back to back in one
process. The default is "fp32,bf16" where the CPU runs bf16 natively, i.e. where alignlab's `auto` picks bf16
(alignlab.model.precision.resolve_precision: bf16 instructions, avx512_bf16 or amx_bf16 on x86, and bf16 matmuls
measurably faster than fp32), else "fp32": on an AVX2-only CPU bf16 matmuls are emulated and many times slower, so
a bf16 row there would only measure the emulation (it can still be asked for).

    fp32  both sides compute in fp32
    bf16  training: bf16 autocast with fp32 master weights and optimizer state (transformers / trl: torch.autocast or
          bf16=True; alignlab: train.dtype=bf16); inference: bf16 weights on both sides
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from alignlab.model.precision import resolve_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 and AMX; aarch64's bf16 feature


@functools.cache
def cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, its bf16 flags) from /proc/cpuinfo; ("unknown", ()) where there is none."""
    name, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown":
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, tuple(f for f in BF16_FLAGS if f in flags)


def capability() -> str:
    """torch's CPU kernel level (AVX2, AVX512, ...) and the bf16 flags: "AVX512 (avx512_bf16)"."""
    _, flags = cpuinfo()
    return f"{torch.backends.cpu.get_cpu_capability()} ({', '.join(flags) or 'no bf16 flags'})"


def cpu_idle_fraction(window: float = 0.5) -> float:
    """Fraction of CPU time spent idle over `window` seconds (1.0 where /proc/stat does not exist)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        idle0, total0 = read()
        time.sleep(window)
        idle1, total1 = read()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def cpu_line() -> str:
    return f"CPU: {cpuinfo()[0]}, torch capability {capability()}"


@functools.cache
def native_bf16(purpose: str) -> tuple[bool, str]:
    """(whether alignlab's `auto` picks bf16 on this CPU for `purpose` ("train" or "infer"), why)."""
    p = resolve_precision("auto", "cpu", purpose)
    return p.name == "bf16", f"alignlab auto: {p.name}, {p.why}"


def default_dtypes(purpose: str) -> str:
    return "fp32,bf16" if native_bf16(purpose)[0] else "fp32"


def add_dtype_argument(ap) -> None:
    ap.add_argument("--dtype", default=None,
                    help="comma list of fp32, bf16 (default: fp32,bf16 where the CPU runs bf16 natively, else fp32)")


def parse_dtypes(text: str | None, purpose: str) -> list[str]:
    """The --dtype list, checked; None gives the default for this CPU."""
    names = [d.strip() for d in (text or default_dtypes(purpose)).split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        raise SystemExit(f"--dtype {text!r}: expected a comma list of {', '.join(DTYPES)}")
    return list(dict.fromkeys(names))


def describe(dtypes: list[str], purpose: str) -> str:
    """One line for the header: the CPU, and why the default dtypes are what they are."""
    native, why = native_bf16(purpose)
    note = "" if native or "bf16" not in dtypes else " (not native here: bf16 is emulated and slow)"
    return (f"{cpu_line()}; native bf16 for {purpose}: {'yes' if native else 'no'} ({why}); "
            f"dtypes {','.join(dtypes)}{note}")


def autocast(dtype: str):
    """The context a peer's training forward runs in: bf16 autocast (fp32 weights stay fp32), or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


class ForwardDtypes:
    """What dtype the nn.Linear layers produced, by phase ("grad": a training forward, "no_grad": sampling, a
    reference pass): a global forward hook that removes itself once it has seen `calls` Linear outputs of every
    phase in `phases` (a hook slows every module call a little: only the first steps are probed). Shows that a
    side's bf16 setting really computes in bf16 on this device."""

    def __init__(self, phases=("grad",), calls: int = 32):
        self.phases, self.calls = phases, calls
        self.seen: dict[str, dict[torch.dtype, int]] = {"grad": {}, "no_grad": {}}
        self.handle = None

    def _hook(self, module, args, output):
        if isinstance(module, torch.nn.Linear) and torch.is_tensor(output):
            seen = self.seen["grad" if torch.is_grad_enabled() else "no_grad"]
            seen[output.dtype] = seen.get(output.dtype, 0) + 1
            if all(sum(self.seen[p].values()) >= self.calls for p in self.phases):
                self.stop()

    def start(self) -> ForwardDtypes:
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __enter__(self):
        return self.start()

    def stop(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __exit__(self, *exc):
        self.stop()

    def summary(self) -> dict[str, str]:
        return {k: ",".join(sorted(str(d).removeprefix("torch.") for d in v)) or "-" for k, v in self.seen.items()}

    def check(self, dtype: str, what: str) -> str:
        """Exit unless every Linear of the probed phases produced `dtype`; else a short note for the output."""
        want = DTYPES[dtype]
        for phase in self.phases:
            if set(self.seen[phase]) != {want}:
                raise SystemExit(f"{what}: its {phase} forwards produced {self.summary()[phase]}, not "
                                 f"{str(want).removeprefix('torch.')}: --dtype {dtype} does not compute in it there")
        return ", ".join(f"{p} {self.summary()[p]}" for p in self.phases)
