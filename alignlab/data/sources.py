"""Where pretraining text comes from: a source spec -> a `Corpus`, a list of documents (strings).

A source spec is one of

    "data/input.txt"                       a text file (one document)
    "data/books/*.txt", "data/**/*.md"     a glob: every matching file, sorted by path, one document each
    "https://host/input.txt"               a URL, downloaded once into the cache (see download.py) ...
    "https://host/input.txt#sha256=86c4e6aa..."   ... and checked against a sha256 (pip's spelling)
    "tinyshakespeare"                      a known source: a name for a URL + sha256 (KNOWN_SOURCES)
    "hf:NAME[:CONFIG][/SPLIT]"             a Hugging Face dataset, one document per row of its "text"
                                           column; needs `pip install alignlab[hf]`
    {"path": ...} | {"url": ..., "sha256": ...} | {"hf": ..., "config": ..., "split": ..., "column": ...}
                                           the same as dicts (the only way to choose another column)
    [spec, spec, ...]                      all of them, documents in order

Files are read as UTF-8, byte for byte: no newline translation, no stripping, nothing dropped (a
file that is not UTF-8 is an error naming the file and the byte). Documents stay separate here;
how they are joined is decided with the tokenizer (tokens.py: its end-of-text token, else a blank
line), so that no separator has to exist in the text itself.

In "hf:NAME/SPLIT" the text after the last "/" is taken as the split only when it reads like one
(train, validation, valid, dev, test, optionally sliced: "train[:10%]"), since NAME itself may be
"owner/name"; the split defaults to "train". Use the dict form for any other split name.

A relative path is relative to the current directory. A missing file, or a glob that matches
nothing, is a `DataNotFoundError` (a FileNotFoundError) naming it.
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data.download import download
from alignlab.data.errors import DataError, DataNotFoundError, MissingDependencyError

# Named sources: a word in a config instead of a URL and its checksum.
KNOWN_SOURCES: dict[str, dict[str, str]] = {
    # karpathy/char-rnn, 1,115,394 bytes: the classic character-level corpus (nanoGPT's shakespeare_char)
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}

URL_SCHEMES = ("http://", "https://", "file://", "ftp://")
GLOB_CHARS = "*?["
SPLIT_NAME = re.compile(r"(train|validation|valid|dev|test)(\[[^\]]*\])?")
SPEC_FIELDS = {"path": set(), "url": {"sha256"}, "hf": {"config", "split", "column"}}


@dataclass
class Corpus:
    """Documents from one source spec. `name` is for people and file names; `identity` says which
    source this is (a path, a URL, a dataset id), not what it holds -- the cache keys its entry on
    it; `fingerprint` is a hash of the contents."""

    name: str
    identity: str
    documents: list[str] = field(repr=False)

    @property
    def characters(self) -> int:
        return sum(len(d) for d in self.documents)

    @property
    def fingerprint(self) -> str:
        """sha256 of the documents (each prefixed by its length in bytes, so where one ends counts)."""
        h = hashlib.sha256()
        for doc in self.documents:
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()

    @property
    def slug(self) -> str:
        """A file-name-safe, readable and unique name: "input.txt-1f3a9c2b"."""
        name = re.sub(r"[^A-Za-z0-9._+-]+", "_", self.name).strip("_")[:48] or "corpus"
        return f"{name}-{hashlib.sha256(self.identity.encode('utf-8')).hexdigest()[:8]}"


def load_corpus(source: Any, cache_dir: str | Path | None = None, progress: bool = True) -> Corpus:
    """Resolve a source spec (see the module docstring) into its documents."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("source: an empty list of sources")
        parts = [load_corpus(s, cache_dir, progress) for s in source]
        name = parts[0].name + (f"+{len(parts) - 1}" if len(parts) > 1 else "")
        identity = "\n".join(p.identity for p in parts)
        return Corpus(name, identity, [d for p in parts for d in p.documents])
    if isinstance(source, dict):
        return _load_dict(source, cache_dir, progress)
    if isinstance(source, Path):
        return _load_files(str(source))
    if not isinstance(source, str) or not source:
        raise DataError(f"source: expected a path, glob, URL, hf:id, dict or list, got {source!r}")

    if source.startswith("hf:"):
        return load_hf(*parse_hf(source))
    if source.startswith(URL_SCHEMES):
        url, _, fragment = source.partition("#")
        sha256 = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        if fragment and sha256 is None:
            raise DataError(f"{source}: the only URL fragment understood is #sha256=<64 hex digits>")
        return _load_url(url, sha256, cache_dir, progress)
    if source in KNOWN_SOURCES and not Path(source).exists():
        known = KNOWN_SOURCES[source]
        corpus = _load_url(known["url"], known["sha256"], cache_dir, progress)
        corpus.name = source
        return corpus
    return _load_files(source)


