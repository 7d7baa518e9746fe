"""Multiple choice by answer log-likelihood (MMLU-style, as lm-evaluation-harness scores it).

    task = MultipleChoice("questions.jsonl")        # {"question", "choices": [...], "label": 0} per line
    task = MultipleChoice("hf:cais/mmlu:all/test")  # MMLU's layout: "answer" holds the index
    for r in task.records():
        context, options = task.context(r), task.continuations(r)   # "Question: ...\\nAnswer:", [" A", " B", ...]
    raw, norm = choose(loglikelihoods, r["choices"])            # acc: raw == r["label"]; acc_norm: norm == ...

No text is generated: the model scores each option as a continuation of the context, log p(option | context) summed
over the option's tokens, and picks the highest (acc), or the highest per character of the option (acc_norm, which
does not favour short options). The prompt is lm-evaluation-harness's default for such tasks (`doc_to_text`
"Question: {question}\\nAnswer:", target delimiter " "), so a local task file scores the same here and there.
"""

from __future__ import annotations

from alignlab.data.errors import DataError
from alignlab.tasks.base import Task

LETTERS = "ABCDEFGHIJ"


def choose(loglikelihoods: list[float], choices: list[str]) -> tuple[int, int]:
    """(argmax_i ll_i, argmax_i ll_i / len(choice_i) in characters): the raw and the length-normalised pick (the
    first on ties), lm-eval's acc and acc_norm."""
    raw = max(range(len(choices)), key=lambda i: loglikelihoods[i])
    norm = max(range(len(choices)), key=lambda i: loglikelihoods[i] / max(1, len(choices[i])))
    return raw, norm


class MultipleChoice(Task):
    """Questions with a list of choices and the index of the right one ("label", or MMLU's "answer")."""

    name = "mc"
    delimiter = " "

    def __init__(self, source: str):
        self.source = source

    def records(self, split: str = "test") -> list[dict]:
        from alignlab.data.loaders import read_rows

        out = []
        for where, r in read_rows(self.source):
            label = r.get("label", r.get("answer"))
            if isinstance(label, str) and len(label) == 1 and label in LETTERS:
                label = LETTERS.index(label)
            choices = r.get("choices")
            if not isinstance(r.get("question"), str) or not isinstance(choices, list) or len(choices) < 2:
                raise DataError(f"{where}: a multiple-choice record needs 'question' (text) and 'choices' (a list "
                                f"of two or more), got {sorted(r)}")
            if not isinstance(label, int) or not 0 <= label < len(choices):
                raise DataError(f"{where}: field 'label' (or 'answer'): the index of the right choice, 0 to "
                                f"{len(choices) - 1} (or a letter), got {label!r}")
            out.append({**r, "choices": [str(c) for c in choices], "label": label})
        if not out:
            raise DataError(f"{self.source}: no multiple-choice records")
        return out

    def context(self, record: dict) -> str:
        return f"Question: {record['question'].strip()}\nAnswer:"

    def continuations(self, record: dict) -> list[str]:
        return [self.delimiter + c for c in record["choices"]]

    def question(self, record: dict) -> str:
        return record["question"]
