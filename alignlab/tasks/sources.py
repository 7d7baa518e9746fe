"""Prompt sources: one string names a task and the records to use, for RL, evaluation and data generation.

    tinyworld:rl[:LEVELS][:SPLIT][@SEED]   TinyWorld's verifiable arithmetic prompts, made on the fly; LEVELS "3,4"
                                           or "3-4" (default 1-4; 5 needs the calculator), SPLIT train (default) or
                                           test, SEED the world's (default 0)
    tinyworld:safety[:SPLIT][@SEED]        attacks on the secret and benign look-alikes (default split test)
    tinyworld:tools[:SPLIT][@SEED]         level-5 problems to solve with the calculator (default split test)
    tinyworld:ifeval[:SPLIT][@SEED]        held-out questions with a verifiable format instruction (IFEval-style)
    gsm8k[:SPLIT]                          GSM8K from the Hugging Face Hub (openai/gsm8k, config main), split train
                                           (default) or test
    gsm8k:PATH                             GSM8K rows {"question", "answer"} from a local file
    PATH or hf:NAME[...]                   any prompt-only records in trl's format: {"prompt": messages or text,
                                           "answer": ..., other columns}; scored with the "any" answer format

    task, records = load_source("tinyworld:rl:3-4:test@0")
    default_val_source("tinyworld:rl:3-4") -> "tinyworld:rl:3,4:test@0"   (the held-out prompts of a source)
"""

from __future__ import annotations

import re

from alignlab.data.errors import DataError
from alignlab.tasks.base import PromptRecords, Task
from alignlab.tasks.gsm8k import GSM8K
from alignlab.tasks.instructions import FormatInstructions
from alignlab.tasks.tinyworld import TinyWorldMath, TinyWorldSafety, TinyWorldTools

_WORLD = re.compile(r"tinyworld:(?P<kind>rl|safety|tools|ifeval)(?::(?P<a>[^:@]+))?(?::(?P<b>[^:@]+))?"
                    r"(?:@(?P<seed>\d+))?")
_LEVELS = re.compile(r"\d(-\d)?(,\d(-\d)?)*")
WORLD_TASKS = {"rl": TinyWorldMath, "safety": TinyWorldSafety, "tools": TinyWorldTools}


def world_spec(source: str) -> tuple[str, tuple[int, ...], str | None, int]:
    """tinyworld:KIND[:LEVELS][:SPLIT][@SEED] -> (kind, levels, split or None, seed)."""
    from alignlab.data.world import LEVELS, MATH_LEVELS

    m = _WORLD.fullmatch(source)
    bad = DataError(f"{source}: expected tinyworld:rl[:LEVELS][:SPLIT][@SEED], e.g. tinyworld:rl:3,4 or "
                    "tinyworld:rl:3-4:test@0 (levels 1-5, split train or test), or tinyworld:safety[:SPLIT][@SEED], "
                    "tinyworld:tools[:SPLIT][@SEED], tinyworld:ifeval[:SPLIT][@SEED]")
    if m is None:
        raise bad
    levels, split = MATH_LEVELS, None
    for part in (m["a"], m["b"]):
        if part is None:
            continue
        if part in ("train", "test"):
            split = part
        elif _LEVELS.fullmatch(part) and m["kind"] == "rl":
            picked: list[int] = []
            for item in part.split(","):
                lo, _, hi = item.partition("-")
                picked += range(int(lo), int(hi or lo) + 1)
            levels = tuple(sorted(set(picked)))
            if not set(levels) <= set(LEVELS):
                raise bad
        else:
            raise bad
    return m["kind"], tuple(levels), split, int(m["seed"] or 0)


def task_for(source: str) -> Task:
    """The task that checks replies to a source's prompts (records not loaded)."""
    if source.startswith("tinyworld:"):
        kind, levels, _, seed = world_spec(source)
        return FormatInstructions(seed) if kind == "ifeval" else WORLD_TASKS[kind](levels, seed)
    if source == "gsm8k" or source.startswith("gsm8k:"):
        rest = source.partition(":")[2]
        return GSM8K("" if rest in ("", "train", "test") else rest)
    return PromptRecords()


def load_source(source: str, limit: int = 0) -> tuple[Task, list[dict]]:
    """(the task, its records {"prompt", "answer", ...}) from a source spec (module docstring); `limit` keeps the
    first N records (0: all)."""
    task = task_for(source)
    if isinstance(task, PromptRecords):
        from alignlab.data.loaders import read_rows

        for where, r in (rows := read_rows(source)):
            if not isinstance(r.get("prompt"), (str, list)) or not r["prompt"]:
                raise DataError(f"{where}: a prompt-only record needs a 'prompt' (messages or text), got {sorted(r)}")
        task.rows = [r for _, r in rows]
        records = task.rows
    elif isinstance(task, GSM8K):
        records = task.records(source.partition(":")[2] or "train")
    else:
        kind, _, split, _ = world_spec(source)
        records = task.records(split or ("train" if kind == "rl" else "test"))
    return task, (records[:limit] if limit else records)


def default_val_source(source: str) -> str:
    """The held-out prompts that go with a training source: TinyWorld's test split, GSM8K's test split, else ""."""
    if source.startswith("tinyworld:rl"):
        _, levels, _, seed = world_spec(source)
        return f"tinyworld:rl:{','.join(map(str, levels))}:test@{seed}"
    if source in ("gsm8k", "gsm8k:train"):
        return "gsm8k:test"
    return ""
