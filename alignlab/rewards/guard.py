"""Running reward functions so that a broken one cannot stop a run.

A reward function is code run on whatever the model wrote: it can raise (a completion nobody expected, a bug),
hang (a regex that backtracks without end, sympy simplifying a monster, a network call), return the wrong number
of rewards, or eat the memory. RewardRunner calls each function in trl's convention,

    fn(prompts=prompts, completions=completions, **columns) -> list[float | None]   (async def allowed)

and turns each such failure into None for every completion of that call -- None is trl's "not scored": the
completion is left out of its group's baseline and gets no advantage from that function (`weighted_sum`). It
counts the failure in `stats` and says so once per function, in one line:

    warning: reward function 'my_reward' failed (ValueError: no answer), so its rewards for this call are None; ...

    runner = RewardRunner([format_reward, correctness_reward], weights=[1.0, 1.0], timeout_s=10)
    per_fn = runner(prompts, completions, answer=answers)   # {"format_reward": [...], "correctness_reward": [...]}
    totals = runner.total(per_fn)                          # weighted_sum per completion
    runner.stats["correctness_reward"]                     # RewardStats(calls=1, errors=0, timeouts=0, nones=0, ...)

    safe_rewards(fns, prompts, completions, columns, timeout_s)   the same, once, without keeping the stats

A call is an error when the function raises, or returns something that is not one reward per completion (a wrong
length, a string, an infinite value); NaN is read as None, as trl reads None as NaN. `timeout_s` bounds one call,
i.e. one batch of completions.

Two ways to run a call:

    isolation="thread"   (default) in a daemon worker thread; the runner waits `timeout_s` for it. Python cannot stop
                         a thread, so a function that times out is abandoned: it finishes (or never does) in the
                         background and its result is thrown away. A daemon thread does not keep the program from
                         exiting, but one that spins keeps its CPU -- so once `max_stuck` of a function's calls
                         are still running after their time limit, that function is called as with
                         isolation="process" from then on (said once). `memory_mb` cannot be enforced in a thread:
                         giving it warns once.
    isolation="process"  in a forked child (Linux, macOS) with RLIMIT_CPU set to the time limit (rounded up, plus
                         a second) and RLIMIT_AS to the address space it inherits plus `memory_mb` (1024 MB
                         unless given; where it cannot be set, that is said once); killed when the
                         time is up. Nothing is left behind, and a function that allocates without end gets a
                         MemoryError instead of taking the machine. The child sees a copy of everything, and only the
                         rewards come back, pickled through a pipe -- so side effects (trl's log_extra, log_metric)
                         are lost. Resource limits are not a security sandbox: code that must not read files or reach
                         the network needs a container.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import ConfigError
from alignlab.rewards.builtin import RewardFn, reward_name, weighted_sum


@dataclass
class RewardStats:
    """What happened to one reward function's calls over a run."""

    calls: int = 0  # calls made, one per batch of completions
    errors: int = 0  # calls that raised, or returned something other than one reward per completion
    timeouts: int = 0  # calls that did not finish within timeout_s
    nones: int = 0  # rewards the function itself returned as None (or NaN)
    seconds: float = 0.0  # time spent waiting for it
    last_error: str = ""  # the latest failure, as "ExceptionType: message"


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _run(fn: Callable, kwargs: dict) -> Any:
    value = fn(**kwargs)
    if inspect.iscoroutine(value):  # trl allows async reward functions
        value = asyncio.run(value)
    return value


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _call_in_thread(fn: Callable, kwargs: dict, timeout_s: float | None, name: str) -> tuple[str, Any]:
    """("ok", value), ("error", "Type: message") or ("timeout", the worker thread, still running)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run(fn, kwargs)
        except BaseException as e:  # noqa: B036 -- anything the function does is its failure, reported below
            box["error"] = _describe(e)

    worker = threading.Thread(target=target, name=f"reward:{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return "timeout", worker
    return ("error", box["error"]) if "error" in box else ("ok", box["value"])


def _limit_child(timeout_s: float | None, memory_mb: float | None) -> None:
    import resource

    if timeout_s is not None:
        cpu = math.ceil(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if memory_mb is not None and math.isfinite(memory_mb):
        try:
            with open("/proc/self/statm") as f:  # the address space inherited from the parent, in pages
                inherited = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return  # no /proc (macOS): no memory limit
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = inherited + int(memory_mb * 2**20)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _child(fn: Callable, kwargs: dict, send, timeout_s: float | None, memory_mb: float | None) -> None:
    try:
        _limit_child(timeout_s, memory_mb)
        value = _run(fn, kwargs)
        message = ("ok", list(value) if not isinstance(value, (str, bytes, dict)) else value)
    except BaseException as e:  # noqa: B036 -- reported to the parent
        message = ("error", _describe(e))
    try:
        send.send(message)
    except Exception as e:  # e.g. rewards that do not pickle
        send.send(("error", f"its result could not be sent back ({_describe(e)})"))
    send.close()


def _call_in_process(fn: Callable, kwargs: dict, timeout_s: float | None, memory_mb: float | None) -> tuple[str, Any]:
    """_call_in_thread's answer, from a forked child with CPU and memory limits, killed at the time limit."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(fn, kwargs, send, timeout_s, memory_mb), daemon=True)
    child.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            return "timeout", None
        try:
            return recv.recv()
        except EOFError:  # it died without a word: a signal (SIGXCPU at the CPU limit, SIGKILL) or os._exit
            child.join(1.0)
            return "error", f"its process died (exit code {child.exitcode})"
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        recv.close()


