"""GSM8K as a Task: grade-school word problems with one number as the answer (alignlab/data/gsm8k.py loads them).

    task = GSM8K()
    records = task.records("test")                 # {"prompt": [system, user], "answer": "18", ...}
    task.correct(reply, record)                    # exact match of the final number
    score(replies, records)                        # {"accuracy", "format_rate", "format_ok_wrong", "n"}

Exact match: the reply's final answer (`extract_answer`, style "auto": an "Answer:" line or <answer> tag, else
\\boxed{}, else "#### N", else the last number -- only after the reasoning's </think>) equals the gold number
exactly (`answers_equal`: "1,000" == "1000.00" == 1000; 0.5 == "1/2"). The format is the one the system prompt asks
for: a <think> block, then one "Answer: ..." line and nothing else. format_ok_wrong, the share of replies in the
right format with a wrong answer, is one of GRPO's reward-hacking monitors: format learned, maths not.
"""

from __future__ import annotations

from alignlab.tasks.answers import answers_equal, extract_answer, gold_answer
from alignlab.tasks.answers import format_ok as _format_ok
from alignlab.tasks.base import Task


class GSM8K(Task):
    """GSM8K's train or test split from the Hugging Face Hub, or local rows ({"question", "answer"})."""

    name = "gsm8k"
    format_style = "line"
    answer_style = "auto"

    def __init__(self, source: str = ""):
        self.source = source  # a local file; empty: the split named in records() from the Hub

    def records(self, split: str = "train") -> list[dict]:
        from alignlab.data.gsm8k import load_gsm8k

        return load_gsm8k(self.source or split)


def format_ok(reply: str) -> bool:
    """The reply is <think>...</think> followed by one line "Answer: ..." (what the system prompt asks for)."""
    return _format_ok(reply, "line")


def extract(reply: str) -> str | None:
    """The reply's final answer as written (extract_answer, style auto), or None."""
    return extract_answer(reply, "auto")


def is_correct(reply: str, gold: str) -> bool:
    """Exact match: the reply's extracted final answer equals the gold number (exactly, as numbers)."""
    return answers_equal(extract(reply), gold_answer(gold))


def score(replies: list[str], records: list[dict]) -> dict[str, float]:
    """Exact-match accuracy of replies against records' gold answers, the format rate, and the share of replies in
    the right format with a wrong answer."""
    if len(replies) != len(records):
        raise ValueError(f"{len(replies)} replies for {len(records)} records")
    n = len(replies)
    if n == 0:
        return {"accuracy": float("nan"), "format_rate": float("nan"), "format_ok_wrong": float("nan"), "n": 0}
    correct = [is_correct(out, r["answer"]) for out, r in zip(replies, records)]
    formatted = [format_ok(out) for out in replies]
    return {"accuracy": sum(correct) / n, "format_rate": sum(formatted) / n,
            "format_ok_wrong": sum(f and not c for f, c in zip(formatted, correct)) / n, "n": n}
