"""MT-Bench (Zheng et al. 2023, arXiv:2306.05685): 80 two-turn questions in eight categories, graded by a judge.

    task = MTBench("../shared/data/mt_bench/question.jsonl")
    records = task.records()     # {"question_id", "category", "turns": [q1, q2], "reference": [r1, r2] or None}

There is no rule for a right answer: `alignlab eval --tasks mt_bench:PATH --judge MODEL` asks each question's two
turns (the second with the first answer in the chat), then a judge model grades each answer 1-10 (eval.grading):
reference-guided for math, reasoning and coding where reference answers are found (reference_answer/gpt-4.jsonl
beside the questions, as FastChat lays them out), single-answer grading otherwise.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.tasks.base import Task

NEEDS_REFERENCE = ("math", "reasoning", "coding")


class MTBench(Task):
    name = "mt_bench"

    def __init__(self, source: str):
        if not source:
            raise DataError("mt_bench needs its question file: mt_bench:PATH/question.jsonl (FastChat's layout)")
        self.source = source

    def records(self, split: str = "test") -> list[dict]:
        from alignlab.data.loaders import read_rows

        refs = {}
        ref_file = Path(self.source).parent / "reference_answer" / "gpt-4.jsonl"
        if ref_file.exists():
            refs = {r["question_id"]: r["choices"][0]["turns"] for _, r in read_rows(ref_file)}
        out = []
        for where, r in read_rows(self.source):
            turns = r.get("turns")
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise DataError(f"{where}: an MT-Bench question needs 'turns', a list of strings")
            out.append({"question_id": r.get("question_id"), "category": r.get("category", "general"),
                        "turns": turns, "reference": refs.get(r.get("question_id")) or r.get("reference")})
        return out

    def question(self, record: dict) -> str:
        return record["turns"][0]