def _load_dict(spec: dict, cache_dir: str | Path | None, progress: bool) -> Corpus:
    kinds = [k for k in SPEC_FIELDS if k in spec]
    if len(kinds) != 1:
        raise DataError(f"source {spec}: needs exactly one of the fields {', '.join(SPEC_FIELDS)}")
    kind = kinds[0]
    unknown = set(spec) - {kind} - SPEC_FIELDS[kind]
    if unknown:
        allowed = ", ".join(sorted({kind} | SPEC_FIELDS[kind]))
        raise DataError(f"source {spec}: unknown field {sorted(unknown)[0]!r} (a {kind} source takes {allowed})")
    if kind == "path":
        return _load_files(str(spec["path"]))
    if kind == "url":
        return _load_url(spec["url"], spec.get("sha256"), cache_dir, progress)
    return load_hf(spec["hf"], spec.get("config"), spec.get("split") or "train", spec.get("column") or "text")


# ----------------------------------------------------------------------------------------------
# files and URLs


def read_text_file(path: str | Path) -> str:
    """A file's text as UTF-8, exactly (no newline translation); errors name the file."""
    path = Path(path)
    if not path.exists():
        shown = f"{path} ({path.resolve()})" if not path.is_absolute() else str(path)
        raise DataNotFoundError(f"data file not found: {shown}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a glob such as {path / '*.txt'}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from e


def _load_files(spec: str) -> Corpus:
    path = Path(spec).expanduser()
    if any(c in spec for c in GLOB_CHARS) and not path.exists():
        files = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataNotFoundError(f"no data files match {spec} (from {Path.cwd()})")
        name = "/".join(Path(spec).parts[-2:])  # "books/*.txt": the pattern alone says little
        return Corpus(name, str(Path(spec).absolute()), [read_text_file(f) for f in files])
    return Corpus(path.name, str(path.absolute()), [read_text_file(path)])


def _load_url(url: str, sha256: str | None, cache_dir: str | Path | None, progress: bool) -> Corpus:
    path = download(url, sha256, cache_dir, progress)
    return Corpus(path.name.split("-", 1)[1], url, [read_text_file(path)])


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets (optional dependency)


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """ "hf:NAME[:CONFIG][/SPLIT]" -> (name, config, split); see the module docstring."""
    rest = spec.removeprefix("hf:")
    name, config, split = rest, None, "train"
    head, slash, last = rest.rpartition("/")
    if slash and SPLIT_NAME.fullmatch(last):
        name, split = head, last
    if ":" in name:
        name, config = name.split(":", 1)
    if not name or config == "":
        raise DataError(f"{spec}: expected hf:NAME[:CONFIG][/SPLIT]")
    return name, config, split


def open_hf_dataset(name: str, config: str | None, split: str, spec: str):
    """A Hugging Face dataset split (downloaded and cached by `datasets` itself, in its own cache); its
    errors (not found, no such split, offline, ...) become one-line DataErrors that start with `spec`."""
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError(f"{spec}: needs the datasets package: pip install 'alignlab[hf]'") from e
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise DataError(f"{spec}: {type(e).__name__}: {lines[0] if lines else ''}") from e


def load_hf(name: str, config: str | None = None, split: str = "train", column: str = "text") -> Corpus:
    """One document per row of a Hugging Face dataset's text column."""
    spec = f"hf:{name}" + (f":{config}" if config else "") + f"/{split}"
    dataset = open_hf_dataset(name, config, split, spec)
    if column not in dataset.column_names:
        raise DataError(
            f"{spec}: no column {column!r} (it has {', '.join(dataset.column_names)}); "
            f'choose one with {{"hf": {name!r}, "column": ...}}'
        )
    documents = list(dataset[column])
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise DataError(f"{spec}: row {i}, column {column!r} is {type(doc).__name__}, not text")
    return Corpus(spec.removeprefix("hf:"), spec, documents)
