"""What every Tokenizer shares (tokenizer.py): decoding ids outside the vocabulary, and the
helpers the implementations have in common."""

import ast
from pathlib import Path

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


# --- the text layer's structure ---------------------------------------------------------------------

TEXT_DIR = Path(__file__).resolve().parents[1] / "alignlab" / "text"
PACKAGE = TEXT_DIR.parents[1]


def _text_imports(path: Path) -> set[str]:
    """The modules of alignlab.text that a file imports, anywhere in it (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n.split(".")[2] for n in names if n.startswith("alignlab.text.") and n.split(".")[2] != "__init__"}
    return found & {p.stem for p in TEXT_DIR.glob("*.py")}


def test_text_modules_import_no_cycle():
    """template <- tokenizer <- implementations <- masks: no module of text/ imports one that imports it back."""
    graph = {p.stem: _text_imports(p) - {p.stem} for p in TEXT_DIR.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph.get(start, ()))

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"import cycle through {cycles}: {graph}"
    assert graph["template"] == set()  # templates know nothing of tokenizers
    assert graph["tokenizer"] == {"template"}
    assert "tokenizer" in graph["masks"] and "masks" not in set().union(*(graph[m] for m in graph if m != "masks"))


def test_end_of_turn_tokens_are_listed_once():
    """The stop tokens of chat formats are alignlab.text.END_OF_TURN_TOKENS; no module keeps a list of its own
    (a tuple or list literal made only of them)."""
    from alignlab.text import END_OF_TURN_TOKENS

    assert base.END_OF_TURN_TOKENS is END_OF_TURN_TOKENS  # the tokenizer's stop ids are made from the one list
    assert "<|end|>" in END_OF_TURN_TOKENS  # TinyWorld's chat template ends its turns with it
    copies = []
    for path in sorted(PACKAGE.joinpath("alignlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) >= 2:
                values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(values) == len(node.elts) and set(values) <= set(END_OF_TURN_TOKENS):
                    copies.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert copies and all(c.startswith("alignlab/text/template.py:") for c in copies), copies
