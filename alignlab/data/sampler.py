"""The order in which a recipe visits its examples: seeded random epochs, resumable exactly."""

from __future__ import annotations

import random

from alignlab.data.errors import DataError


class EpochSampler:
    """Indices of n examples, `batch_size` at a time: each epoch is a fresh seeded permutation, and a batch that
    runs past the end of one epoch continues into the next. The generator's state, the current permutation and
    the position are the state_dict, so a resumed run draws the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, seed: int, what: str = "examples"):
        if n == 0:
            raise DataError(f"no training {what} left (every one was dropped)")
        self.n, self.batch_size = n, batch_size
        self.rng = random.Random(seed)
        self.epoch, self.order, self.pos = 0, [], 0

    def next_indices(self) -> list[int]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self.order):
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
                self.epoch, self.pos = self.epoch + 1, 0
            take = self.order[self.pos:self.pos + self.batch_size - len(picked)]
            picked += take
            self.pos += len(take)
        return picked

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "epoch": self.epoch, "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.epoch, self.order, self.pos = state["epoch"], list(state["order"]), state["pos"]
