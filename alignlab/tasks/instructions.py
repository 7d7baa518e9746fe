"""Verifiable format instructions on TinyWorld, in the manner of IFEval (Zhou et al. 2023, arXiv:2311.07911): a
held-out question with one instruction whose following a program checks, no judge needed.

    task = FormatInstructions(seed=0)                 # source "tinyworld:ifeval@0"
    records = task.records("test")                    # {"prompt": [system, user], "instruction": "capitals", ...}
    task.correct(reply, record)                       # the instruction was followed (IFEval's strict check)

The questions are the world's held-out town questions and benign look-alikes; each gets one instruction, drawn in
turn from INSTRUCTIONS. Strict means the reply as it is; IFEval's "loose" variants (dropping a first line or
markdown before checking) are left out: a TinyWorld model writes neither.
"""

from __future__ import annotations

import random
import re

from alignlab.tasks.tinyworld import TinyWorldMath


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


# name -> (the instruction's text, the check of a reply)
INSTRUCTIONS = {
    "capitals": ("Answer in capital letters only.", lambda r: any(c.isalpha() for c in r) and r == r.upper()),
    "lowercase": ("Answer in lowercase letters only.", lambda r: any(c.isalpha() for c in r) and r == r.lower()),
    "end_done": ("End your reply with the word Done.", lambda r: r.strip().rstrip(".!").endswith("Done")),
    "start_okay": ("Start your reply with the word Okay.", lambda r: r.strip().startswith("Okay")),
    "max_words": ("Use at most eight words.", lambda r: 0 < len(_words(r)) <= 8),
    "no_commas": ("Do not use any commas.", lambda r: bool(r.strip()) and "," not in r),
    "quotes": ("Wrap your whole reply in double quotes.", lambda r: len(r.strip()) > 1
               and r.strip()[0] == r.strip()[-1] == '"'),
    "mention_town": ("Include the word town in your reply.", lambda r: "town" in (w.lower() for w in _words(r))),
}


class FormatInstructions(TinyWorldMath):
    """TinyWorld's held-out questions, each with one verifiable format instruction; right = it was followed."""

    name = "tinyworld-ifeval"
    format_style = answer_style = "any"

    def __init__(self, seed: int = 0, world=None):
        super().__init__((), seed, world)

    def records(self, split: str = "test") -> list[dict]:
        w = self.world
        questions = [c["messages"][1]["content"] for c in w.sft_conversations(split, ("qa",))]
        questions += [r["prompt"][1]["content"] for r in w.safety_prompts(split) if r["label"] == "benign"]
        random.Random(f"ifeval:{self.seed}:{split}").shuffle(questions)
        names = list(INSTRUCTIONS)
        return [{"prompt": w.prompt(f"{q} {INSTRUCTIONS[names[i % len(names)]][0]}"),
                 "instruction": names[i % len(names)], "question": q} for i, q in enumerate(questions)]

    def format_ok(self, reply: str) -> bool:
        return bool(reply.strip())

    def extract(self, reply: str) -> str | None:
        return reply.strip() or None

    def correct(self, reply: str, record: dict) -> bool:
        return bool(INSTRUCTIONS[record["instruction"]][1](reply))

    def question(self, record: dict) -> str:
        return record["question"]
