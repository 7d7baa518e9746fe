"""Pretraining data in one call: a source and a tokenizer -> train/val token arrays, cached.

    data = prepare_pretraining_data("tinyshakespeare", tokenizer="char")
    x, y = data.get_batch("train", block_size=256, batch_size=32, generator=g)

1. Read the source (sources.py): files, a glob, a URL + sha256, a known name, a HF dataset.
2. Get the tokenizer (`build_tokenizer`): "char" (one id per character of this text), "bpe"
   (byte-level BPE with `vocab_size` ids, trained on this text), a saved tokenizer's directory,
   or a Tokenizer object.
3. Tokenize into a memory-mapped array on disk (tokens.py) and split it: the first
   `1 - val_fraction` of the tokens train, the rest validate (nanoGPT: 90% / 10%). The split is
   contiguous -- one cut, no shuffling -- so validation text is text the model never saw, not
   sentences interleaved with training ones; with a single file it is the end of the file.

Everything is cached under `<cache>/tokens/<source>.<tokenizer>/` (cache.py says where <cache> is):

    tokens.bin  tokens.json     the ids and their sidecar (counts, dtype, fingerprints)
    tokenizer/                  the tokenizer built for "char" / "bpe", in its saved form

A second call with the same source and tokenizer only reads the source (to fingerprint it) and
opens the memmap. If the source's contents or the tokenizer changed, the fingerprints in the
sidecar no longer match and the entry is rebuilt in place. Delete the directory to force it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignlab.data.cache import default_cache_dir
from alignlab.data.errors import DataError
from alignlab.data.sources import Corpus, load_corpus
from alignlab.data.tokens import BLANK_LINE, meta_path, open_tokens, read_meta, tokenize_to_file, tokenizer_fingerprint
from alignlab.data.windows import random_windows
from alignlab.text import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer, train_bpe
from alignlab.text.bpe import DEFAULT_SPECIAL_TOKENS

BUILT_KINDS = ("char", "bpe")  # tokenizers made from the corpus itself


def build_tokenizer(
    kind: str | Path | Tokenizer, text: str | list[str] = "", vocab_size: int = 4096, progress: bool = True
) -> Tokenizer:
    """A tokenizer for pretraining on `text` (a string, or a list of documents).

    - "char": CharTokenizer.from_text -- the sorted characters of the text (plus "\\n" when there
      are several documents: the blank line that separates them). No special tokens.
    - "bpe": train_bpe(text, vocab_size) -- byte-level BPE with alignlab's default special tokens
      (<|endoftext|> is eos, and separates documents, which are trained on separately).
    - a path: the tokenizer saved there (`alignlab.text.load_tokenizer`), `text` unused.
    - a Tokenizer: itself.
    """
    if isinstance(kind, Tokenizer):
        return kind
    documents = [text] if isinstance(text, str) else list(text)
    if kind == "char":
        return CharTokenizer.from_text(BLANK_LINE.join(documents))
    if kind == "bpe":
        # special tokens are cut out before training, so joining by eos keeps documents apart
        return train_bpe(DEFAULT_SPECIAL_TOKENS[0].join(documents), vocab_size, progress=progress)
    if isinstance(kind, (str, Path)) and Path(kind).exists():
        return load_tokenizer(kind)
    raise DataError(
        f"tokenizer: expected {' or '.join(map(repr, BUILT_KINDS))}, a tokenizer directory or a "
        f"Tokenizer, got {str(kind)!r} (no such path)"
    )


@dataclass
class PretrainData:
    """Token ids of a corpus, split for training. `train` and `val` are read-only views of one
    memory-mapped array (`tokens`); `meta` is its sidecar (see tokens.py)."""

    tokenizer: Tokenizer
    tokens: np.ndarray
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]
    name: str
    directory: Path
    reused: bool

    def get_batch(
        self,
        split: str,
        block_size: int,
        batch_size: int,
        generator: torch.Generator,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`random_windows` on the "train" or "val" split: (x, y) int64 [batch_size, block_size]."""
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        data = self.train if split == "train" else self.val
        return random_windows(data, block_size, batch_size, generator, device, name=f"{split} split of {self.name}")

    def summary(self) -> str:
        m = self.meta
        docs = f"{m['documents']:,} document{'s' if m['documents'] != 1 else ''}"
        unknown = f"{m['unknown']:,} unknown" + (
            f" ({', '.join(f'{c!r} x{n}' for c, n in list(m['unknown_characters'].items())[:5])})"
            if m["unknown_characters"]
            else ""
        )
        return (
            f"{self.name}: {docs}, {m['characters']:,} characters -> {m['count']:,} tokens "
            f"(vocab {m['vocab_size']:,}, {m['dtype']}, {unknown}); "
            f"train {len(self.train):,} / val {len(self.val):,} tokens; "
            f"{'reused' if self.reused else 'tokenized in ' + format(m['seconds'], '.1f') + ' s'}: {self.directory}"
        )


