"""Byte-level BPE, trained from scratch (the GPT-2 recipe).

Tokens are byte strings. The first 256 ids are the single bytes, so any text -- any unicode
string -- can be encoded and decodes back exactly. Training then learns merges: repeatedly take
the most frequent adjacent pair of tokens and make it a new token.

1. Pre-tokenize: the GPT-2 regex cuts text into words (" hello", "'s", " 123", "\\n\\n", ...),
   and merges never cross a word boundary. Only unique words matter, weighted by frequency:
   ~1 MB of English is ~25k distinct words.
2. Count adjacent pairs over all words, pick the best, rewrite the words that contain it.
3. Updating the counts incrementally is what makes this fast: merging (a, b) -> z only changes
   the pairs of the words containing (a, b) (we keep a pair -> words index), and the best pair
   comes off a heap whose stale entries are skipped lazily.

Special tokens (<|endoftext|>, <|im_start|>, ...) get ids after the learned tokens. They are cut
out of the text before pre-tokenization, so they are never split and never learned from.

Encoding a word applies the learned merges by rank: always the lowest-rank (earliest learned)
adjacent pair, leftmost first -- exactly what Hugging Face's BPE model does, so `save` writes a
`tokenizer.json` that the `tokenizers` library loads and that gives the same ids.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from pathlib import Path

import regex
from tqdm import tqdm

from alignlab.errors import CheckpointError
from alignlab.text.template import load_chat_template, save_chat_template
from alignlab.text.tokenizer import NO_MAX_LENGTH, Tokenizer, special_tokens_pattern, split_special, write_json

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each with an optional
# leading space), then whitespace runs (leaving the last space to start the next word).
# Hugging Face's ByteLevel pre-tokenizer (use_regex=True) uses this same pattern.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, used to write byte tokens as JSON strings.

    Bytes that are visible latin-1 characters stand for themselves; the others (control chars,
    space, ...) are shifted to code points 256, 257, ... in order. So a space is "Ġ" (256 + 32).
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(s: str) -> bytes:
    return bytes(CHAR_TO_BYTE[c] for c in s)


class BPETokenizer(Tokenizer):
    """Byte-level BPE. `vocab[i]` is the bytes of token i (vocab[:256] are the single bytes),
    `merges` the learned pairs in order (rank), special tokens take the ids after the vocab."""

    def __init__(
        self,
        vocab: list[bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: tuple[str, ...] | list[str] = (),
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = False,
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ):
        assert vocab[:256] == [bytes([b]) for b in range(256)], "ids 0..255 must be the single bytes"
        self.vocab = list(vocab)
        self.merges = list(merges)
        self.special_tokens = list(special_tokens)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        for token in (bos_token, eos_token, pad_token):
            if token is not None and token not in self.special_tokens:
                self.special_tokens.append(token)
        self.add_bos_token = add_bos_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length

        self.token_ids = {t: i for i, t in enumerate(self.vocab)}
        # (left id, right id) -> (rank, id of the merged token)
        self.ranks = {
            (self.token_ids[a], self.token_ids[b]): (rank, self.token_ids[a + b])
            for rank, (a, b) in enumerate(merges)
        }
        self.special_ids = {t: len(self.vocab) + i for i, t in enumerate(self.special_tokens)}
        self.special_by_id = {i: t for t, i in self.special_ids.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.special_pattern = special_tokens_pattern(self.special_tokens)
        self.cache: dict[str, list[int]] = {}

    # --- encoding ---

    def _encode_word(self, word: str) -> list[int]:
        """Apply merges to one pre-token: always the lowest-rank pair, the leftmost if tied."""
        if word in self.cache:
            return self.cache[word]
        ids = list(word.encode("utf-8"))  # byte b is token id b
        while len(ids) > 1:
            pairs = [self.ranks.get(pair, (len(self.ranks), -1)) for pair in zip(ids, ids[1:])]
            (rank, new_id), i = min((r, i) for i, r in enumerate(pairs))
            if new_id < 0:  # no pair left that has a merge
                break
            ids[i : i + 2] = [new_id]
        if len(self.cache) < 200_000:
            self.cache[word] = ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        for i, chunk in enumerate(split_special(text, self.special_pattern)):
            if i % 2 == 1:  # a special token, kept whole
                ids.append(self.special_ids[chunk])
            else:
                for word in self.pattern.findall(chunk):
                    ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # Bytes are gathered and decoded together, since a character may span several tokens;
        # an incomplete sequence (e.g. cut by a special token) becomes U+FFFD, like tokenizers.
        # Skipped special tokens and ids outside the vocabulary are dropped without a cut.
        parts: list[str] = []
        buffer = bytearray()
        for i in map(int, ids):  # int: a tensor's elements would not be found in special_by_id
            if 0 <= i < len(self.vocab):
                buffer += self.vocab[i]
            elif i in self.special_by_id and not skip_special_tokens:
                parts.append(buffer.decode("utf-8", errors="replace"))
                buffer.clear()
                parts.append(self.special_by_id[i])
        parts.append(buffer.decode("utf-8", errors="replace"))
        return "".join(parts)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Special tokens by their text; ordinary tokens by their GPT-2 printable form ("Ġthe")."""
        if token in self.special_ids:
            return self.special_ids[token]
        try:
            return self.token_ids.get(str_to_token(token))
        except KeyError:
            return None

    def id_to_token(self, id: int) -> str | None:
        if 0 <= id < len(self.vocab):
            return token_to_str(self.vocab[id])
        return self.special_by_id.get(id)

    # --- Hugging Face layout ---

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (and
        chat_template.jinja if there is a template)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        added = [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t, i in self.special_ids.items()
        ]
        byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        tokenizer_json = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", **byte_level},
            "post_processor": self._bos_post_processor() if self.add_bos_token else None,
            "decoder": {"type": "ByteLevel", **byte_level},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": {token_to_str(t): i for i, t in enumerate(self.vocab)},
                "merges": [[token_to_str(a), token_to_str(b)] for a, b in self.merges],
            },
        }
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}
        named = {k: v for k, v in named.items() if v is not None}
        others = [t for t in self.special_tokens if t not in named.values()]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **named,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length or NO_MAX_LENGTH,
        }
        write_json(directory / "tokenizer.json", tokenizer_json)
        write_json(directory / "tokenizer_config.json", config)
        write_json(directory / "special_tokens_map.json", {**named, "additional_special_tokens": others})
        save_chat_template(directory, self.chat_template)

    def _bos_post_processor(self) -> dict:
        """A TemplateProcessing that puts bos in front of every sequence (tokenizers' JSON form)."""
        bos = {"SpecialToken": {"id": self.bos_token, "type_id": 0}}
        return {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                self.bos_token: {"id": self.bos_token, "ids": [self.bos_token_id], "tokens": [self.bos_token]}
            },
        }

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read back a directory written by `save` (other tokenizer.json files: use HFTokenizer)."""
        directory = Path(directory)
        tj = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        model, pre = tj["model"], tj.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
            raise CheckpointError(
                f"{directory}/tokenizer.json is not a GPT-2 style byte-level BPE; use HFTokenizer"
            )
        id_to_str = sorted((i, s) for s, i in model["vocab"].items())
        vocab = [str_to_token(s) for _, s in id_to_str]
        merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
        special = [t["content"] for t in sorted(tj["added_tokens"], key=lambda t: t["id"])]
        max_len = config.get("model_max_length")
        return cls(
            vocab,
            [(str_to_token(a), str_to_token(b)) for a, b in merges],
            special_tokens=special,
            bos_token=config.get("bos_token"),
            eos_token=config.get("eos_token"),
            pad_token=config.get("pad_token"),
            add_bos_token=config.get("add_bos_token", False),
            chat_template=load_chat_template(directory, config),
            model_max_length=max_len if max_len and max_len < NO_MAX_LENGTH else None,
        )


# ----------------------------------------------------------------------------------------------
# Training


def train_bpe(
    text: str,
    vocab_size: int,
    special_tokens: tuple[str, ...] | list[str] = DEFAULT_SPECIAL_TOKENS,
    eos_token: str | None = "<|endoftext|>",
    pad_token: str | None = "<|pad|>",
    progress: bool = True,
    **kwargs,
) -> BPETokenizer:
    """Learn a byte-level BPE with `vocab_size` ids in total (256 bytes + merges + special tokens).

    kwargs (bos_token, add_bos_token, chat_template, model_max_length) go to BPETokenizer.
    """
    named = [t for t in (kwargs.get("bos_token"), eos_token, pad_token) if t is not None]
    all_special = list(dict.fromkeys([*special_tokens, *named]))
    target = vocab_size - len(all_special)  # number of non-special tokens to reach
    assert target >= 256, f"vocab_size must be at least 256 + {len(all_special)} special tokens"

    # 1. unique words and their counts; special tokens are cut out first
    pattern = regex.compile(GPT2_PATTERN)
    word_counts: Counter[str] = Counter()
    for i, chunk in enumerate(split_special(text, special_tokens_pattern(all_special))):
        if i % 2 == 0:
            word_counts.update(pattern.findall(chunk))
    words = [list(w.encode("utf-8")) for w in word_counts]  # each word as a list of token ids
    freqs = list(word_counts.values())

    # 2. pair counts (weighted by word frequency), and which words contain each pair
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(w)
    # max-heap of (count, pair) via negated counts; ties go to the smaller pair of ids
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    vocab = [bytes([b]) for b in range(256)]
    token_ids = {t: i for i, t in enumerate(vocab)}
    merges: list[tuple[bytes, bytes]] = []
    merged: set[tuple[int, int]] = set()
    bar = tqdm(total=target - 256, desc="bpe merges", disable=not progress, leave=False)
    while len(vocab) < target and heap:
        # 3. the most frequent pair; entries whose count has changed since they were pushed are stale
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count <= 0:
            continue
        if -neg_count != count:
            heapq.heappush(heap, (-count, pair))
            continue

        a, b = pair
        new_token = vocab[a] + vocab[b]
        if new_token not in token_ids:  # two different pairs can spell the same bytes: reuse the id
            token_ids[new_token] = len(vocab)
            vocab.append(new_token)
            bar.update(1)
        new_id = token_ids[new_token]
        if pair not in merged:
            merges.append((vocab[a], vocab[b]))
            merged.add(pair)

        # 4. rewrite only the words that contain the pair, moving their pair counts
        grown: set[tuple[int, int]] = set()
        for w in where.pop(pair):
            word, f = words[w], freqs[w]
            new_word = _merge(word, a, b, new_id)
            if len(new_word) == len(word):  # stale index entry: pair no longer in this word
                continue
            for p in zip(word, word[1:]):
                pair_counts[p] -= f
            for p in zip(new_word, new_word[1:]):
                pair_counts[p] += f
                where[p].add(w)
                if new_id in p:
                    grown.add(p)
            words[w] = new_word
        for p in grown:  # only pairs with the new token can have gained count
            heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return BPETokenizer(vocab, merges, special_tokens, eos_token=eos_token, pad_token=pad_token, **kwargs)


def _merge(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `word`, left to right, by new_id."""
    out = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
