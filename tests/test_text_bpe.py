"""Byte-level BPE: training (against a naive reference), round-trips, special tokens, and parity
with the `tokenizers` library / transformers on the saved Hugging Face layout."""

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.text import BPETokenizer, HFTokenizer, get_chat_template, load_tokenizer, train_bpe
from alignlab.text.bpe import DEFAULT_SPECIAL_TOKENS, GPT2_PATTERN, bytes_to_unicode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPECIALS = list(DEFAULT_SPECIAL_TOKENS)

# a few KB of varied text: English, numbers, code-ish punctuation, whitespace runs, other scripts
CORPUS = "".join(
    f"Line {i}: The quick brown fox jumps over the lazy dog, isn't it? It's {i * 37 % 1000} o'clock.\n"
    f"    def f(x): return x ** {i % 7}  # comment\n\n"
    f"Über naïve café — {'你好世界' if i % 3 == 0 else 'привет мир'} ½ ٣ 😀\t<|endoftext|>"
    for i in range(60)
)

texts = st.text()
texts_with_specials = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIALS)), max_size=12).map(
    "".join
)
prop = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, 400, progress=False)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe")
    tok.save(directory)
    return directory


def naive_train(text, vocab_size, specials):
    """Reference trainer: recount every pair from scratch at every step (slow, obviously right)."""
    words = Counter()
    for chunk in regex.split("|".join(regex.escape(s) for s in specials), text):
        words.update(regex.findall(GPT2_PATTERN, chunk))
    seqs = {w: list(w.encode()) for w in words}
    vocab = [bytes([b]) for b in range(256)]
    merges = []
    while len(vocab) < vocab_size - len(specials):
        counts = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        if not counts:
            break
        (a, b), _ = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        new = vocab[a] + vocab[b]
        if new not in vocab:
            vocab.append(new)
        merges.append((vocab[a], vocab[b]))
        new_id = vocab.index(new)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == (a, b):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return vocab, merges


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"


