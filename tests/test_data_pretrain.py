"""Pretraining data: token files (dtype, round trip, chunked = whole encoding), the cache (reuse
and invalidation), the train/val split, and windows (shift by one, determinism from the generator)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlab.data import (
    DataError,
    DataNotFoundError,
    build_tokenizer,
    open_tokens,
    prepare_pretraining_data,
    random_windows,
    sequential_windows,
    token_dtype,
    tokenize_to_file,
)
from alignlab.data.tokens import chunks
from alignlab.text import CharTokenizer, HFTokenizer, Tokenizer, load_tokenizer, train_bpe

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_shakespeare = pytest.mark.shared_data(SHAKESPEARE)  # skipped where missing, failed under CI (conftest.py)

DOCS = ["First document.\nIt has two lines.\n", "Second: ünïcode 😀 and\n\n a blank line.", "third"]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_bytes().decode("utf-8")


# ----------------------------------------------------------------------------------------------
# token files


def test_token_dtype():
    assert token_dtype(65) == np.uint16 and token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32 and token_dtype(151_936) == np.uint32


def test_token_file_round_trip_and_separators(tmp_path):
    char = build_tokenizer("char", DOCS)
    meta = tokenize_to_file(DOCS, char, tmp_path / "char.bin", source_fingerprint="abc", progress=False)
    ids = open_tokens(tmp_path / "char.bin")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and not ids.flags.writeable
    assert (tmp_path / "char.bin").stat().st_size == 2 * len(ids) == 2 * meta["count"]
    assert char.decode(ids.tolist()) == "\n\n".join(DOCS)  # no eos: documents joined by a blank line
    assert meta["separator"] == "\n\n" and meta["documents"] == 3 and meta["source"] == "abc"
    assert meta["characters"] == sum(map(len, DOCS)) and meta["unknown"] == 0 and meta["vocab_size"] == len(char)

    bpe = build_tokenizer("bpe", DOCS, vocab_size=300, progress=False)
    meta = tokenize_to_file(DOCS, bpe, tmp_path / "bpe.bin", progress=False)
    ids = open_tokens(tmp_path / "bpe.bin").tolist()
    assert meta["separator"] == "<|endoftext|>" and ids.count(bpe.eos_token_id) == 2
    assert bpe.decode(ids) == "<|endoftext|>".join(DOCS)

    with pytest.raises(DataError) as e:
        tokenize_to_file(["", ""], char, tmp_path / "empty.bin", progress=False)
    assert "no text" in str(e.value) and not (tmp_path / "empty.bin").exists()
    with pytest.raises(DataNotFoundError):
        open_tokens(tmp_path / "absent.bin")


def test_unknown_characters_are_an_error_or_counted(tmp_path):
    strict = CharTokenizer("abc ")
    with pytest.raises(DataError) as e:
        tokenize_to_file(["abc dd é"], strict, tmp_path / "x.bin", progress=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith("3 characters (2 distinct) are not in the char tokenizer's")
    assert "'d' x2, 'é' x1" in message and not (tmp_path / "x.bin").exists()

    lenient = CharTokenizer("abc ", unk_token="<unk>")
    meta = tokenize_to_file(["abc dd é <unk>"], lenient, tmp_path / "x.bin", progress=False)
    assert meta["unknown_characters"] == {"d": 2, "é": 1}  # '<unk>' itself is a token, not 5 characters
    assert meta["unknown"] == 4 and meta["count"] == 10  # 3 stand-ins plus the literal <unk>


def test_chunked_encoding_equals_whole(shakespeare_or_corpus, tmp_path):
    text = shakespeare_or_corpus
    pieces = list(chunks(text, 5_000))
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(p[-1] == "\n" and not p[-2].isspace() and not q[0].isspace() for p, q in zip(pieces, pieces[1:]))

    bpe = train_bpe(text, 512, progress=False)
    bpe.save(tmp_path / "tok")
    rust = load_tokenizer(tmp_path / "tok")
    assert isinstance(rust, HFTokenizer)  # goes through the exactness probe, not the known-exact list
    for tok in (bpe, rust, CharTokenizer.from_text(text)):
        tokenize_to_file([text], tok, tmp_path / "t.bin", progress=False, chunk_chars=5_000)
        assert open_tokens(tmp_path / "t.bin").tolist() == tok.encode(text, add_special_tokens=False)


class PrefixTokenizer(Tokenizer):
    """Marks the start of every text it encodes (as SentencePiece's prefix space does): cutting
    a text into chunks would change its ids, so it must be encoded whole."""

    def __init__(self, text: str):
        self.char = CharTokenizer.from_text(text)

    def encode(self, text, add_special_tokens=True):
        return [self.char.vocab_size] + self.char.encode(text, add_special_tokens)

    def decode(self, ids, skip_special_tokens=False):
        return self.char.decode(ids)

    @property
    def vocab_size(self):
        return self.char.vocab_size + 1

    def token_to_id(self, token):
        return self.char.token_to_id(token)

    def id_to_token(self, id):
        return self.char.id_to_token(id)

    def save(self, directory):
        self.char.save(directory)


def test_a_tokenizer_that_cannot_be_cut_encodes_whole_documents(shakespeare_or_corpus, tmp_path):
    text = shakespeare_or_corpus[:50_000]
    tok = PrefixTokenizer(text)
    tokenize_to_file([text, text[:100]], tok, tmp_path / "t.bin", progress=False, chunk_chars=1_000)
    ids = open_tokens(tmp_path / "t.bin").tolist()
    assert ids == tok.encode(text) + tok.encode("\n\n") + tok.encode(text[:100])


@pytest.fixture(scope="module")
def shakespeare_or_corpus() -> str:
    """200 KB of tinyshakespeare, or of made-up text if it is absent (the test does not need it)."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_bytes().decode("utf-8")[:200_000]
    return "".join(f"Speaker {i}:\nLine {i}, it's {i * 7} o'clock.\n\n  indented\n" for i in range(4000))


# ----------------------------------------------------------------------------------------------
# prepare_pretraining_data: tinyshakespeare, the split, the cache


@needs_shakespeare
def test_tinyshakespeare_char_round_trip_and_split(shakespeare, tmp_path, capsys):
    data = prepare_pretraining_data(str(SHAKESPEARE), "char", cache_dir=tmp_path, progress=False)
    assert isinstance(data.tokenizer, CharTokenizer) and len(data.tokenizer) == 65
    assert isinstance(data.tokens, np.memmap) and data.tokens.dtype == np.uint16
    assert data.tokenizer.decode(data.tokens.tolist()) == shakespeare
    # nanoGPT's shakespeare_char numbers: the first 90% train, the last 10% val, contiguous
    assert (len(data.train), len(data.val)) == (1_003_854, 111_540)
    assert np.shares_memory(data.train, data.tokens) and data.val[0] == data.tokens[1_003_854]
    assert data.meta["characters"] == 1_115_394 and data.meta["unknown"] == 0 and not data.reused
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "1,115,394 characters -> 1,115,394 tokens" in out and "train 1,003,854" in out

    x, y = data.get_batch("val", block_size=64, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 64) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert data.tokenizer.decode(x[0].tolist()) in shakespeare[1_003_854:]


def test_splits(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 10, encoding="utf-8")
    sizes = {}
    for fraction in (0.0, 0.1, 0.25, 0.5):
        data = prepare_pretraining_data(
            tmp_path / "a.txt", "char", val_fraction=fraction, cache_dir=tmp_path, verbose=False
        )
        sizes[fraction] = (len(data.train), len(data.val))
        assert np.concatenate([data.train, data.val]).tolist() == data.tokens.tolist()
    assert sizes == {0.0: (100, 0), 0.1: (90, 10), 0.25: (75, 25), 0.5: (50, 50)}
    with pytest.raises(DataError):
        prepare_pretraining_data(tmp_path / "a.txt", val_fraction=1.0, cache_dir=tmp_path)
    with pytest.raises(DataError) as e:
        data.get_batch("test", 4, 2, torch.Generator())
    assert "'train' or 'val'" in str(e.value)


def test_cache_is_reused_and_rebuilt_when_the_source_or_tokenizer_changes(tmp_path):
    src, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    src.write_text("hello world\n" * 50, encoding="utf-8")
    first = prepare_pretraining_data(str(src), "char", cache_dir=cache, verbose=False)
    bin_path = first.directory / "tokens.bin"
    assert first.directory.parent == cache / "tokens" and (first.directory / "tokenizer").is_dir()
    os.utime(bin_path, (0, 0))  # a rebuild would give the file a new mtime

    again = prepare_pretraining_data(str(src), "char", cache_dir=cache, verbose=False)
    assert again.reused and again.directory == first.directory and bin_path.stat().st_mtime == 0
    assert again.tokens.tolist() == first.tokens.tolist() and again.tokenizer.chars == first.tokenizer.chars

    src.write_text("hello world!\n" * 50, encoding="utf-8")  # new contents, same path: rebuilt in place
    changed = prepare_pretraining_data(str(src), "char", cache_dir=cache, verbose=False)
    assert not changed.reused and changed.directory == first.directory and bin_path.stat().st_mtime > 0
    assert "!" in changed.tokenizer.chars and changed.tokenizer.decode(changed.tokens.tolist()) == src.read_text()

    bpe = prepare_pretraining_data(str(src), "bpe", vocab_size=270, cache_dir=cache, verbose=False, progress=False)
    assert not bpe.reused and bpe.directory != first.directory and bpe.directory.name.endswith(".bpe270")
    assert prepare_pretraining_data(str(src), "bpe", vocab_size=270, cache_dir=cache, verbose=False).reused

    # a tokenizer given as a directory: rebuilt when the tokenizer there changes
    CharTokenizer.from_text("helo wrd!\n").save(tmp_path / "tok")
    saved = prepare_pretraining_data(str(src), tmp_path / "tok", cache_dir=cache, verbose=False)
    assert (
        not saved.reused and prepare_pretraining_data(str(src), tmp_path / "tok", cache_dir=cache, verbose=False).reused
    )
    saved_ids = saved.tokens.tolist()
    CharTokenizer.from_text("helo wrd!\n\t").save(tmp_path / "tok")  # "\t" sorts first: every id shifts by one
    resaved = prepare_pretraining_data(str(src), tmp_path / "tok", cache_dir=cache, verbose=False)
    assert not resaved.reused and resaved.directory == saved.directory
    assert resaved.tokens.tolist() == [i + 1 for i in saved_ids]
    assert resaved.tokenizer.decode(resaved.tokens.tolist()) == src.read_text()

    # a damaged entry (truncated ids, a sidecar that is not ours) is rebuilt, not trusted
    with open(bin_path, "r+b") as f:
        f.truncate(10)
    assert not prepare_pretraining_data(str(src), "char", cache_dir=cache, verbose=False).reused
    for junk in ("[1, 2]", '{"format": "alignlab-tokens/1"}', "not json"):
        (first.directory / "tokens.json").write_text(junk, encoding="utf-8")
        assert not prepare_pretraining_data(str(src), "char", cache_dir=cache, verbose=False).reused


def test_prepare_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        prepare_pretraining_data(str(tmp_path / "missing.txt"), cache_dir=tmp_path)
    assert str(e.value) == f"data file not found: {tmp_path / 'missing.txt'}"
    (tmp_path / "a.txt").write_text("abc", encoding="utf-8")
    with pytest.raises(DataError) as e:
        prepare_pretraining_data(tmp_path / "a.txt", tokenizer="sentencepiece", cache_dir=tmp_path)
    assert str(e.value).startswith("tokenizer: expected 'char' or 'bpe', a tokenizer directory or a Tokenizer")


def test_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "env_cache"))
    (tmp_path / "a.txt").write_text("abcabc", encoding="utf-8")
    data = prepare_pretraining_data(tmp_path / "a.txt", verbose=False)
    assert data.directory.parent == tmp_path / "env_cache" / "tokens"


