"""Any Hugging Face tokenizer, from its `tokenizer.json`, behind alignlab's Tokenizer interface.

The `tokenizers` library (Rust) does the actual work; this wrapper adds what transformers'
`AutoTokenizer` reads from `tokenizer_config.json` on top of it, with the same rules, so the
ids match:

- the named special tokens (bos/eos/pad/unk/...) are registered as special added tokens
  (matched whole in text, dropped by `skip_special_tokens`), appended if not in the vocab;
- whether `encode` adds bos/eos is up to tokenizer.json's post-processor: transformers 5 ignores
  the config's `add_bos_token` / `add_eos_token` when there is a tokenizer.json, and so do we
  (pass `add_bos_token=` / `add_eos_token=` to rebuild the post-processor, like setting them on
  a transformers tokenizer);
- the chat template comes from `chat_template.jinja` and `additional_chat_templates/*.jinja`
  (named templates) if there are such files, else from the config's `chat_template`.

Also read: `generation_config.json`'s eos ids (a chat model often stops on several tokens) and
an optional `extra_eos_tokens` list in the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as RustTokenizer

from alignlab.errors import CheckpointError
from alignlab.text.template import load_chat_template, save_chat_template
from alignlab.text.tokenizer import NO_MAX_LENGTH, SPECIAL_TOKEN_NAMES, Tokenizer, TokenizerNotFoundError, write_json


def _token_str(value: Any) -> str | None:
    """Configs write a token as "<s>" or as {"content": "<s>", ...} (a serialized AddedToken)."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(Tokenizer):
    def __init__(
        self,
        tokenizer: RustTokenizer,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        chat_template: str | dict[str, str] | None = None,
        model_max_length: int | None = None,
        extra_eos_tokens: tuple[str, ...] | list[str] = (),
        extra_special_tokens: tuple[str, ...] | list[str] = (),
        clean_up_tokenization_spaces: bool = False,
        config: dict | None = None,
        **special_tokens: str | None,
    ):
        """`special_tokens`: bos_token=..., eos_token=..., pad_token=..., unk_token=..., etc.
        `tokenizer` is used in place: special tokens are added to it and its post-processor may change."""
        unknown = set(special_tokens) - set(SPECIAL_TOKEN_NAMES)
        assert not unknown, f"unknown arguments {unknown}"
        self.tokenizer = tokenizer
        for name in SPECIAL_TOKEN_NAMES:
            setattr(self, name, special_tokens.get(name))
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.extra_eos_tokens = tuple(extra_eos_tokens)
        self.extra_special_tokens = list(extra_special_tokens)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.config = dict(config or {})  # the tokenizer_config.json it came from, kept for `save`

        # special tokens that are not yet added tokens become special added tokens (new ids if
        # they are not in the vocab at all), in transformers' order
        already = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        wanted = [*self.special_tokens_map.values(), *self.extra_special_tokens]
        wanted = [t for t in dict.fromkeys(wanted) if t not in already]
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in wanted])

        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))
        # what the post-processor does, seen on an empty text
        marked = self.encode("")
        self.add_bos_token = self.bos_token_id is not None and marked[:1] == [self.bos_token_id]
        self.add_eos_token = self.eos_token_id is not None and marked[-1:] == [self.eos_token_id]

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        """Make encode add bos and/or eos around every sequence (an unset token is skipped)."""
        add_bos, add_eos = add_bos and self.bos_token is not None, add_eos and self.eos_token is not None
        bos, eos = f"{self.bos_token}:0 " if add_bos else "", f" {self.eos_token}:0" if add_eos else ""
        bos1, eos1 = f" {self.bos_token}:1" if add_bos else "", f" {self.eos_token}:1" if add_eos else ""
        used = [
            (t, self.token_to_id(t)) for t, on in ((self.bos_token, add_bos), (self.eos_token, add_eos)) if on
        ]
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}$A:0{eos}", pair=f"{bos}$A:0{eos}{bos1} $B:1{eos1}", special_tokens=used
        )

    # --- loading and saving ---

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> HFTokenizer:
        """From a directory with tokenizer.json (+ tokenizer_config.json, chat template files,
        generation_config.json when present). kwargs override what the config says."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TokenizerNotFoundError(f"{directory}: no tokenizer.json")
        try:
            tokenizer = RustTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception, e.g. "expected value at line 1 column 1"
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: not a valid tokenizer.json: {message}") from e
        config = _read_json(directory / "tokenizer_config.json")
        chat_template = load_chat_template(directory, config)

        extra_special = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if isinstance(extra_special, dict):  # newer configs name them: {"image_token": "<image>"}
            extra_special = list(extra_special.values())
        max_length = config.get("model_max_length")

        kwargs: dict[str, Any] = {
            "chat_template": chat_template,
            "model_max_length": max_length if max_length is not None and max_length < NO_MAX_LENGTH else None,
            "extra_special_tokens": [_token_str(t) for t in extra_special],
            "clean_up_tokenization_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
            "config": config,
            **{name: _token_str(config.get(name)) for name in SPECIAL_TOKEN_NAMES},
        }
        # more stop tokens: the config's own list, and the eos ids of generation_config.json
        extra_eos = list(config.get("extra_eos_tokens", []))
        eos_ids = _read_json(directory / "generation_config.json").get("eos_token_id")
        for i in [eos_ids] if isinstance(eos_ids, int) else eos_ids or []:
            if (token := tokenizer.id_to_token(i)) is not None:
                extra_eos.append(token)
        kwargs["extra_eos_tokens"] = extra_eos
        kwargs.update(overrides)
        return cls(tokenizer, **kwargs)

    def save(self, directory: str | Path) -> None:
        """tokenizer.json, tokenizer_config.json, special_tokens_map.json and the chat template
        files, loadable by `HFTokenizer.load` and by transformers' AutoTokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.config}
        config.pop("chat_template", None)
        config.update(self.special_tokens_map)
        config["add_bos_token"], config["add_eos_token"] = self.add_bos_token, self.add_eos_token
        if self.extra_special_tokens:
            config["extra_special_tokens"] = self.extra_special_tokens
            config.pop("additional_special_tokens", None)
        if self.extra_eos_tokens:
            config["extra_eos_tokens"] = list(self.extra_eos_tokens)
        config["model_max_length"] = self.model_max_length or NO_MAX_LENGTH
        config["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        save_chat_template(directory, self.chat_template)
        write_json(directory / "tokenizer_config.json", config)
        special_map = {**self.special_tokens_map, "additional_special_tokens": self.extra_special_tokens}
        write_json(directory / "special_tokens_map.json", special_map)

    # --- the interface ---

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # the library skips ids past the vocabulary itself, but can't take negative ones
        text = self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=skip_special_tokens)
        # transformers' cleanup, which it skips for BPE models (it would eat real spaces)
        if self.clean_up_tokenization_spaces and type(self.tokenizer.model).__name__ != "BPE":
            text = _clean_up_tokenization(text)
        return text

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.tokenizer.id_to_token(id)


_CLEANUPS = [" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"]


def _clean_up_tokenization(text: str) -> str:
    """Remove the spaces a word-piece tokenizer leaves before punctuation and contractions."""
    for before in _CLEANUPS:
        text = text.replace(before, before[1:] if before != " ' " else "'")
    return text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

