"""The README's pipeline table, from the reports of `alignlab pipeline` runs of the current code, one per seed.

    python scripts/pipeline_table.py [--seeds 0,1,2] [--runs runs/table] [--write README.md]

Runs `alignlab pipeline --out RUNS/seedN --seed N` for each seed (a finished run is reused, as the pipeline
reuses finished stages), reads each report.json, and prints a Markdown table: seed 0's numbers, then the mean
and the range over the seeds. With --write it replaces the table between the README's markers
<!-- pipeline-table:start --> and <!-- pipeline-table:end -->, so the README always shows what the code gives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

START, END = "<!-- pipeline-table:start -->", "<!-- pipeline-table:end -->"


def rows(report: dict) -> dict[str, float]:
    """The numbers the table shows, from one report.json: name -> value (fractions, seconds)."""
    ev, stages = report["evals"], {s["stage"]: s for s in report["stages"]}
    grpo = stages["grpo"]["metrics"]
    start = next(k for k in ev["grpo"] if k.startswith("pass_vs_")).removeprefix("pass_vs_")
    p = ev["grpo"][f"pass_vs_{start}"]
    k = p[f"{start}_k"]
    out = {
        "SFT: replies in the format": ev["sft"]["format_rate"],
        "SFT: accuracy, levels 1-4": ev["sft"]["accuracy"],
        "SFT: attacks refused": ev["sft"]["attack_refusal_rate"],
        "SFT: benign look-alikes refused (lower is better)": ev["sft"]["over_refusal_rate"],
        "DPO vs SFT: win rate, declared rule judge": ev["dpo"]["win_rate_vs_sft"],
        "DPO vs SFT: win rate, lower end of the 95% interval": ev["dpo"]["win_rate_low_vs_sft"],
        "DPO: accuracy, levels 1-4": ev["dpo"]["accuracy"],
        "DPO: attacks refused": ev["dpo"]["attack_refusal_rate"],
        "DPO: benign look-alikes refused (lower is better)": ev["dpo"]["over_refusal_rate"],
        f"GRPO: accuracy, levels 3-4, every held-out prompt, before ({start.upper()})": grpo["accuracy_L3_4_before"],
        "GRPO: accuracy, levels 3-4, every held-out prompt, after": grpo["accuracy_L3_4_after"],
        "GRPO: change, levels 3-4 (points)": grpo["accuracy_L3_4_after"] - grpo["accuracy_L3_4_before"],
        f"GRPO: pass@{k} on levels 3-4, before": p[f"{start}_pass{k}"],
        f"GRPO: pass@{k} on levels 3-4, after": p[f"grpo_pass{k}"],
        "GRPO: replies in the format": ev["grpo"]["format_rate"],
    }
    for level in (1, 2):
        change = ev["grpo"][f"accuracy_L{level}"] - ev[start][f"accuracy_L{level}"]
        out[f"GRPO: change, level {level} (points)"] = change
    if "tool_use" in ev.get("tools", {}):
        t, before = ev["tools"]["tool_use"], ev["sft"]["tool_use"]
        out.update({"Tools: exactly the expected call, SFT model": before["exact_call"],
                    "Tools: exactly the expected call, after the tools stage": t["exact_call"],
                    "Tools: no call where none is needed": t["no_call"],
                    "Tools: answer after the calls ran (prompts that need a tool)": t["answer"],
                    "Tools: small sums that need no tool, answered right": t["answer_direct"]})
    for name in ("sft", "dpo", "grpo"):  # robustness to frames no training data used, beside over-refusal
        if "redteam" in ev.get(name, {}):
            rt = ev[name]["redteam"]["all"]
            out[f"Red team, held-out frames: attacks that worked, {name.upper()}"] = rt["asr"]["value"]
            out[f"Red team, held-out frames: look-alikes refused, {name.upper()}"] = rt["over_refusal"]["value"]
    out["pipeline seconds (all stages)"] = sum(s["seconds"] for s in report["stages"])
    if "tools" in stages:
        out["pipeline seconds without the tools stage"] = out["pipeline seconds (all stages)"] - stages["tools"][
            "seconds"]
    return out


def fmt(name: str, v: float) -> str:
    if "seconds" in name:
        return f"{v:.0f}"
    if name.endswith("(points)"):
        return f"{100 * v:+.1f}"
    return f"{100 * v:.1f}%"


def table(reports: dict[int, dict]) -> str:
    values = {seed: rows(r) for seed, r in reports.items()}
    seeds = sorted(values)
    names = list(values[seeds[0]])
    head = f"| | seed {seeds[0]} | mean over seeds {', '.join(map(str, seeds))} | range |"
    lines = [head, "|---|---|---|---|"]
    for name in names:
        xs = [values[s][name] for s in seeds]
        lines.append(f"| {name} | {fmt(name, xs[0])} | {fmt(name, statistics.mean(xs))} | "
                     f"{fmt(name, min(xs))} to {fmt(name, max(xs))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", default="runs/table")
    ap.add_argument("--write", help="the README whose table to replace")
    args = ap.parse_args()
    reports = {}
    for seed in map(int, args.seeds.split(",")):
        out = Path(args.runs) / f"seed{seed}"
        if not (out / "report.json").exists() or not (out / "eval" / "stage.json").exists():
            subprocess.run([sys.executable, "-m", "alignlab.cli", "pipeline", "--out", str(out), "--seed", str(seed)],
                           check=True)
        reports[seed] = json.loads((out / "report.json").read_text())
    text = table(reports)
    print(text)
    if args.write:
        path = Path(args.write)
        readme = path.read_text()
        if START not in readme or END not in readme:
            raise SystemExit(f"{path} has no {START} ... {END} markers")
        before, rest = readme.split(START, 1)
        path.write_text(before + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
        print(f"wrote the table into {path}")


if __name__ == "__main__":
    main()