# ----------------------------------------------------------------------------------------------
# windows


def test_windows_are_shifted_slices_of_the_data():
    data = np.arange(1000, dtype=np.uint16)
    x, y = random_windows(data, block_size=16, batch_size=8, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # consecutive ids: each row is a slice, y one ahead of x
    assert x.is_contiguous() and y.is_contiguous()
    # every start is reachable, including the last one (len - block_size - 1)
    x, y = random_windows(np.arange(18), block_size=16, batch_size=64, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1} and y[:, -1].max() == 17


def test_windows_depend_only_on_the_generator():
    data = np.random.default_rng(0).integers(0, 500, 10_000).astype(np.uint16)
    g = torch.Generator().manual_seed(1234)
    random_windows(data, 32, 4, g)  # some training steps
    state = g.get_state()  # ... checkpoint
    torch.manual_seed(999)  # other randomness in between must not matter
    first = [random_windows(data, 32, 4, g) for _ in range(3)]
    np.random.seed(7)
    torch.rand(10)
    g.set_state(state)  # ... resume
    second = [random_windows(data, 32, 4, g) for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    restored = torch.Generator()
    restored.set_state(state)  # a fresh generator from the saved state: the same batches
    assert torch.equal(random_windows(data, 32, 4, restored)[0], first[0][0])
    assert not torch.equal(first[0][0], first[1][0])


def test_too_short_split_is_a_clear_error():
    with pytest.raises(DataError) as e:
        random_windows(np.arange(64), block_size=64, batch_size=2, generator=torch.Generator(), name="val split")
    assert str(e.value).startswith("the val split has 64 tokens, too few for one window of block_size + 1 = 65")
    random_windows(np.arange(65), block_size=64, batch_size=2, generator=torch.Generator())  # exactly enough
    with pytest.raises(DataError):
        next(sequential_windows(np.zeros(0, np.uint16), 8, 2))


def test_sequential_windows_cover_the_split_once():
    data = np.arange(103)
    batches = list(sequential_windows(data, block_size=10, batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    y = torch.cat([y for _, y in batches]).flatten()
    assert y.tolist() == list(range(1, 101))  # every target once, in order; the 2-token tail is left out
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
