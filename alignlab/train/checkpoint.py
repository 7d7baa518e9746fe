"""Training checkpoints: written atomically, pruned to the last k (plus the best), resumed exactly.

A checkpoint is a directory `checkpoints/step_000123/` holding one file, `state.pt`: the model and
optimizer state dicts, the step, the data sampler's state and every RNG state (torch CPU/CUDA, Python,
NumPy). Resuming from it replays the run bit for bit on CPU.

Atomic write. Everything is written into `step_000123.tmp/`, flushed to disk (fsync), and only then
renamed to `step_000123/`. A rename within one filesystem is atomic, so a crash (even kill -9) at any
moment leaves either the complete new checkpoint or none, never half of one; the previous checkpoints are
untouched. Leftover `*.tmp` directories are ignored and removed by the next save.

`best/` holds a copy of the checkpoint with the lowest validation loss, written the same way.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from alignlab.errors import CheckpointError

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "state.pt"


class CheckpointCorrupt(CheckpointError):
    """A checkpoint that cannot be read (truncated, corrupt, or not an alignlab checkpoint)."""


def rng_state() -> dict:
    """Every random number generator a training step can touch."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(state: dict, final_dir: Path) -> Path:
    """Write `state` to final_dir/state.pt so that final_dir either appears complete or not at all."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final_dir.exists():  # overwriting (e.g. best/): move the old one aside, then swap
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final_dir)
    _fsync_dir(final_dir.parent)
    return final_dir


def step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ckpt_dir, oldest first (in-progress `.tmp` directories are skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write checkpoints/step_{step}/ atomically, then delete all but the newest `keep_last`."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ckpt_dir.glob("*.tmp"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    path = write_atomic(state, ckpt_dir / f"step_{step:06d}")
    if keep_last > 0:
        for _, old in step_dirs(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = step_dirs(ckpt_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint directory (or its state.pt); a damaged file raises CheckpointCorrupt in one line."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.exists():
        raise CheckpointError(f"{file}: no such checkpoint")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointCorrupt(f"{file}: checkpoint is corrupt or truncated ({reason})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise CheckpointCorrupt(f"{file}: not an alignlab training checkpoint (missing model/optimizer/step)")
    return state