def prepare_pretraining_data(
    source: Any,
    tokenizer: str | Path | Tokenizer = "char",
    vocab_size: int = 4096,
    val_fraction: float = 0.1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> PretrainData:
    """Load `source`, get the tokenizer, tokenize (or reuse the cache) and split; see the module
    docstring. `vocab_size` is for tokenizer="bpe" only. Prints `summary()` when `verbose`."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    corpus = load_corpus(source, cache_dir, progress)
    built = isinstance(tokenizer, str) and tokenizer in BUILT_KINDS
    directory = default_cache_dir(cache_dir) / "tokens" / f"{corpus.slug}.{_tokenizer_slug(tokenizer, vocab_size)}"
    bin_path, tok_dir = directory / "tokens.bin", directory / "tokenizer"

    tok, meta = _reuse(corpus, tokenizer, bin_path, tok_dir, built)
    reused = meta is not None
    if not reused:
        meta_path(bin_path).unlink(missing_ok=True)  # the old entry is invalid from here on
        if built or tok is None:
            tok = build_tokenizer(tokenizer, corpus.documents, vocab_size, progress)
        if built:
            _save_tokenizer(tok, tok_dir)
        meta = tokenize_to_file(corpus.documents, tok, bin_path, corpus.fingerprint, progress)

    tokens = open_tokens(bin_path)
    n_train = int(len(tokens) * (1 - val_fraction))
    data = PretrainData(tok, tokens, tokens[:n_train], tokens[n_train:], meta, corpus.name, directory, reused)
    if verbose:
        print(data.summary())
    return data


def _tokenizer_slug(tokenizer: str | Path | Tokenizer, vocab_size: int) -> str:
    """The tokenizer's part of a cache entry's name: "char", "bpe4096", "<dir>-<hash of its path>"."""
    if isinstance(tokenizer, Tokenizer):
        return f"{type(tokenizer).__name__}-{tokenizer_fingerprint(tokenizer)[:8]}"
    if tokenizer == "bpe":
        return f"bpe{vocab_size}"
    if tokenizer == "char":
        return "char"
    path = Path(tokenizer).resolve()
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _reuse(
    corpus: Corpus, tokenizer: Any, bin_path: Path, tok_dir: Path, built: bool
) -> tuple[Tokenizer | None, dict | None]:
    """The cached tokenizer and sidecar if the entry matches this source and tokenizer, else (tok?, None)."""
    if built:  # the tokenizer is a function of the corpus: the saved one is valid if the source is
        meta = read_meta(bin_path, expect={"source": corpus.fingerprint})
        if meta is None or not tok_dir.is_dir():
            return None, None
        try:
            tok = BPETokenizer.load(tok_dir) if tokenizer == "bpe" else CharTokenizer.load(tok_dir)
        except (OSError, ValueError, KeyError):
            return None, None
        return (tok, meta) if tokenizer_fingerprint(tok) == meta["tokenizer"] else (None, None)
    tok = build_tokenizer(tokenizer)
    expect = {"source": corpus.fingerprint, "tokenizer": tokenizer_fingerprint(tok)}
    return tok, read_meta(bin_path, expect=expect)


def _save_tokenizer(tok: Tokenizer, tok_dir: Path) -> None:
    """Save into a fresh directory, then swap it in for the old one."""
    tok_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tok_dir.parent, prefix=".tokenizer."))
    try:
        tok.save(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        shutil.rmtree(tok_dir, ignore_errors=True)
        tmp.rename(tok_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
