"""Run a lab's newcomer path exactly as its README writes it, time it, and check the numbers it states.

    python scripts/newcomer_path.py 0            # Lab 00's path: every ```bash block in order, then the checks
    python scripts/newcomer_path.py 0 1 2 --list # print what would run, run nothing

The path is the README's "## Newcomer path" section. Each ```bash block in it runs in the repository's root with
`bash -e` (.venv/bin first on PATH, as after `source .venv/bin/activate`); a block fenced ```bash optional is a
long optional run and is skipped. After a block, HTML comments state what it must have produced:

    <!-- expect-json runs/x/metrics.jsonl val/loss 1.40 1.70 -->   the last record of a JSON/JSONL file that has
                                                                   the key: its value within [lo, hi]
    <!-- expect-output "accuracy ([0-9.]+)%" 40 60 -->               a number in the block's output within [lo, hi]
    <!-- expect-output "PASS" -->                                    the block's output matches the regex
    <!-- expect-file runs/x/plots/loss.png -->                       the file exists

The exit status is 1 if a block fails, a check fails, or the whole path takes longer than --budget seconds (the
labs promise 15 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECT = re.compile(r"<!--\s*(expect-json|expect-output|expect-file)\s+(.*?)\s*-->")


@dataclass
class Block:
    commands: str
    optional: bool
    expects: list[tuple[str, list[str]]] = field(default_factory=list)


def newcomer_section(readme: Path) -> list[str]:
    lines = readme.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lower().startswith("## newcomer path")), None)
    if start is None:
        raise SystemExit(f"{readme}: no '## Newcomer path' section")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def parse(lines: list[str]) -> list[Block]:
    """The section's ```bash blocks in order, each with the expect comments that follow it."""
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```bash"):
            j = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
            blocks.append(Block("\n".join(lines[i + 1:j]), optional="optional" in fence))
            i = j + 1
            continue
        for kind, args in EXPECT.findall(lines[i]):
            if not blocks:
                raise SystemExit(f"an expect comment before any block: {lines[i]}")
            blocks[-1].expects.append((kind, shlex.split(args)))
        i += 1
    return blocks


def last_value(path: Path, key: str):
    """The value of `key` in a JSON file, or in the last record of a JSONL file that has it."""
    text = path.read_text()
    lines = text.splitlines() if path.suffix == ".jsonl" else [text]
    records = [json.loads(ln) for ln in lines if ln.strip()]
    for r in reversed(records):
        if key in r:
            return r[key]
    raise KeyError(f"{path}: no record has {key!r}")


def check(kind: str, args: list[str], output: str, cwd: Path) -> str | None:
    """None if the expectation holds, else what is wrong."""
    if kind == "expect-file":
        return None if (cwd / args[0]).exists() else f"{args[0]} does not exist"
    if kind == "expect-json":
        path, key, lo, hi = args
        try:
            value = float(last_value(cwd / path, key))
        except (OSError, KeyError, ValueError) as e:
            return str(e)
        return None if float(lo) <= value <= float(hi) else f"{path} {key} = {value:g}, expected {lo}..{hi}"
    pattern, *bounds = args
    m = re.search(pattern, output)
    if m is None:
        return f"the output has no match for {pattern!r}"
    if bounds:
        value = float(m.group(1).replace(",", ""))
        if not float(bounds[0]) <= value <= float(bounds[1]):
            return f"{pattern!r} read {value:g}, expected {bounds[0]}..{bounds[1]}"
    return None


def run_path(lab: Path, budget: float, cwd: Path = ROOT) -> int:
    blocks = parse(newcomer_section(lab / "README.md"))
    env = dict(os.environ, PATH=f"{cwd / '.venv' / 'bin'}:{os.environ['PATH']}")
    total, failures = 0.0, []
    for n, b in enumerate(blocks, 1):
        if b.optional:
            print(f"[{lab.name} {n}/{len(blocks)}] skipped (optional)", flush=True)
            continue
        print(f"[{lab.name} {n}/{len(blocks)}] $ {b.commands.strip()}", flush=True)
        t0 = time.time()
        r = subprocess.run(["bash", "-e", "-c", b.commands], cwd=cwd, env=env, capture_output=True, text=True)
        took = time.time() - t0
        total += took
        output = r.stdout + r.stderr
        print(f"    {took:.0f} s, exit {r.returncode}; last lines:\n      " +
              "\n      ".join(output.strip().splitlines()[-4:]), flush=True)
        if r.returncode != 0:
            failures.append(f"block {n} exited with {r.returncode}")
            break
        for kind, args in b.expects:
            problem = check(kind, args, output, cwd)
            print(f"    {kind} {' '.join(args)}: {'ok' if problem is None else 'FAILED: ' + problem}")
            if problem:
                failures.append(f"block {n}: {problem}")
    print(f"{lab.name}: {total:.0f} s in all (budget {budget:.0f} s)")
    if total > budget:
        failures.append(f"took {total:.0f} s, over the {budget:.0f} s budget")
    for f in failures:
        print(f"  FAILED: {f}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("labs", nargs="+", type=int, help="lab numbers")
    p.add_argument("--budget", type=float, default=15 * 60, help="seconds the path may take (default: 15 minutes)")
    p.add_argument("--list", action="store_true", help="print the blocks and their checks, run nothing")
    args = p.parse_args(argv)
    status = 0
    for n in args.labs:
        lab = next((ROOT / "labs").glob(f"{n:02d}_*"))
        if args.list:
            for b in parse(newcomer_section(lab / "README.md")):
                print(("(optional) " if b.optional else "") + b.commands.strip(), *b.expects, sep="\n    ")
            continue
        status |= run_path(lab, args.budget)
    return status


if __name__ == "__main__":
    sys.exit(main())
