"""Data for training. So far: pretraining text -> token ids on disk -> random windows.

    from alignlab.data import prepare_pretraining_data
    data = prepare_pretraining_data("tinyshakespeare", tokenizer="char")   # or "bpe", a path, a Tokenizer
    g = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", block_size=256, batch_size=32, generator=g)

One idea per file, in the order the data flows:

    errors.py     the exceptions (one line each, naming the file / URL / field)
    cache.py      where the cache is; atomic writes; sha256 of a file
    download.py   URL + sha256 -> a verified file in the cache
    sources.py    a source spec (paths, globs, URLs, known names, hf:datasets) -> documents
    tokens.py     documents + tokenizer -> tokens.bin (uint16/uint32) + tokens.json, as a memmap
    windows.py    a token array -> (x, y) windows, random (from a torch.Generator) or in order
    pretrain.py   all of it in one cached call; build_tokenizer("char" | "bpe" | path)
"""

from alignlab.data.cache import default_cache_dir
from alignlab.data.download import download
from alignlab.data.errors import ChecksumError, DataError, DataNotFoundError, DownloadError, MissingDependencyError
from alignlab.data.pretrain import PretrainData, build_tokenizer, prepare_pretraining_data
from alignlab.data.sources import KNOWN_SOURCES, Corpus, load_corpus
from alignlab.data.tokens import open_tokens, token_dtype, tokenize_to_file
from alignlab.data.windows import random_windows, sequential_windows

__all__ = [
    "KNOWN_SOURCES",
    "ChecksumError",
    "Corpus",
    "DataError",
    "DataNotFoundError",
    "DownloadError",
    "MissingDependencyError",
    "PretrainData",
    "build_tokenizer",
    "default_cache_dir",
    "download",
    "load_corpus",
    "open_tokens",
    "prepare_pretraining_data",
    "random_windows",
    "sequential_windows",
    "token_dtype",
    "tokenize_to_file",
]