def _check(value: Any, n: int) -> list[float | None]:
    """One float or None per completion, or ValueError saying what is wrong."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise ValueError(f"returned a {type(value).__name__}, not a list of rewards")
    if len(value) != n:
        raise ValueError(f"returned {len(value)} rewards for {n} completions")
    out: list[float | None] = []
    for i, v in enumerate(value):
        if v is None:
            out.append(None)
            continue
        try:
            if isinstance(v, (str, bytes)):
                raise TypeError
            x = float(v)
        except Exception:
            raise ValueError(f"reward {i} is {v!r:.40}, not a number or None") from None
        if math.isinf(x):
            raise ValueError(f"reward {i} is {x}")
        out.append(None if math.isnan(x) else x)
    return out


DEFAULT_MEMORY_MB = 1024  # a call's memory limit with isolation="process" when none is given


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()  # Linux, macOS; not Windows


class RewardRunner:
    """Calls reward functions on a batch of completions, never letting one of them crash or hang the run.

    fns         reward functions in trl's convention; their names (`reward_name`, made unique with "_2", "_3" ...)
                key the results and `stats`
    weights     for `total`; all 1.0 by default (trl's reward_weights)
    timeout_s   the time one call may take; None waits for ever
    isolation   "thread" or "process" (see the module docstring)
    memory_mb   the memory a call may allocate beyond what it inherits, enforced with isolation="process" only
                (None: DEFAULT_MEMORY_MB there; math.inf: no limit); with isolation="thread" it warns once
    max_stuck   isolation="thread": a function with this many calls still running past their time limit is
                called in a child process from then on
    warn        where the one-line warnings go (default: stderr)
    """

    def __init__(self, fns: Sequence[RewardFn], weights: Sequence[float] | None = None, timeout_s: float | None = 10.0,
                 isolation: str = "thread", memory_mb: float | None = None, max_stuck: int = 3,
                 warn: Callable[[str], None] = _warn):
        if isolation not in ("thread", "process"):
            raise ConfigError(f"reward isolation must be 'thread' or 'process', got {isolation!r}")
        if isolation == "process" and not _can_fork():
            raise ConfigError("reward isolation='process' forks a child per call, which this platform cannot do; "
                              "use isolation='thread'")
        if max_stuck < 1:
            raise ConfigError(f"reward max_stuck must be >= 1, got {max_stuck}")
        self.fns = list(fns)
        if not self.fns or not all(callable(fn) for fn in self.fns):
            raise TypeError(f"RewardRunner needs a list of callables, got {fns!r}")
        self.weights = [1.0] * len(self.fns) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.fns):
            raise ConfigError(f"{len(self.weights)} reward weights for {len(self.fns)} reward functions")
        self.names: list[str] = []
        for fn in self.fns:
            base, k = reward_name(fn), 1
            while (name := base if k == 1 else f"{base}_{k}") in self.names:
                k += 1
            self.names.append(name)
        self.timeout_s, self.isolation, self.max_stuck, self.warn = timeout_s, isolation, max_stuck, warn
        self.memory_mb = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb
        self.stats = {name: RewardStats() for name in self.names}
        self.stuck: dict[str, list[threading.Thread]] = {name: [] for name in self.names}  # timed out, running
        self.in_process: set[str] = set(self.names) if isolation == "process" else set()
        if isolation == "thread" and memory_mb is not None:
            warn(f"warning: reward memory_mb={memory_mb:g} cannot be enforced with isolation='thread' (threads share "
                 "the process's memory); use isolation='process' to limit it")
        if isolation == "process" and math.isfinite(self.memory_mb) and not os.path.exists("/proc/self/statm"):
            warn(f"warning: reward memory_mb={self.memory_mb:g} cannot be enforced on this platform (it needs "
                 "/proc/self/statm, i.e. Linux): reward calls are limited in time only")

    def __call__(self, prompts: Sequence | None, completions: Sequence, **columns) -> dict[str, list[float | None]]:
        """Each function's rewards, one float or None per completion, by name. Columns are passed on as keyword
        arguments (the dataset's other columns, completion_ids, trainer_state, ...)."""
        n = len(completions)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        kwargs = {"prompts": prompts, "completions": completions, **columns}
        return {name: self._call(name, fn, kwargs, n) for name, fn in zip(self.names, self.fns)}

    def _call(self, name: str, fn: Callable, kwargs: dict, n: int) -> list[float | None]:
        stats = self.stats[name]
        stats.calls += 1
        start = time.perf_counter()
        if name in self.in_process:
            status, value = _call_in_process(fn, kwargs, self.timeout_s, self.memory_mb)
        else:
            status, value = _call_in_thread(fn, kwargs, self.timeout_s, name)
            if status == "timeout":
                self._abandon(name, value)
        stats.seconds += time.perf_counter() - start
        if status == "ok":
            try:
                rewards = _check(value, n)
            except ValueError as e:
                status, value = "error", str(e)
            else:
                stats.nones += sum(r is None for r in rewards)
                return rewards
        if status == "timeout":
            stats.timeouts += 1
            value = f"timed out after {self.timeout_s:g} s"
        else:
            stats.errors += 1
        self._failed(name, value)
        return [None] * n

    def _abandon(self, name: str, worker: threading.Thread) -> None:
        """Keep count of a function's threads still running past their time limit; at max_stuck, run it isolated."""
        self.stuck[name] = [t for t in self.stuck[name] if t.is_alive()] + [worker]
        if len(self.stuck[name]) != self.max_stuck:
            return
        if not _can_fork():
            self.warn(f"warning: reward function {name!r} has {self.max_stuck} calls still running after their time "
                      "limit (a thread cannot be stopped), and this platform cannot fork to isolate it: they keep "
                      "their CPU and memory until they finish")
            return
        self.in_process.add(name)
        self.warn(f"warning: reward function {name!r} has {self.max_stuck} calls still running after their time "
                  "limit (a thread cannot be stopped), so it runs in a child process from now on, killed at the "
                  "limit (isolation='process')")

    def _failed(self, name: str, why: str) -> None:
        stats = self.stats[name]
        first = not stats.last_error
        stats.last_error = why
        if first:
            self.warn(f"warning: reward function {name!r} failed ({why}), so its rewards for this call are None "
                      "(left out of the group baseline); later failures are counted in RewardRunner.stats, not shown")

    def total(self, per_fn: dict[str, list[float | None]]) -> list[float | None]:
        """The weighted sum per completion (`weighted_sum`: None parts left out, None when all are)."""
        columns = [per_fn[name] for name in self.names]
        return [weighted_sum(values, self.weights) for values in zip(*columns)]


def safe_rewards(fns: Sequence[RewardFn], prompts: Sequence | None, completions: Sequence,
                 columns: dict[str, Any] | None = None, timeout_s: float | None = 10.0,
                 **runner_options) -> dict[str, list[float | None]]:
    """RewardRunner(fns, timeout_s=timeout_s, **runner_options)(prompts, completions, **columns), once. Keep a
    RewardRunner instead to count failures over a run (and to warn once per run rather than once per call)."""
    return RewardRunner(fns, timeout_s=timeout_s, **runner_options)(prompts, completions, **(columns or {}))
