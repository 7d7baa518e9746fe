"""Loading preference data: rows of a file, hf: dataset or TinyWorld -> converted, validated records, with
counts of what was dropped and why, and where each record came from.

    data = load_preference_data("hh.jsonl", convert="hh_rlhf")        # or "tinyworld:preferences"
    print(summarize(data))            # rows, kept, dropped by reason, and where (file:line: field ...)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from alignlab.data.errors import DataError
from alignlab.data.loaders import Row, read_rows
from alignlab.data.preference.formats import (
    _fail,
    detect_preference_format,
    hh_rlhf_to_preference,
    is_unpaired,
    normalize_record,
    unpair,
)
from alignlab.errors import ConfigError

ON_ERROR = ("drop", "raise")
CONVERTERS: dict[str, Callable[[dict, str], dict]] = {"hh_rlhf": hh_rlhf_to_preference}
STEPS = (*CONVERTERS, "unpaired")


class PreferenceData(NamedTuple):
    records: list[dict]  # explicit pairs, or unpaired records (after convert="...unpaired" or as read)
    where: list[str]  # where[i]: where records[i] came from ("hh.jsonl:17")
    counts: dict  # {"rows", "kept", "records", "dropped": {reason: n}, "formats": {format as read: n}}
    dropped: list[tuple[str, str]]  # (where, message) of every dropped row, in order


def read_preference_rows(source: str) -> list[Row]:
    """read_rows(source), plus `tinyworld:preferences[:SPLIT][@SEED]`: TinyWorld's pairs (SPLIT train or
    test, SEED 0 by default)."""
    source = str(source)
    if source.startswith("tinyworld:preferences"):
        from alignlab.data.world import TinyWorld

        spec, _, seed = source.removeprefix("tinyworld:").partition("@")
        _, _, split = spec.partition(":")
        if spec.partition(":")[0] != "preferences" or split not in ("", "train", "test") or not (seed or "0").isdigit():
            raise DataError(f"{source}: expected tinyworld:preferences[:SPLIT][@SEED] with SPLIT train or test, "
                            "SEED an integer")
        pairs = TinyWorld(seed=int(seed or 0)).preference_pairs(split or "train")
        return [Row(f"{source}: record {i}", r) for i, r in enumerate(pairs)]
    return read_rows(source)


def parse_csv_cells(record: dict, where: str) -> dict:
    """A CSV's chosen/rejected cells that hold a JSON message list (starting "[{") -> the list.
    (alignlab.data.loaders parses such prompt/completion cells itself, not these.)"""
    out = dict(record)
    for key in ("chosen", "rejected"):
        cell = out.get(key)
        if isinstance(cell, str) and cell.lstrip().startswith("[{"):
            try:
                out[key] = json.loads(cell)
            except json.JSONDecodeError as e:
                _fail(where, f"'{key}'", f"not valid JSON ({e.msg}, column {e.colno})", "wrong type")
    return out


def _steps(convert: str) -> list[str]:
    steps = [s.strip() for s in convert.split("+") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or "unpaired" in steps[:-1]:
        raise ConfigError(f"convert={convert!r}: expected steps from {', '.join(STEPS)} joined by '+', "
                         "'unpaired' last (e.g. hh_rlhf+unpaired)")
    return steps


def load_preference_data(source: str, convert: str = "", on_error: str = "drop",
                         limit: int | None = None) -> PreferenceData:
    """Rows of `source`, each converted (`convert`: steps of STEPS joined by "+") and validated into an
    explicit record. A bad row is dropped and counted under its reason (on_error="drop") or raised
    (on_error="raise"). No usable row at all is an error either way."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
    steps = _steps(convert)
    rows = read_preference_rows(source)[:limit]
    csv = str(source).removesuffix(".gz").endswith(".csv")
    records, where, dropped = [], [], []
    reasons, formats = Counter(), Counter()
    for at, record in rows:
        try:
            record = parse_csv_cells(record, at) if csv else record
            for step in steps:
                record = CONVERTERS[step](record, at) if step in CONVERTERS else record
            fmt = detect_preference_format(record, at)
            record = normalize_record(record, at)
        except DataError as e:
            if on_error == "raise":
                raise
            reasons[getattr(e, "reason", "invalid record")] += 1
            dropped.append((at, str(e)))
            continue
        formats[fmt] += 1
        out = unpair(record) if "unpaired" in steps and not is_unpaired(record) else [record]
        records += out
        where += [at] * len(out)
    counts = {"rows": len(rows), "kept": len(rows) - len(dropped), "records": len(records),
              "dropped": dict(reasons.most_common()), "formats": dict(formats)}
    data = PreferenceData(records, where, counts, dropped)
    if not records:
        raise DataError(f"{source}: no usable preference records\n{summarize(data)}")
    return data


def summarize(data: PreferenceData, source: str = "", max_shown: int = 5) -> str:
    """A few lines for a recipe to print: rows read, kept, dropped by reason, and the first drops."""
    c = data.counts
    head = f"{source + ': ' if source else ''}{c['rows']} rows, {c['kept']} kept"
    if c["records"] != c["kept"]:
        head += f" ({c['records']} records)"
    formats = ", ".join(f"{n} {fmt}" for fmt, n in c["formats"].items())
    lines = [head + (f" [{formats}]" if formats else "")]
    if c["dropped"]:
        lines.append(f"dropped {len(data.dropped)}: " + ", ".join(f"{why} {n}" for why, n in c["dropped"].items()))
        lines += [f"  {message}" for _, message in data.dropped[:max_shown]]
        if len(data.dropped) > max_shown:
            lines.append(f"  ... and {len(data.dropped) - max_shown} more")
    return "\n".join(lines)
