"""Writing synthetic data: JSON Lines in trl's formats, and beside it a provenance record of how it was made.

    write_dataset("data/rft.jsonl", records, {"command": "rejection", "teacher": "runs/p/sft/model", ...})
    # -> data/rft.jsonl and data/rft.provenance.json (teacher, filters and their counts, seeds, settings, time)

Both are written to a temporary file first and renamed, so a killed run never leaves half a dataset.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def sidecar(path: str | Path, suffix: str) -> Path:
    """A file beside a dataset: data/rft.jsonl -> data/rft<suffix>."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + suffix)


def provenance_path(path: str | Path) -> Path:
    return sidecar(path, ".provenance.json")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_dataset(path: str | Path, records: list[dict], provenance: dict) -> Path:
    """Write the records (one JSON object per line) and their provenance; returns the provenance file's path."""
    from alignlab import __version__

    path = Path(path)
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    meta = {"records": len(records), "file": path.name, **provenance, "alignlab": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = provenance_path(path)
    _atomic_write(out, json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")
    return out
