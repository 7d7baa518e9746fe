"""Character-level tokenizer: one id per character, as in nanoGPT's Shakespeare demo.

The vocabulary is the sorted set of characters in a training text, optionally followed by a few
special tokens (e.g. "<|endoftext|>") that are matched as whole strings when encoding. Saved as
one small JSON file, `char_tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.errors import CheckpointError
from alignlab.text.tokenizer import Tokenizer, special_tokens_pattern, split_special, write_json

FILENAME = "char_tokenizer.json"


class CharTokenizer(Tokenizer):
    def __init__(
        self,
        chars: str,
        special_tokens: tuple[str, ...] | list[str] = (),
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ):
        self.chars = chars
        self.special_tokens = list(special_tokens)
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = (
            bos_token,
            eos_token,
            pad_token,
            unk_token,
        )
        for token in (bos_token, eos_token, pad_token, unk_token):  # named specials join the vocabulary
            if token is not None and token not in self.special_tokens:
                self.special_tokens.append(token)
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.add_bos_token = bos_token is not None
        # ids: characters first, then special tokens
        self.itos = list(chars) + self.special_tokens
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        assert len(self.stoi) == len(self.itos), "characters and special tokens must be unique"
        self.special_ids = {self.stoi[t] for t in self.special_tokens}
        self.special_pattern = special_tokens_pattern(self.special_tokens)

    @classmethod
    def from_text(cls, text: str, **kwargs) -> CharTokenizer:
        """Vocabulary = the sorted unique characters of `text`."""
        return cls("".join(sorted(set(text))), **kwargs)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        for i, chunk in enumerate(split_special(text, self.special_pattern)):  # odd chunks: special tokens
            if i % 2 == 1:
                ids.append(self.stoi[chunk])
                continue
            for c in chunk:
                if c in self.stoi:
                    ids.append(self.stoi[c])
                elif self.unk_token is not None:
                    ids.append(self.unk_token_id)
                else:
                    raise ValueError(f"character {c!r} is not in the vocabulary (and no unk_token is set)")
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        n = len(self.itos)  # ids outside the vocabulary are skipped
        ids = map(int, ids)  # a tensor's elements would not be found in special_ids
        return "".join(self.itos[i] for i in ids if 0 <= i < n and not (skip_special_tokens and i in self.special_ids))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def id_to_token(self, id: int) -> str | None:
        return self.itos[id] if 0 <= id < len(self.itos) else None

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "type": "char",
            "chars": self.chars,
            "special_tokens": self.special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "chat_template": self.chat_template,
            "model_max_length": self.model_max_length,
        }
        write_json(directory / FILENAME, config)

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """From a directory holding char_tokenizer.json, or from that file itself."""
        path = Path(path)
        config = json.loads((path / FILENAME if path.is_dir() else path).read_text(encoding="utf-8"))
        if config.pop("type", None) != "char":
            raise CheckpointError(f"{path} is not a char tokenizer file")
        return cls(**config)
