"""Records from files and Hugging Face datasets: one dict per example, each with where it came from.

    rows = read_rows("chats.jsonl")        # [Row(where="chats.jsonl:1", record={...}), ...]
    rows = read_rows("hf:tatsu-lab/alpaca:train")

`where` is what error messages start with, so a bad record is found in one look:

    chats.jsonl:17: field 'messages'[2].role: must be one of system/user/assistant/tool, got 'bot'

Sources, chosen by the file's suffix (`.gz` on the text formats is decompressed on the fly):

    source                                                                    where
    .jsonl, .ndjson   one JSON object per line (blank lines skipped)          file:LINE
    .json             a list of objects                                       file:LINE (row i)
                      or {"data": [...]}                                      file: data[i]
                      (JSON Lines under a .json name, as BFCL ships them, are read as JSON Lines)
    .csv              a header, then one record per row: cells are strings,   file:LINE
                      an empty cell is a missing value, a `messages`/`tools` cell is JSON, and so is a
                      `prompt`/`completion` cell that starts with `[{` (a conversational message list)
    .parquet          needs pyarrow (or pandas with a parquet engine)         file: row i
    hf:NAME[:CONFIG][/SPLIT], hf:NAME:SPLIT                                   hf:NAME/SPLIT: row i
                      a Hugging Face dataset (needs `datasets`: pip install 'alignlab[hf]'); the
                      split defaults to "train"
    tinyworld:KIND[:SPLIT][@SEED]   TinyWorld's chats: sft, tools (calculator), services   tinyworld:...: record i
    bfcl:DIR/CATEGORY  BFCL's questions with their ground truth as chats with   BFCL_v4_CATEGORY.json:LINE
                      tools and tool_calls (simple_python, multiple, parallel)

Rows count from 0, lines from 1. Nothing is validated here beyond "each row is an object": what the
fields must hold depends on the format (alignlab.data.sft), and a converter (data.converters) may run first.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import NamedTuple

from alignlab.data.errors import DataError, DataNotFoundError, MissingDependencyError
from alignlab.data.sources import SPLIT_NAME, open_hf_dataset, parse_hf

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
CSV_JSON_FIELDS = ("messages", "tools")  # always JSON in a CSV cell
CSV_MAYBE_JSON_FIELDS = ("prompt", "completion")  # JSON when the cell starts with "[{"


class Row(NamedTuple):
    where: str  # "chats.jsonl:17", "alpaca.json:5", "data.parquet: row 3", "hf:gsm8k/train: row 0"
    record: dict


def read_rows(source: str | Path) -> list[Row]:
    """Every row of a data file or an `hf:` dataset, in order, with its location."""
    source = str(source)
    if source.startswith("hf:"):
        return _read_hf(source)
    if source.startswith("tinyworld:"):
        return _read_world(source)
    if source.startswith("bfcl:"):
        return _read_bfcl(source)
    path = Path(source)
    if not path.is_file():
        raise DataNotFoundError(f"{source}: no such data file")
    name = path.name.removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix in (".jsonl", ".ndjson"):
        return _check_objects(_json_lines(_read_text(path), source))
    if suffix == ".json":
        return _check_objects(_json_file(_read_text(path), source))
    if suffix == ".csv":
        return _read_csv(_read_text(path), source)
    if suffix == ".parquet" and not path.name.endswith(".gz"):
        return _check_objects(_read_parquet(path, source))
    raise DataError(f"{source}: unknown data file type; expected one of {', '.join(SUFFIXES)} (or hf:NAME)")


WORLD_KINDS = {"sft": "sft_conversations", "tools": "tool_conversations", "services": "service_conversations"}


def _read_world(source: str) -> list[Row]:
    """`tinyworld:KIND[:SPLIT][@SEED]`: TinyWorld's SFT chats (sft), calculator chats (tools) or tool-use chats
    over its services (services), made on the fly (alignlab.data.world); SPLIT train (default) or test, SEED 0 by
    default."""
    from alignlab.data.world import TinyWorld

    spec, _, seed = source.removeprefix("tinyworld:").partition("@")
    kind, _, split = spec.partition(":")
    if kind not in WORLD_KINDS or split not in ("", "train", "test") or not (seed or "0").isdigit():
        raise DataError(f"{source}: expected tinyworld:KIND[:SPLIT][@SEED] with KIND one of {', '.join(WORLD_KINDS)}, "
                        "SPLIT train or test, SEED an integer")
    records = getattr(TinyWorld(seed=int(seed or 0)), WORLD_KINDS[kind])(split or "train")
    return [Row(f"{source}: record {i}", r) for i, r in enumerate(records)]


def read_bfcl(data_dir: str | Path, category: str) -> list[tuple[Row, dict | None]]:
    """BFCL's questions of a category (DIR/BFCL_v4_CATEGORY.json), each with its ground-truth record from
    DIR/possible_answer/ (matched by id), or with None where the category has no answer file (irrelevance)."""
    name = f"BFCL_v4_{category}.json"
    questions = read_rows(Path(data_dir) / name)
    answers_path = Path(data_dir) / "possible_answer" / name
    if not answers_path.is_file():
        return [(q, None) for q in questions]
    answers = {a.record.get("id"): a.record for a in read_rows(answers_path)}
    missing = [q.record.get("id") for q in questions if q.record.get("id") not in answers]
    if missing:
        raise DataError(f"{answers_path}: no answer for {len(missing)} question(s), e.g. {missing[0]}")
    return [(q, answers[q.record.get("id")]) for q in questions]


def _read_bfcl(source: str) -> list[Row]:
    """`bfcl:DIR/CATEGORY` (e.g. bfcl:../shared/data/bfcl/simple_python): BFCL's questions of a category with their
    ground truth as chat records with `tools` and the answer's `tool_calls` (alignlab.data.bfcl)."""
    from alignlab.data.bfcl import bfcl_to_messages

    path = Path(source.removeprefix("bfcl:"))
    pairs = read_bfcl(path.parent, path.name)
    if any(a is None for _, a in pairs):
        raise DataError(f"{source}: no answers in {path.parent / 'possible_answer'} (irrelevance has none: nothing "
                        "to train on)")
    return [Row(q.where, bfcl_to_messages(q.record, a)) for q, a in pairs]


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM at the start (Excel's CSVs) is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _check_objects(rows: list[Row]) -> list[Row]:
    for where, record in rows:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object of fields (a record), got {type(record).__name__}")
    return rows


# --- JSON -------------------------------------------------------------------------------------------


def _json_lines(text: str, name: str) -> list[Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(Row(f"{name}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
    return rows


def _json_file(text: str, name: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON Lines under a .json name
            return _json_lines(text, name)
        raise DataError(f"{name}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return [Row(f"{name}: data[{i}]", r) for i, r in enumerate(data["data"])]
    if not isinstance(data, list):
        keys = f" with keys {sorted(data)[:8]}" if isinstance(data, dict) else ""
        raise DataError(f"{name}: expected a list of records or {{\"data\": [...]}}, got {type(data).__name__}{keys}")
    return [Row(f"{name}:{line} (row {i})", r) for i, (line, r) in enumerate(zip(_item_lines(text), data, strict=True))]


def _item_lines(text: str) -> list[int]:
    """The line on which each item of a top-level JSON array starts (the text is known to parse)."""
    decoder, lines = json.JSONDecoder(), []
    i, line, counted = text.index("[") + 1, 1, 0

    def skip(i):  # whitespace and commas between items
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        return i

    i = skip(i)
    while text[i] != "]":
        line += text.count("\n", counted, i)
        counted = i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)
        i = skip(i)
    return lines


# --- CSV --------------------------------------------------------------------------------------------


def _read_csv(text: str, name: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    rows, line = [], reader.line_num + 1
    for cells in reader:
        where, line = f"{name}:{line}", reader.line_num + 1  # a quoted cell may span lines
        if not cells:  # a blank line
            continue
        if len(cells) > len(header):
            raise DataError(f"{where}: {len(cells)} cells, but the header has {len(header)} columns")
        record = {k: v or None for k, v in zip(header, cells)}  # an empty cell is a missing value
        for key in CSV_JSON_FIELDS + CSV_MAYBE_JSON_FIELDS:
            cell = record.get(key)
            if cell and (key in CSV_JSON_FIELDS or cell.lstrip().startswith("[{")):
                try:
                    record[key] = json.loads(cell)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: field {key!r}: not valid JSON ({e.msg})") from None
        rows.append(Row(where, record))
    return rows


# --- Parquet ----------------------------------------------------------------------------------------


def _read_parquet(path: Path, name: str) -> list[Row]:
    try:
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    except ImportError:
        try:
            import pandas as pd

            records = [_plain(r) for r in pd.read_parquet(path).to_dict("records")]
        except ImportError as e:
            raise MissingDependencyError(
                f"{name}: reading parquet needs pyarrow: pip install pyarrow "
                "(the 'hf' extra brings it too: pip install 'alignlab[hf]')"
            ) from e
    except (OSError, ValueError) as e:  # pyarrow: not a Parquet file, or a damaged one
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: not a readable Parquet file ({reason})") from None
    return [Row(f"{name}: row {i}", r) for i, r in enumerate(records)]


def _plain(x):
    """pandas hands list columns back as numpy arrays and missing values as NaN: make plain Python."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return None if isinstance(x, float) and x != x else x


# --- Hugging Face datasets --------------------------------------------------------------------------


def parse_hf_records(spec: str) -> tuple[str, str | None, str]:
    """ "hf:NAME[:CONFIG][/SPLIT]" as for pretraining text, and also "hf:NAME:SPLIT" when the part
    after the colon reads like a split (train, validation, test, ...) -> (name, config, split)."""
    name, config, split = parse_hf(spec)
    if config and SPLIT_NAME.fullmatch(config) and not spec.endswith("/" + split):
        config, split = None, config
    return name, config, split


def _read_hf(spec: str) -> list[Row]:
    name, config, split = parse_hf_records(spec)
    label = f"hf:{name}" + (f":{config}" if config else "") + f"/{split}"
    dataset = open_hf_dataset(name, config, split, spec)
    return [Row(f"{label}: row {i}", dict(r)) for i, r in enumerate(dataset)]
