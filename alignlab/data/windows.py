"""Training examples from a flat token array: windows of block_size + 1 tokens (nanoGPT's get_batch).

    x, y = random_windows(train, block_size=256, batch_size=32, generator=g)   # int64 [B, T] each

Each row is a window starting at a random position; y is x shifted left by one (y[b, t] is the
token after x[b, t]), so one window trains all T next-token predictions at once. Windows cross
document boundaries freely: the separator token between documents is part of what is learned.

The start positions come from `generator` and nothing else (no global seed, no numpy RNG), so a
trainer that saves `generator.get_state()` in its checkpoint and restores it on resume draws
exactly the batches it would have drawn without the interruption. The generator must be a CPU one.

`sequential_windows` walks a split in order instead, in non-overlapping windows, for an exact
validation loss over all of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from alignlab.data.errors import DataError


def _check_length(data: np.ndarray, block_size: int, name: str) -> None:
    if block_size < 1:
        raise DataError(f"block_size must be at least 1, got {block_size}")
    if len(data) < block_size + 1:
        raise DataError(
            f"the {name} has {len(data)} tokens, too few for one window of block_size + 1 = {block_size + 1}; "
            "use a smaller block_size, more data, or a larger split fraction"
        )


def _to_tensors(rows: list[np.ndarray], device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    windows = torch.from_numpy(np.stack(rows).astype(np.int64))  # [B, T + 1]; copies out of the memmap
    x, y = windows[:, :-1], windows[:, 1:]
    if device is not None and torch.device(device).type == "cuda":  # overlap the copy with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return (x.to(device), y.to(device)) if device is not None else (x.contiguous(), y.contiguous())


def random_windows(
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    generator: torch.Generator,
    device: str | torch.device | None = None,
    name: str = "split",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` windows at uniformly random starts: (x, y), int64 [batch_size, block_size],
    y = x shifted by one. `name` only labels the error when `data` is too short."""
    _check_length(data, block_size, name)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    return _to_tensors([data[i : i + block_size + 1] for i in starts], device)


def sequential_windows(
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    device: str | torch.device | None = None,
    name: str = "split",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every full window of `data` in order, non-overlapping (starts 0, T, 2T, ...), in batches
    (the last batch may be smaller); the tail shorter than a window is left out. Each token
    but the first is a target exactly once, up to that tail."""
    _check_length(data, block_size, name)
    starts = range(0, len(data) - block_size, block_size)
    for b in range(0, len(starts), batch_size):
        yield _to_tensors([data[i : i + block_size + 1] for i in starts[b : b + batch_size]], device)
