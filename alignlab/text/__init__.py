"""Text <-> tokens: tokenizers (char, byte-level BPE, any Hugging Face tokenizer.json) and chat templates.

Typical use: `tok = load_tokenizer(directory)` (whichever kind the directory holds), then
`tok.encode(text)`, `tok.decode(ids)`, `tok.apply_chat_template(messages, add_generation_prompt=True)`.

In the order they import each other:

    template.py       chat templates: built-ins, choosing one, rendering as transformers does, END_OF_TURN_TOKENS
    tokenizer.py      the Tokenizer interface (special tokens, stop ids, apply_chat_template)
    char.py, bpe.py, hf_tokenizer.py    its three implementations
    masks.py          a conversation -> (ids, mask): which tokens chat training learns
"""

from __future__ import annotations

from pathlib import Path

from alignlab.errors import CheckpointError
from alignlab.text.bpe import BPETokenizer, train_bpe
from alignlab.text.char import FILENAME as CHAR_FILENAME
from alignlab.text.char import CharTokenizer
from alignlab.text.hf_tokenizer import HFTokenizer
from alignlab.text.masks import ChatTemplateError, ChatTokens, encode_chat, render_chat
from alignlab.text.template import BUILTIN_TEMPLATES, END_OF_TURN_TOKENS, get_chat_template, render_template
from alignlab.text.tokenizer import Tokenizer, TokenizerNotFoundError

__all__ = [
    "BUILTIN_TEMPLATES",
    "END_OF_TURN_TOKENS",
    "BPETokenizer",
    "CharTokenizer",
    "ChatTemplateError",
    "ChatTokens",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerNotFoundError",
    "encode_chat",
    "get_chat_template",
    "load_tokenizer",
    "render_chat",
    "render_template",
    "train_bpe",
]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved in a directory (or the file itself): tokenizer.json -> HFTokenizer
    (this includes BPE tokenizers trained here), char_tokenizer.json -> CharTokenizer."""
    path = Path(path)
    if path.is_file():
        path, name = path.parent, path.name
        if name == CHAR_FILENAME:
            return CharTokenizer.load(path)
        if name != "tokenizer.json":
            raise CheckpointError(f"{path / name}: not a tokenizer file (want tokenizer.json or {CHAR_FILENAME})")
    if (path / "tokenizer.json").is_file():
        return HFTokenizer.load(path)
    if (path / CHAR_FILENAME).is_file():
        return CharTokenizer.load(path)
    what = "directory has" if path.is_dir() else "directory does not exist, so it has"
    raise TokenizerNotFoundError(f"no tokenizer in {path}: the {what} neither tokenizer.json nor {CHAR_FILENAME}")
