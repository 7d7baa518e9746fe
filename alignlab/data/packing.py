"""Padding-free packing for SFT: whole examples laid side by side in rows of at most `max_tokens`.

Why. Batches of padded examples spend compute on padding: a batch of one 500-token and fifteen 100-token
conversations costs 16 x 500 token positions for 2,000 real ones. Packing several examples into one row
removes the padding; packing *without* letting them see each other keeps each example's loss exact:

    input_ids     [ a0 a1 a2 | b0 b1 | c0 c1 c2 c3 ]           three documents in one row
    position_ids  [  0  1  2 |  0  1 |  0  1  2  3 ]           restart at 0: RoPE / learned positions as if alone
    labels        [ a1 a2 -- | b1 -- | c1 c2 c3 -- ]           -- = -100: the last token of a document has no
                                                               target (its next token is another document's)

The model reads the boundaries off position_ids (alignlab.model.attention.documents: a document starts where
the position does not go up by one) and attends block-diagonally: a token sees only the earlier tokens of
its own document. So each document's logits, loss and gradients are those of the document run alone, and
no pad token is computed (TRL: packing_strategy="bfd", padding_free=True).

Rows are filled by best-fit decreasing (`best_fit_decreasing`): examples longest first, each into the row
with the least room that still fits it, else a new row. An example longer than `max_tokens` keeps its first
`max_tokens` tokens (and is counted as truncated); one left with no target is dropped (and counted).

The loss. The trainer divides the summed token losses by the global count of target tokens,

    L = (1 / N) sum_{t : y_t != -100} -log p(y_t | the tokens of t's document up to t),
    N = #{t : y_t != -100} over every micro-batch of the optimizer step and every process

(alignlab/train/trainer.py, objectives/lm.py). Packing changes neither a term nor N: the same examples
give the same loss packed or padded, and gradient accumulation stays exact.

    rows, stats = pack(examples, max_tokens=1024)            # examples: .input_ids/.labels, or pairs
    batch = collate_packed(rows[:4])                        # {"input_ids", "labels", "position_ids"}: [1, N]
    hidden = model(batch["input_ids"], position_ids=batch["position_ids"], head=False)
    loss = linear_cross_entropy(hidden, model.lm_head.weight, batch["labels"], normaliser)
"""

from __future__ import annotations

import bisect
import random
from dataclasses import asdict, dataclass

import torch

from alignlab.data.errors import DataError
from alignlab.errors import ConfigError
from alignlab.objectives.lm import IGNORE_INDEX

Doc = tuple[list[int], list[int]]  # (input_ids, labels) of one example, labels[t] the target of position t


@dataclass
class PackStats:
    examples: int  # examples packed (after dropping)
    rows: int
    tokens: int  # tokens in all rows
    max_tokens: int
    truncated: int  # examples cut to max_tokens
    dropped: int  # examples with no target token (left)

    @property
    def fill(self) -> float:
        """Fraction of the rows' capacity holding tokens: tokens / (rows * max_tokens)."""
        return self.tokens / max(self.rows * self.max_tokens, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "fill": self.fill}


def as_doc(example) -> Doc:
    """(input_ids, labels) of an example: an object with .input_ids and .labels, a dict, or a pair."""
    if isinstance(example, dict):
        return list(example["input_ids"]), list(example["labels"])
    if hasattr(example, "input_ids"):
        return list(example.input_ids), list(example.labels)
    ids, labels = example
    return list(ids), list(labels)


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group indices into rows whose lengths sum to at most `capacity`: longest first, each into the row
    with the least room left that still fits it, else a new row. Deterministic (ties keep their order)."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted; full rows leave the list
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"length {n} exceeds the capacity {capacity}")
        j = bisect.bisect_left(free, (n, -1))  # the first row with room >= n: the best fit
        if j == len(free):
            rows.append([i])
            room, r = capacity - n, len(rows) - 1
        else:
            room, r = free.pop(j)
            rows[r].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, r))
    return rows


