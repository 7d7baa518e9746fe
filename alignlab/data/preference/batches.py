"""Batches for DPO and KTO: pairs as [chosen; rejected] rows, KTO examples as [completion; KL] rows with their labels,
in shuffled, resumable epochs (alignlab.data.sampler). Extra per-example tensors (cached reference log-probs,
SafeDPO's safety labels) ride along."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.preference.collate import collate_pairs, collate_unpaired
from alignlab.data.preference.tokenize import UnpairedExample
from alignlab.data.sampler import EpochSampler


@dataclass
class KTOExample:
    example: UnpairedExample  # prompt + completion, and its label
    kl: UnpairedExample  # the same prompt + another example's completion: a sample y' for z


def kto_examples(examples: list[UnpairedExample], max_len: int) -> list[KTOExample]:
    """Each unpaired example with its KL row: its prompt and the completion half the data set away in prompt
    order, so from another prompt unless one prompt holds more than half the examples (a single example is its
    own partner); cut to max_len. Every completion is used once as a KL completion. The pairing is fixed per
    example, so the KL rows' reference log-probs can be cached. trl also fixes it before shuffling, rotating the
    completions by one within each chunk of batch_size examples; here the next example would often be the other
    half of the same pair, on the same prompt."""
    n = len(examples)
    order = sorted(range(n), key=lambda i: examples[i].prompt_ids)
    out: list = [None] * n
    for k, i in enumerate(order):
        e, other = examples[i], examples[order[(k + n // 2) % n]]
        room = max_len - len(e.prompt_ids)  # >= 1: an example whose prompt fills max_len was dropped
        out[i] = KTOExample(e, UnpairedExample(e.prompt_ids, other.completion_ids[:room],
                                               other.completion_mask[:room], e.label))
    return out


def make_batch(examples: list, extras: dict[str, torch.Tensor], idx: list[int], pad_id: int) -> dict:
    """The rows of examples[idx]: pairs as [chosen; rejected], KTO examples as [completion; KL] with their
    labels; the extras (per-example tensors) ride along."""
    picked = [examples[i] for i in idx]
    if isinstance(picked[0], KTOExample):
        batch = collate_unpaired([e.example for e in picked] + [e.kl for e in picked], pad_id)
        batch["label"] = batch["label"][:len(picked)]
    else:
        batch = collate_pairs(picked, pad_id)
    batch.pop("attention_mask", None)
    batch.pop("lengths", None)
    batch.update({k: v[idx] for k, v in extras.items()})
    return batch


class PairBatches(EpochSampler):
    """Shuffled epochs over the pairs (alignlab.data.sampler), `batch_size` pairs at a time, as [chosen; rejected]
    rows. Extra per-pair tensors (cached reference log-probs, safety labels) ride along. Resumable."""

    what = "pairs"

    def __init__(self, examples: list, extras: dict[str, torch.Tensor], batch_size: int, pad_id: int, seed: int):
        super().__init__(len(examples), batch_size, seed, what=self.what)
        self.examples, self.extras, self.pad_id = examples, extras, pad_id

    def next_batch(self) -> dict:
        return make_batch(self.examples, self.extras, self.next_indices(), self.pad_id)


class UnpairedBatches(PairBatches):
    """KTO: shuffled epochs over the unpaired examples, `batch_size` at a time, as [completion; KL] rows with
    their labels (each example's KL row is fixed by kto_examples). Resumable."""

    what = "examples"
