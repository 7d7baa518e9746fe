"""Lab 04's ACE follow-up: does a playbook help once the model has learnt to read notes in its context?

    python labs/04_tool_use/ace_notes.py --run runs/table/seed0 --out runs/ace_notes

The pipeline's SFT model never saw notes in its system prompt, and ACE's playbook of right facts made it worse
(the lab's table). Here it first learns to read them, the way instruction-tuned models learn to use their context:

1. data    3,000 TinyWorld chats of levels 3-4 from the training split (never a held-out problem), their worked
           solutions as replies. In 60% of them the system prompt carries a `Notes:` block like ACE's (ace.py:
           with_playbook): one or two of the solution's own steps ("7 * 8 = 56") among two to six steps of other
           problems, shuffled; the rest have no notes
2. sft     `alignlab sft` from the pipeline's SFT model, 400 steps: the model learns to copy a note that states the
           step it is at, and to ignore the others
3. ace     `alignlab ace` on that model, with the gate and without (as published), 8 rounds of 48 tasks, 200
           held-out tasks; <out>/ace_notes.json and the table the lab quotes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from alignlab.ace import NOTES
from alignlab.data.world import TinyWorld
from alignlab.tasks.tinyworld import worked_steps


def notes_chats(world: TinyWorld, n: int, seed: int = 0) -> list[dict]:
    """n chats of levels 3-4 (training problems), 60% with a Notes block: 1-2 of the reply's steps among 2-6
    steps of other problems."""
    rng = random.Random(f"ace-notes:{seed}")
    problems = [p for level in (3, 4) for p in world.problems(level, "train", n, "ace-notes")]
    pool = [f"{s.a} {s.op} {s.b} = {s.c}" for p in problems for s in worked_steps(world.solution(p))]
    out = []
    for _ in range(n):
        p = rng.choice(problems)
        messages = [*world.prompt(world.question(p, rng)), {"role": "assistant", "content": world.solution(p)}]
        if rng.random() < 0.6:
            own = [f"{s.a} {s.op} {s.b} = {s.c}" for s in worked_steps(messages[-1]["content"])]
            notes = rng.sample(own, min(len(own), rng.randint(1, 2))) + rng.sample(pool, rng.randint(2, 6))
            rng.shuffle(notes)
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n" + "\n".join([NOTES, *notes])}
        out.append({"messages": messages})
    return out


def sh(args: list[str], log: Path) -> None:
    with open(log, "w") as f:
        if subprocess.call([sys.executable, "-m", "alignlab.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}):
            sys.exit(f"failed: alignlab {' '.join(args)}; see {log}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/table/seed0", help="a pipeline run: <run>/sft/model")
    p.add_argument("--seed", type=int, default=0, help="the pipeline run's seed (its TinyWorld)")
    p.add_argument("--out", default="runs/ace_notes")
    args = p.parse_args()
    out, run = Path(args.out), Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    chats = notes_chats(TinyWorld(args.seed), 3000, args.seed)
    (out / "notes.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    sh(["sft", f"model={run / 'sft' / 'model'}", f"data={out / 'notes.jsonl'}", f"out_dir={out / 'sft'}",
        "max_len=256", "batch_size=32", "train.max_steps=400", "train.lr=5e-4", "train.warmup_steps=20",
        "train.eval_every=0", "train.save_every=0", "sample_prompts=0", "threads=1", "train.overwrite=true"],
       out / "sft.log")
    rows = {}
    for name, extra in (("gate", []), ("no_gate", ["--no-gate"])):
        sh(["ace", "--model", str(out / "sft" / "model"), "--rounds", "8", "--per-round", "48", "--val-tasks", "200",
            *extra, "--out", str(out / name)], out / f"ace_{name}.log")
        rows[name] = json.loads((out / name / "result.json").read_text())
    (out / "ace_notes.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| | held-out accuracy, fixed prompt | with the playbook | difference (95% CI) | entries |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        lo, hi = r["difference_ci"]
        print(f"| {name} | {r['fixed_prompt']:.1%} | {r['playbook']:.1%} | {100 * r['difference']:+.1f} "
              f"({100 * lo:+.1f} to {100 * hi:+.1f}) | {r['entries']} ({r['context_tokens']} tokens) |")


if __name__ == "__main__":
    main()