def pack(examples, max_tokens: int) -> tuple[list[list[Doc]], PackStats]:
    """Examples -> rows of documents (at most max_tokens tokens per row) and the packing statistics.

    Each document keeps labels[-1] = -100 (its target would be the next document's first token); an
    example longer than max_tokens keeps its first max_tokens tokens; one with no target left is dropped.
    """
    if max_tokens < 2:
        raise ConfigError(f"max_tokens must be at least 2, got {max_tokens}")
    docs, truncated, dropped = [], 0, 0
    for example in examples:
        ids, labels = as_doc(example)
        if len(ids) != len(labels):
            raise ValueError(f"an example has {len(ids)} input ids but {len(labels)} labels")
        if len(ids) > max_tokens:
            ids, labels = ids[:max_tokens], labels[:max_tokens]
            truncated += 1
        if ids:
            labels[-1] = IGNORE_INDEX
        if all(y == IGNORE_INDEX for y in labels):
            dropped += 1
            continue
        docs.append((ids, labels))
    rows = [[docs[i] for i in row] for row in best_fit_decreasing([len(d[0]) for d in docs], max_tokens)]
    stats = PackStats(examples=len(docs), rows=len(rows), tokens=sum(len(d[0]) for d in docs),
                      max_tokens=max_tokens, truncated=truncated, dropped=dropped)
    return rows, stats


def collate_packed(rows: list[list[Doc]], pad_id: int = 0, flatten: bool = True) -> dict:
    """Rows of documents -> {"input_ids", "labels", "position_ids"}, long tensors.

    flatten=True (padding-free): every document of every row in one sequence, [1, N] with N the total
    token count. flatten=False: [B, L], one row each, L the longest row; a shorter row ends in pad tokens
    that form a document of their own (labels -100), so they change nothing for the real ones.
    """
    def row_tensors(docs: list[Doc], length: int):
        ids = [t for d in docs for t in d[0]]
        labels = [y for d in docs for y in d[1]]
        pos = [p for d in docs for p in range(len(d[0]))]
        pad = length - len(ids)
        return ids + [pad_id] * pad, labels + [IGNORE_INDEX] * pad, pos + list(range(pad))

    if flatten:
        rows = [[d for row in rows for d in row]]
    length = max(sum(len(d[0]) for d in row) for row in rows)
    ids, labels, pos = zip(*(row_tensors(row, length) for row in rows))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos)}


class PackedBatches:
    """Epochs over packed rows in a seeded random order, `rows_per_batch` rows per batch (flattened into one
    padding-free sequence by default). The examples are packed once; each epoch shuffles the rows. The
    order and the position are checkpointed, so a resumed run sees the batches an uninterrupted one would.

    A drop-in for recipes.sft.ConversationBatches: .next_batch(), .state_dict(), .load_state_dict().
    The loss step passes the positions on: model(batch["input_ids"], position_ids=batch["position_ids"]).
    """

    def __init__(self, examples, max_tokens: int, rows_per_batch: int, seed: int, pad_id: int = 0,
                 flatten: bool = True):
        self.rows, self.stats = pack(examples, max_tokens)
        if not self.rows:
            raise DataError("no training examples left to pack (every one was dropped)")
        self.rows_per_batch, self.pad_id, self.flatten = rows_per_batch, pad_id, flatten
        self.rng = random.Random(seed)
        self.epoch, self.order, self.pos = 0, [], 0

    def next_batch(self) -> dict:
        picked = []
        while len(picked) < self.rows_per_batch:
            if self.pos >= len(self.order):
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
                self.epoch, self.pos = self.epoch + 1, 0
            take = self.order[self.pos:self.pos + self.rows_per_batch - len(picked)]
            picked += take
            self.pos += len(take)
        return collate_packed([self.rows[i] for i in picked], self.pad_id, self.flatten)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "epoch": self.epoch, "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.epoch, self.order, self.pos = state["epoch"], list(state["order"]), state["pos"]
