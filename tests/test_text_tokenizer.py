"""What every Tokenizer shares (tokenizer.py): decoding ids outside the vocabulary, and the
helpers the implementations have in common."""

import pytest
import torch

from alignlab.text import CharTokenizer, HFTokenizer, train_bpe
from alignlab.text import tokenizer as base

TEXT = "héllo wörld, hello world! 你好 " * 10


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    bpe = train_bpe(TEXT, 300, progress=False)
    d = tmp_path_factory.mktemp("bpe")
    bpe.save(d)
    char = CharTokenizer.from_text(TEXT, eos_token="<|endoftext|>")
    return {"char": char, "bpe": bpe, "hf": HFTokenizer.load(d)}


@pytest.mark.parametrize("kind", ["char", "bpe", "hf"])
def test_decode_skips_ids_outside_the_vocabulary(tokenizers, kind):
    # a model's vocabulary is often padded past the tokenizer's, and labels use -100: such ids
    # are dropped, as the Rust tokenizer does, even in the middle of a multi-byte character
    tok = tokenizers[kind]
    ids = tok.encode("héllo 你好", add_special_tokens=False) + [tok.eos_token_id]
    n = tok.vocab_size
    for cut in range(len(ids) + 1):
        padded = [n + 5, *ids[:cut], n, -100, *ids[cut:], 10**6]
        for skip in (False, True):
            assert tok.decode(padded, skip_special_tokens=skip) == tok.decode(ids, skip_special_tokens=skip)
    assert tok.decode([n, -1]) == ""
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)  # ids straight from a model's output


def test_split_special_longest_first():
    pattern = base.special_tokens_pattern(["<a>", "<a>b"])
    assert base.split_special("x<a>by<a>", pattern) == ["x", "<a>b", "y", "<a>", ""]
    assert base.special_tokens_pattern([]) is None and base.split_special("x<a>", None) == ["x<a>"]


def test_write_json(tmp_path):
    base.write_json(tmp_path / "x.json", {"é": 1})
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == '{\n  "é": 1\n}\n'
    assert base.NO_MAX_LENGTH == int(1e30)
