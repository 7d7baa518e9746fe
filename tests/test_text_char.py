"""CharTokenizer: vocabulary from text, round-trips, special tokens, save/load."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignlab.text import CharTokenizer, Tokenizer, load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. ÄÖ 你好"


def test_vocab_is_sorted_unique_chars():
    tok = CharTokenizer.from_text(TEXT)
    assert isinstance(tok, Tokenizer)
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.vocab_size == len(set(TEXT)) == len(tok)
    assert tok.encode("\n") == [0]  # "\n" sorts first
    assert tok.bos_token_id is tok.eos_token_id is tok.pad_token_id is None
    assert tok.eos_token_ids == [] and tok.chat_template is None


@given(st.text(alphabet=sorted(set(TEXT))))
def test_roundtrip(s):
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(s)
    assert len(ids) == len(s) and tok.decode(ids) == s


def test_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    tok = CharTokenizer.from_text("abc", unk_token="<unk>")
    assert tok.encode("abz") == [0, 1, tok.unk_token_id]


def test_special_tokens_whole():
    tok = CharTokenizer.from_text(
        TEXT, special_tokens=["<|im_start|>", "<|im_end|>"], eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    n = len(set(TEXT))
    assert tok.vocab_size == n + 4
    assert tok.token_to_id("<|im_start|>") == n and tok.eos_token_id == n + 2 and tok.pad_token_id == n + 3
    s = "<|im_start|>All:<|im_end|>\n<|endoftext|>"
    ids = tok.encode(s)
    assert ids[0] == n and ids[-1] == n + 2 and len(ids) == 1 + 4 + 1 + 1 + 1
    assert tok.decode(ids) == s
    assert tok.decode(ids, skip_special_tokens=True) == "All:\n"
    assert set(tok.eos_token_ids) == {n + 1, n + 2}  # eos and <|im_end|>
    assert tok.id_to_token(n) == "<|im_start|>" and tok.id_to_token(10_000) is None


def test_bos_added_when_set():
    tok = CharTokenizer.from_text("ab", bos_token="<s>")
    assert tok.encode("ab") == [2, 0, 1]
    assert tok.encode("ab", add_special_tokens=False) == [0, 1]


def test_save_load(tmp_path):
    tok = CharTokenizer.from_text(
        TEXT, eos_token="<|endoftext|>", chat_template="chatml", model_max_length=256
    )
    tok.save(tmp_path)
    config = json.loads((tmp_path / "char_tokenizer.json").read_text(encoding="utf-8"))
    assert config["type"] == "char" and config["eos_token"] == "<|endoftext|>"
    for again in (CharTokenizer.load(tmp_path), load_tokenizer(tmp_path)):
        assert isinstance(again, CharTokenizer)
        assert again.itos == tok.itos and again.eos_token_id == tok.eos_token_id
        assert again.encode(TEXT) == tok.encode(TEXT)
        assert again.chat_template == tok.chat_template and again.model_max_length == 256


def test_chat_template_on_char_tokenizer():
    tok = CharTokenizer.from_text(TEXT + "userasint", special_tokens=["<|im_start|>", "<|im_end|>"])
    messages = [{"role": "user", "content": "Speak"}, {"role": "assistant", "content": "hear me"}]
    text = tok.apply_chat_template(messages, chat_template="chatml")
    assert text == "<|im_start|>user\nSpeak<|im_end|>\n<|im_start|>assistant\nhear me<|im_end|>\n"
    assert tok.decode(tok.apply_chat_template(messages, chat_template="chatml", tokenize=True)) == text
