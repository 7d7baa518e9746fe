"""Decontamination: drop training data that shares a long word sequence with an evaluation set.

    index = NgramIndex.from_texts({"gsm8k:test:17": "Natalia sold clips to 48 of her friends ..."}, n=13)
    index.hits("... some training text ...")          # -> {"gsm8k:test:17"}: the eval items it overlaps
    kept, report = decontaminate(records, index)     # report: what was dropped and which eval items it hit

The test GPT-3 used (Brown et al. 2020, appendix C) and lm-evaluation-harness's decontamination keeps: words are
lowercased with punctuation removed, and a training text is contaminated when one of its n-grams (n = 13) is an
n-gram of an evaluation item. An item shorter than n words is matched whole: its entire word sequence is its one
n-gram, so "What is 17 + 25?" is caught though it is 4 words long (GPT-3 did the same for short items). An item of
fewer than `min_words` words (4) is not checked, and counted: "5 + 3 = ?" is the two words "5 3", which every
worked solution holds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from alignlab.text.rouge import words

DEFAULT_N = 13
MIN_WORDS = 4


def record_text(record: dict) -> str:
    """Every piece of text a training record trains on or is prompted with, in trl's formats (text, messages,
    prompt/completion, prompt/chosen/rejected) and Self-Instruct's (instruction, input, output)."""
    parts = []
    for key in ("text", "prompt", "completion", "chosen", "rejected", "messages", "instruction", "input", "output"):
        value = record.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [m.get("content") or "" for m in value if isinstance(m, dict)]
    return "\n".join(parts)


class NgramIndex:
    """The n-grams of a set of evaluation items, keyed back to the items that hold them."""

    def __init__(self, n: int = DEFAULT_N, min_words: int = MIN_WORDS):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n, self.min_words = n, min_words
        self.grams: dict[tuple[str, ...], set[str]] = defaultdict(set)
        self.short_lengths: set[int] = set()  # lengths of the items shorter than n, matched whole
        self.items = 0
        self.unchecked = 0  # items too short to check

    @classmethod
    def from_texts(cls, texts: dict[str, str], n: int = DEFAULT_N, min_words: int = MIN_WORDS) -> NgramIndex:
        index = cls(n, min_words)
        for item_id, text in texts.items():
            index.add(item_id, text)
        return index

    def add(self, item_id: str, text: str) -> None:
        w = words(text)
        if len(w) < self.min_words:
            self.unchecked += 1
            return
        self.items += 1
        if len(w) < self.n:
            self.grams[tuple(w)].add(item_id)
            self.short_lengths.add(len(w))
            return
        for i in range(len(w) - self.n + 1):
            self.grams[tuple(w[i:i + self.n])].add(item_id)

    def hits(self, text: str) -> set[str]:
        """The evaluation items that share an n-gram (or their whole text, if short) with `text`."""
        w = words(text)
        found: set[str] = set()
        for size in {self.n, *self.short_lengths}:
            for i in range(len(w) - size + 1):
                found |= self.grams.get(tuple(w[i:i + size]), set())
        return found


@dataclass
class DecontaminationReport:
    n: int
    eval_items: int
    unchecked_items: int = 0  # eval items too short to check
    checked: int = 0
    dropped: list[dict] = field(default_factory=list)  # {"index", "hits": [eval ids]}
    eval_items_hit: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"n": self.n, "eval_items": self.eval_items, "unchecked_eval_items": self.unchecked_items,
                "checked": self.checked, "dropped": len(self.dropped),
                "eval_items_hit": sorted(self.eval_items_hit), "dropped_records": self.dropped}

    def summary(self) -> str:
        short = f", {self.unchecked_items:,} too short to check" if self.unchecked_items else ""
        return (f"decontamination ({self.n}-grams against {self.eval_items:,} eval items{short}): "
                f"{len(self.dropped):,} of {self.checked:,} records overlap {len(self.eval_items_hit):,} eval items")


def decontaminate(records: list[dict], index: NgramIndex, drop: bool = True,
                  text_of=record_text) -> tuple[list[dict], DecontaminationReport]:
    """The records that overlap no evaluation item (all of them if not `drop`), and a report of those that do."""
    report = DecontaminationReport(index.n, index.items, index.unchecked, checked=len(records))
    kept = []
    for i, r in enumerate(records):
        hit = index.hits(text_of(r))
        if hit:
            report.dropped.append({"index": i, "hits": sorted(hit)})
            report.eval_items_hit |= hit
        if not hit or not drop:
            kept.append(r)
    return kept, report


def eval_index(sources: list[str], n: int = DEFAULT_N, min_words: int = MIN_WORDS) -> NgramIndex:
    """An index over the prompts of evaluation sources (alignlab.tasks.load_source names: "tinyworld:rl:test@0",
    "gsm8k:test", a file of prompt records); an item's text is its question (Task.question)."""
    from alignlab.tasks import load_source

    index = NgramIndex(n, min_words)
    for source in sources:
        task, records = load_source(source)
        for i, r in enumerate(records):
            index.add(f"{source}#{r.get('id', i)}", task.question(r))
    return index


def world_test_sources(seed: int = 0) -> list[str]:
    """TinyWorld's held-out prompts of every kind: the default evaluation sets synthetic data is checked against."""
    return [f"tinyworld:rl:1-5:test@{seed}", f"tinyworld:safety:test@{seed}", f"tinyworld:tools:test@{seed}",
            f"tinyworld:ifeval:test@{seed}"]


__all__ = ["DEFAULT_N", "MIN_WORDS", "DecontaminationReport", "NgramIndex", "decontaminate", "eval_index",
           "record_text", "world_test_sources"]
