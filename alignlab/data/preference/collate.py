"""Batches of tokenised preference data: [chosen; rejected] rows for pairs, labelled rows for KTO.

    batch = collate_pairs(pairs.examples[:8], pad_id)       # 16 rows: 8 chosen, then 8 rejected
"""

from __future__ import annotations

import torch

from alignlab.data.preference.tokenize import PairExample, UnpairedExample
from alignlab.objectives.lm import IGNORE_INDEX


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-pad (ids, labels) rows: labels IGNORE_INDEX and attention 0 on padding; lengths = real tokens."""
    T = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(labels)] = torch.tensor(labels)
        attention[i, :len(ids)] = 1
    return {"input_ids": x, "labels": y, "attention_mask": attention, "lengths": attention.sum(1)}


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict:
    """One batch of 2B rows, as TRL concatenates them: rows 0..B-1 prompt + chosen, rows B..2B-1 prompt +
    rejected, right-padded. labels[:, t] is the target of position t (IGNORE_INDEX on the prompt and the
    padding), so a side's log-probability is a sum over its labels. lengths[i] counts row i's real tokens
    (a reward model reads its score at position lengths - 1)."""
    return _pad([e.sequence("chosen") for e in examples] + [e.sequence("rejected") for e in examples], pad_id)


def collate_unpaired(examples: list[UnpairedExample], pad_id: int) -> dict:
    """B rows of prompt + completion as collate_pairs pads them, plus "label" (bool [B], True: desirable)."""
    batch = _pad([e.sequence() for e in examples], pad_id)
    batch["label"] = torch.tensor([e.label for e in examples], dtype=torch.bool)
    return batch
