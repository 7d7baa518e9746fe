"""The one tokenizer interface the rest of alignlab talks to.

Three implementations follow it: `CharTokenizer` (char.py, for toy models), `BPETokenizer`
(bpe.py, our own byte-level BPE) and `HFTokenizer` (hf_tokenizer.py, any Hugging Face
`tokenizer.json`). Subclasses supply the few primitives (encode, decode, token<->id, save);
everything built on top of them -- special-token ids, the stop ids for generation and chat
templating -- lives here once, so all three behave the same way.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from alignlab.errors import UserError
from alignlab.text.template import END_OF_TURN_TOKENS, get_chat_template, render_template

NO_MAX_LENGTH = int(1e30)  # what Hugging Face configs write for "no model_max_length"


class TokenizerNotFoundError(UserError, FileNotFoundError):
    """A tokenizer path that holds no tokenizer file."""

# The named special tokens a chat template gets as variables (same names as in transformers).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class Tokenizer(ABC):
    """text <-> ids, plus the special tokens and chat template that go with a vocabulary.

    Subclasses set the token strings (`bos_token`, `eos_token`, `pad_token`, `unk_token`, any of
    them may be None), `chat_template`, `model_max_length` and `extra_eos_tokens`, and implement
    the abstract methods below.

    `decode` skips ids outside the vocabulary (negative, or >= vocab_size: a model's embedding is
    often padded past the tokenizer's vocabulary), as the Rust `tokenizers` library does.
    """

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    _chat_template: str | dict[str, str] | None = None
    model_max_length: int | None = None
    add_bos_token: bool = False  # whether encode(..., add_special_tokens=True) starts with bos
    extra_eos_tokens: tuple[str, ...] = ()  # more tokens that stop generation, from the config

    # --- primitives every tokenizer implements ---

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text to ids. `add_special_tokens` adds bos/eos if this tokenizer is configured to."""

    @abstractmethod
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Ids to text, optionally dropping special tokens. Ids outside the vocabulary are skipped."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of a whole token string (e.g. "<|im_end|>"), or None if not in the vocabulary."""

    @abstractmethod
    def id_to_token(self, id: int) -> str | None:
        """The vocabulary entry for an id, or None."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer to a directory that `alignlab.text.load_tokenizer` reads back."""

    # --- derived from the primitives ---

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def chat_template(self) -> str | dict[str, str] | None:
        """The jinja chat template, or several by name ({"default": ..., "tool_use": ...})."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: str | dict[str, str] | None) -> None:
        # a built-in name ("chatml") is stored as its text, so that `save` writes the template
        self._chat_template = get_chat_template(template) if isinstance(template, str) else template

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def padding_id(self) -> int:
        """The id batches are right-padded with: the pad token, else the first id that ends generation, else 0
        (padding is masked out of attention and labels, so any id serves)."""
        return self.pad_token_id if self.pad_token_id is not None else (self.eos_token_ids or [0])[0]

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: eos, the end-of-turn tokens present, and `extra_eos_tokens`."""
        ids: list[int] = []
        for token in (self.eos_token, *END_OF_TURN_TOKENS, *self.extra_eos_tokens):
            i = self._id(token)
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, e.g. {"eos_token": "<|endoftext|>"}."""
        return {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES if getattr(self, name, None)}

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation with the chat template, like transformers' method of the same name.

        `chat_template` overrides the tokenizer's own template: a jinja string, or a name (one of
        the tokenizer's named templates, else a built-in such as "chatml"; see
        `get_chat_template`). Extra kwargs (e.g. `enable_thinking=False`) become template
        variables. With `tokenize=True` the rendered text is encoded without adding bos/eos (the
        template writes its own special tokens).
        """
        template = get_chat_template(chat_template, tools, self.chat_template)
        text = render_template(
            template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


# ----------------------------------------------------------------------------------------------
# Helpers the implementations share


def special_tokens_pattern(special_tokens: list[str]) -> re.Pattern | None:
    """A regex matching any of the special tokens, for `split_special` (None if there are none)."""
    if not special_tokens:
        return None
    # longest first, so that when one special token is a prefix of another the longer one wins
    alternatives = "|".join(re.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
    return re.compile(f"({alternatives})")


def split_special(text: str, pattern: re.Pattern | None) -> list[str]:
    """[text, special, text, special, ..., text]: special tokens at the odd positions."""
    return pattern.split(text) if pattern is not None else [text]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
