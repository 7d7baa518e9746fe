"""Documents -> one flat array of token ids on disk, opened as a memory map (nanoGPT's train.bin).

    meta = tokenize_to_file(corpus.documents, tokenizer, "tokens.bin", source_fingerprint=corpus.fingerprint)
    ids = open_tokens("tokens.bin")          # np.memmap, read lazily by the OS, shared between processes

The file is the raw ids, nothing else: np.uint16 when every id fits in 16 bits (vocab_size <=
65536, half the disk and page cache), else np.uint32. Next to it, `tokens.json` (the sidecar) says
how to read it and what it was made from:

    {"count": 338025, "dtype": "uint16", "vocab_size": 65, "tokenizer": <sha256>, "source": <sha256>,
     "separator": "\\n\\n", "documents": 1, "characters": 1115394, "unknown": 0, ...}

`tokenizer` and `source` are fingerprints (sha256 of the tokenizer's saved files, and of the
documents), so a cache can tell whether an existing file still matches: `read_meta(..., expect=...)`
returns the sidecar only if they (and the file's size) agree, else None and the file is rebuilt.

Documents are joined by a separator: the tokenizer's eos token when it has one (so each document
ends with <|endoftext|>, GPT-2's convention, and a model learns where documents stop), else a blank
line "\\n\\n". It goes between documents only, so a single file decodes back to exactly its text.

Encoding runs in chunks of about a megabyte, with a progress bar (characters and tokens/s) on
large corpora. A chunk is cut only at a newline that has non-space characters on both sides. For
character and byte-level BPE tokenizers (GPT-2's pre-tokenizer never joins across such a newline)
that gives the same ids as encoding the whole text at once; any other tokenizer is checked on a
probe text first and, if cutting would change its ids, encodes each document whole.

Nothing is dropped silently. A character tokenizer meeting characters it does not know raises an
error listing them, unless it has an unk_token: then they become unk and the sidecar counts them
(`unknown_characters`); `unknown` counts unk ids for every kind of tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from alignlab.data.cache import atomic_path
from alignlab.data.errors import DataError, DataNotFoundError
from alignlab.text import BPETokenizer, CharTokenizer, Tokenizer

FORMAT = "alignlab-tokens/1"
CHUNK_CHARS = 1 << 20
PROGRESS_CHARS = 4 << 20  # show a progress bar above this many characters
BLANK_LINE = "\n\n"
CUT = re.compile(r"(?<=\S\n)(?=\S)")  # a newline between two non-space characters


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def document_separator(tokenizer: Tokenizer) -> str:
    """The text put between two documents: the eos token if there is one, else a blank line."""
    return tokenizer.eos_token if tokenizer.eos_token is not None else BLANK_LINE


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the files `tokenizer.save` writes: equal fingerprints, equal tokenizers."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                h.update(f.relative_to(tmp).as_posix().encode() + b"\0")
                h.update(f.read_bytes())
    return h.hexdigest()


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def read_meta(path: str | Path, expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The sidecar of a token file, or None if there is none, it does not match `expect`
    (e.g. {"source": ..., "tokenizer": ...}), or the file's size is not `count` ids."""
    path = Path(path)
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
        if meta["format"] != FORMAT or path.stat().st_size != meta["count"] * np.dtype(meta["dtype"]).itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or not our sidecar
        return None
    if expect and any(meta.get(k) != v for k, v in expect.items()):
        return None
    return meta


def open_tokens(path: str | Path) -> np.ndarray:
    """The token ids of a file written by `tokenize_to_file`, memory-mapped read-only."""
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        what = "is missing" if not path.exists() else "has no valid sidecar " + meta_path(path).name
        raise (DataNotFoundError if not path.exists() else DataError)(f"token file {path} {what}")
    if meta["count"] == 0:  # an empty file cannot be memory-mapped
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["count"],))