def test_train_sizes_and_layout(tok):
    assert tok.vocab_size == 400
    assert len(tok.vocab) == 400 - len(SPECIALS)
    assert tok.vocab[:256] == [bytes([b]) for b in range(256)]
    assert len(set(tok.vocab)) == len(tok.vocab)
    assert tok.eos_token_id == tok.token_to_id("<|endoftext|>") == len(tok.vocab)
    assert tok.pad_token_id == tok.token_to_id("<|pad|>")
    assert tok.bos_token_id is None
    # stop ids: eos and the chat end-of-turn token
    assert set(tok.eos_token_ids) == {tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")}


def test_incremental_training_matches_naive_recount(tok):
    vocab, merges = naive_train(CORPUS, 400, SPECIALS)
    assert tok.merges == merges
    assert tok.vocab == vocab


def test_training_is_deterministic(tok):
    assert train_bpe(CORPUS, 400, progress=False).merges == tok.merges


def test_special_tokens_not_learned(tok):
    # "<|endoftext|>" is in the corpus 60 times but never part of a learned token
    assert not any(b"<|" in t and b"|>" in t for t in tok.vocab)


def test_compresses(tok):
    ids = tok.encode(CORPUS)
    assert len(ids) < len(CORPUS.encode()) / 2


def test_special_tokens_kept_whole(tok):
    s = "<|im_start|>user\nhi<|im_end|><|im_end|>x<|endoftext|>"
    ids = tok.encode(s)
    start, end, eot = (tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert ids[0] == start and ids.count(end) == 2 and ids[-1] == eot
    assert tok.decode(ids) == s
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhix"
    # a broken special token is plain text
    assert end not in tok.encode("<|im_end|")


@prop
@given(texts)
def test_roundtrip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@prop
@given(texts_with_specials)
def test_roundtrip_with_special_tokens(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    n_special = sum(i >= len(tok.vocab) for i in ids)
    assert n_special == len(regex.findall("|".join(regex.escape(t) for t in SPECIALS), s))


def test_saved_files(tok, saved):
    assert {p.name for p in saved.iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["pad_token"] == "<|pad|>"
    assert config["add_bos_token"] is False and "model_max_length" in config
    tj = json.loads((saved / "tokenizer.json").read_text())
    assert tj["pre_tokenizer"]["type"] == "ByteLevel" and tj["pre_tokenizer"]["use_regex"] is True
    assert len(tj["model"]["vocab"]) == len(tok.vocab) and len(tj["model"]["merges"]) == len(tok.merges)
    assert [t["content"] for t in tj["added_tokens"]] == SPECIALS
    smap = json.loads((saved / "special_tokens_map.json").read_text())
    assert smap["eos_token"] == "<|endoftext|>" and "<|im_end|>" in smap["additional_special_tokens"]


def test_load_back(tok, saved):
    again = BPETokenizer.load(saved)
    assert again.merges == tok.merges and again.vocab == tok.vocab
    via = load_tokenizer(saved)
    assert isinstance(via, HFTokenizer)
    assert via.vocab_size == tok.vocab_size
    assert (via.eos_token_id, via.pad_token_id, via.bos_token_id) == (
        tok.eos_token_id,
        tok.pad_token_id,
        None,
    )
    assert via.encode(CORPUS) == tok.encode(CORPUS)


@prop
@given(texts_with_specials)
def test_same_ids_as_tokenizers_library(tok, saved, s):
    from tokenizers import Tokenizer

    rust = _cached(("rust", saved), lambda: Tokenizer.from_file(str(saved / "tokenizer.json")))
    ids = tok.encode(s)
    assert rust.encode(s).ids == ids
    assert rust.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    assert rust.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_decode_partial_utf8_like_tokenizers(tok, saved):
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(saved / "tokenizer.json"))
    ids = tok.encode("😀 naïve 你好 <|im_end|>é")
    for i in range(len(ids)):  # every single id, and every prefix: fragments of characters
        assert tok.decode([ids[i]]) == rust.decode([ids[i]], skip_special_tokens=False)
        assert tok.decode(ids[:i]) == rust.decode(ids[:i], skip_special_tokens=False)


def test_decode_drops_skipped_and_unknown_ids_like_tokenizers(tok, saved):
    # a skipped special token or an id past the vocabulary is dropped without cutting the bytes
    # around it: the halves of a split character still decode to that character
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(saved / "tokenizer.json"))
    ids = tok.encode("😀 naïve 你好 é", add_special_tokens=False)
    for i in range(len(ids) + 1):
        for extra in ([tok.eos_token_id], [tok.vocab_size], [tok.vocab_size + 9, tok.pad_token_id]):
            mixed = [*ids[:i], *extra, *ids[i:]]
            for skip in (False, True):
                assert tok.decode(mixed, skip) == rust.decode(mixed, skip_special_tokens=skip), (mixed, skip)


@prop
@given(texts_with_specials)
def test_same_ids_as_transformers(tok, saved, s):
    auto = _cached(("auto", saved), lambda: _auto(saved))
    ids = tok.encode(s)
    assert auto.encode(s) == ids
    assert auto.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)
    assert auto.decode(ids) == tok.decode(ids)
    assert auto.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_transformers_sees_the_config(tok, saved):
    auto = _auto(saved)
    assert len(auto) == tok.vocab_size
    assert (auto.eos_token, auto.pad_token, auto.bos_token) == ("<|endoftext|>", "<|pad|>", None)
    assert (auto.eos_token_id, auto.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_bos_and_chat_template_saved(tmp_path):
    tok = train_bpe(
        CORPUS, 320, bos_token="<|begin_of_text|>", add_bos_token=True, chat_template="chatml",
        model_max_length=512, progress=False,
    )  # fmt: skip
    assert tok.encode("hi")[0] == tok.bos_token_id
    assert tok.encode("hi", add_special_tokens=False)[0] != tok.bos_token_id
    tok.save(tmp_path)
    auto, hf = _auto(tmp_path), load_tokenizer(tmp_path)
    for add in (True, False):
        assert auto.encode("hello world", add_special_tokens=add) == tok.encode("hello world", add)
        assert hf.encode("hello world", add_special_tokens=add) == tok.encode("hello world", add)
    assert auto.model_max_length == hf.model_max_length == 512
    assert auto.chat_template == hf.chat_template == tok.chat_template == get_chat_template("chatml")
    assert BPETokenizer.load(tmp_path).encode("hi") == tok.encode("hi")


@pytest.mark.shared_data(DATA / "tinyshakespeare" / "input.txt")
def test_tinyshakespeare_small():
    path = DATA / "tinyshakespeare" / "input.txt"
    text = path.read_text()[:100_000]
    tok = train_bpe(text, 512, progress=False)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text.encode()) / len(ids) > 1.8  # bytes per token (~2.0 at 512 tokens)


@pytest.mark.slow
@pytest.mark.shared_data(DATA / "tinyshakespeare" / "input.txt")
def test_tinyshakespeare_4096_under_a_minute(tmp_path):
    path = DATA / "tinyshakespeare" / "input.txt"
    text = path.read_text()
    t0 = time.perf_counter()
    tok = train_bpe(text, 4096, progress=False)
    seconds = time.perf_counter() - t0
    print(f"trained 4096 tokens on {len(text.encode()) / 1e6:.2f} MB in {seconds:.1f}s")
    assert seconds < 60 and tok.vocab_size == 4096
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == ids


_cache = {}


def _cached(key, make):
    # hypothesis runs a test body many times; build its oracle once
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def _auto(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
