"""The cache directory and the two file habits everything in it follows.

- Where: `$ALIGNLAB_CACHE` if set, else `~/.cache/alignlab`; any function that writes to the cache
  also takes a `cache_dir` argument that wins over both.
- Atomic writes: a file is written under a temporary name in its final directory and renamed into
  place only when complete (`os.replace` is atomic on one filesystem). A crash, a Ctrl-C or a failed
  checksum leaves no half-written file behind under the real name, so "the file exists" always
  means "the file is complete".
- Content hashes: sha256, streamed in 1 MB blocks, so a large file is never read whole.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alignlab.model.precision import cache_dir as alignlab_cache_dir

BLOCK = 1 << 20


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` if given, else $ALIGNLAB_CACHE, else ~/.cache/alignlab (not created here)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return alignlab_cache_dir()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, on error delete it.

    with atomic_path(out) as tmp:
        tmp.write_bytes(data)       # `out` appears only now, complete
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes the file private (0600); a cache file is ordinary
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a successful replace there is nothing left to delete


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()