def tokenize_to_file(
    documents: list[str],
    tokenizer: Tokenizer,
    path: str | Path,
    source_fingerprint: str = "",
    progress: bool = True,
    chunk_chars: int = CHUNK_CHARS,
) -> dict[str, Any]:
    """Encode `documents` (joined by `document_separator`) into `path` plus its sidecar; return
    the sidecar. Both files are written atomically, the sidecar last."""
    path = Path(path)
    start = time.perf_counter()
    characters = sum(len(d) for d in documents)
    if characters == 0:
        raise DataError(f"{path.name}: the source has no text to tokenize")
    separator = document_separator(tokenizer)
    sep_ids = _encode_separator(tokenizer, separator) if len(documents) > 1 else []
    unknown_chars = _check_characters(documents, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    limit = np.iinfo(dtype).max
    if not _cuts_are_exact(tokenizer):
        chunk_chars = max(chunk_chars, max(len(d) for d in documents))  # whole documents only

    count, unk = 0, 0
    unk_id = tokenizer.unk_token_id
    sep = np.asarray(sep_ids, dtype=np.int64)
    show = progress and characters > PROGRESS_CHARS
    bar = tqdm(total=characters, unit="char", unit_scale=True, desc="tokenizing", file=sys.stderr, disable=not show)
    with bar, atomic_path(path) as tmp, open(tmp, "wb") as f:
        for d, doc in enumerate(documents):
            # the separator, then the document chunk by chunk, each written as soon as it is encoded
            pieces = ((sep, 0),) if d > 0 else ()
            for ids, n_chars in itertools.chain(pieces, _encode_chunks(tokenizer, doc, chunk_chars)):
                if ids.size and (ids.min() < 0 or ids.max() > limit):
                    raise DataError(f"{path.name}: token id {ids.max()} does not fit in {dtype.name}")
                f.write(ids.astype(dtype).tobytes())
                count += len(ids)
                unk += int(np.count_nonzero(ids == unk_id)) if unk_id is not None else 0
                bar.update(n_chars)
                bar.set_postfix_str(f"{count / (time.perf_counter() - start):,.0f} tok/s", refresh=False)

    meta = {
        "format": FORMAT,
        "count": count,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "source": source_fingerprint,
        "separator": separator,
        "documents": len(documents),
        "characters": characters,
        "unknown": unk,
        "unknown_characters": dict(unknown_chars.most_common()),
        "seconds": round(time.perf_counter() - start, 3),
    }
    with atomic_path(meta_path(path)) as tmp:
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return meta


def chunks(text: str, size: int = CHUNK_CHARS):
    """Pieces of `text` of about `size` characters (or more), cut only where `CUT` matches."""
    start = 0
    while len(text) - start > size:
        cut = CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


def _encode_chunks(tokenizer: Tokenizer, doc: str, chunk_chars: int):
    """(ids as int64, number of characters) for each chunk of `doc`."""
    for chunk in chunks(doc, chunk_chars):
        yield np.asarray(tokenizer.encode(chunk, add_special_tokens=False), dtype=np.int64), len(chunk)


def _cuts_are_exact(tokenizer: Tokenizer) -> bool:
    """Whether encoding the pieces of `chunks` gives the ids of encoding the whole text."""
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        return True
    a, b = "First line: it's 12 o'clock, you're late.\n", "Second line, über 3.5 km.\n  third\n"
    try:
        whole = tokenizer.encode(a + b, add_special_tokens=False)
        return whole == tokenizer.encode(a, add_special_tokens=False) + tokenizer.encode(b, add_special_tokens=False)
    except Exception:
        return False


def _encode_separator(tokenizer: Tokenizer, separator: str) -> list[int]:
    try:
        return tokenizer.encode(separator, add_special_tokens=False)
    except ValueError as e:
        raise DataError(f"the document separator {separator!r} cannot be encoded: {e}") from e


def _check_characters(documents: list[str], tokenizer: Tokenizer) -> Counter:
    """For a char tokenizer: the characters of the text it has no id for, with their counts.
    An error if there are any and it has no unk_token to stand for them."""
    if not isinstance(tokenizer, CharTokenizer):
        return Counter()
    known = set(tokenizer.chars)
    unknown: Counter = Counter()
    for doc in documents:
        missing = set(doc) - known
        if missing and tokenizer.special_pattern is not None:  # characters inside special tokens are fine
            doc = tokenizer.special_pattern.sub("", doc)
            missing = set(doc) - known
        unknown.update({c: doc.count(c) for c in missing})
    if unknown and tokenizer.unk_token is None:
        shown = ", ".join(f"{c!r} x{n}" for c, n in unknown.most_common(8))
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise DataError(
            f"{sum(unknown.values())} characters ({len(unknown)} distinct) are not in the char tokenizer's "
            f"vocabulary: {shown}{more}; build the tokenizer from this text, or give it an unk_token"
        )
    return unknown
