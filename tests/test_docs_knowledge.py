"""The study guide's documents point at real code.

1. Every backticked reference in docs/*.md whose path starts with alignlab/, tests/, labs/, benchmarks/ or scripts/
   exists, and its `::name` resolves: `file.py::name` is a top-level def, class or assignment of the file,
   `file.py::Class.method` a def inside that class; in tests/ files a test function may also sit inside a test class
   (`tests/test_x.py::test_name` or `tests/test_x.py::TestClass::test_name`). Files are parsed with ast, never imported.
2. docs/knowledge.md has the six pillars ("## N. Pillar") and the fixed topics ("### Topic") in order, and each topic
   ends with an "Implemented in" paragraph that names code and a test (or says "not implemented").
3. The checkers themselves fail on broken references and misplaced topics (made-up documents below).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
KNOWLEDGE = DOCS / "knowledge.md"

# the fixed pillars and topics (the sprint plan's P0/P1/P2 table uses the same texts)
PILLARS = {
    "Foundations": [
        "Tokenization and BPE",
        "Cross-entropy and its gradient",
        "Attention and the 1/sqrt(d) scale",
        "Positions: RoPE",
        "Sampling: temperature, top-k, top-p",
        "The KV cache",
        "Pretraining: learning rate, warmup, scaling",
    ],
    "Alignment": [
        "SFT and loss masking",
        "LoRA and QLoRA",
        "Reward models (Bradley-Terry)",
        "DPO from the KL-regularised objective",
        "The DPO family: IPO, KTO, SimPO, ORPO, SafeDPO",
        "PPO: the clipped surrogate and GAE",
        "GRPO and its memory against PPO",
        "Verifiable rewards and reward hacking",
        "Process reward models",
    ],
    "Synthetic data": [
        "Self-Instruct and Evol-Instruct",
        "Rejection sampling",
        "Distillation: KL and GKD",
        "RLAIF and Constitutional AI",
        "Decontamination",
    ],
    "Infrastructure": [
        "FlashAttention's O(N) memory",
        "PagedAttention's waste bound",
        "Continuous batching",
        "Multi-LoRA serving (S-LoRA)",
        "Speculative decoding",
        "Quantization: NF4, GPTQ, AWQ, GGUF",
        "Training memory",
        "Model merging",
    ],
    "Evaluation": [
        "Statistics: intervals, paired tests, pass@k",
        "LLM-as-judge and its biases",
        "Red-teaming",
        "Benchmark harnesses",
    ],
    "Applied skills": [
        "Tool use and function calling",
        "Constrained decoding",
        "Agents and multi-turn RL",
        "Refusal calibration",
        "Debugging a training run",
    ],
}
TOPICS = [t for topics in PILLARS.values() for t in topics]

PATH_REF = re.compile(r"(?:alignlab|tests|labs|benchmarks|scripts)/\S+")  # what counts as a reference to check
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^(```|~~~)")


# ----------------------------------------------------------------------------------------------------------------
# References


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks: code is not a reference."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            out.append((i, line))
    return out


def references(text: str) -> list[tuple[int, str]]:
    """(line number, reference) of every inline code span that is exactly a path reference (no spaces: a span
    like `python labs/x.py --flag` is a command, not a reference)."""
    return [(i, span) for i, line in prose_lines(text) for span in CODE_SPAN.findall(line)
            if PATH_REF.fullmatch(span)]


@functools.cache
def defined_names(path: Path, is_test_file: bool = False) -> frozenset[str]:
    """Names a reference may give after `::` for this file: top-level defs, classes and assigned names,
    `Class.method` for defs in a class body, and for a tests/ file the test functions inside test classes."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{item.name}")
                    if is_test_file and item.name.startswith("test"):
                        names.add(item.name)
    return frozenset(names)


def resolve(ref: str, root: Path = ROOT) -> str | None:
    """None when `ref` (a path, a glob, or `file.py::name`) points at something that exists, else why not."""
    path, _, name = ref.partition("::")
    name = re.sub(r"\[.*\]$", "", name).replace("::", ".")  # a parametrised id; pytest's Class::test spelling
    if ".." in Path(path).parts:
        return f"{path} leaves the repository"
    if any(c in path for c in "*?["):
        matches = sorted(root.glob(path))
        return None if matches else f"{path} matches no file"
    target = root / path
    if not target.exists():
        return f"{path} does not exist"
    if not name:
        return None
    if target.suffix != ".py" or not target.is_file():
        return f"{path} is not a Python file, so ::{name} cannot resolve"
    if name not in defined_names(target, Path(path).parts[0] == "tests"):
        return f"{path} defines no {name}"
    return None


def broken_references(doc: Path, root: Path = ROOT) -> list[str]:
    """`doc:line: ref: why` for each reference of a Markdown file that does not resolve."""
    out = []
    for line, ref in references(doc.read_text()):
        why = resolve(ref, root)
        if why:
            out.append(f"{doc.name}:{line}: `{ref}`: {why}")
    return out


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_every_reference_in_the_docs_exists(doc):
    broken = broken_references(doc)
    assert not broken, "references that do not resolve:\n" + "\n".join(broken)


def test_knowledge_has_references_to_check():
    refs = [r for _, r in references(KNOWLEDGE.read_text())]
    assert len(refs) >= 200, len(refs)
    assert sum("::" in r for r in refs) >= 150  # most references name a function, class, method or test


# ----------------------------------------------------------------------------------------------------------------
# Pillars and topics of knowledge.md


def headings(text: str) -> list[tuple[int, str, str]]:
    """(line number, "##" or "###", title) of the level-2 and level-3 headings outside code blocks."""
    out = []
    for i, line in prose_lines(text):
        m = re.match(r"(#{2,3}) (.+?)\s*$", line)
        if m:
            out.append((i, m.group(1), m.group(2)))
    return out


def topic_sections(text: str) -> dict[str, str]:
    """Each ### topic's text, up to the next ## or ### heading."""
    lines = text.splitlines()
    hs = headings(text)
    out = {}
    for k, (i, level, title) in enumerate(hs):
        if level == "###":
            end = hs[k + 1][0] - 1 if k + 1 < len(hs) else len(lines)
            out[title] = "\n".join(lines[i:end])
    return out


def last_paragraph(section: str) -> str:
    """The section's last paragraph outside code blocks, as one line."""
    paragraphs, current = [], []
    for _, line in prose_lines(section):
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs[-1] if paragraphs else ""


def topic_problems(text: str) -> list[str]:
    """What is wrong with a knowledge document's pillars, topics and their "Implemented in" paragraphs."""
    problems = []
    hs = headings(text)
    pillars = [title for _, level, title in hs if level == "##" and re.match(r"\d+\. ", title)]
    expected = [f"{n}. {p}" for n, p in enumerate(PILLARS, 1)]
    if pillars != expected:
        problems.append(f"pillars {pillars} != {expected}")
    topics = [title for _, level, title in hs if level == "###"]
    if topics != TOPICS:
        missing = [t for t in TOPICS if t not in topics]
        extra = [t for t in topics if t not in TOPICS]
        problems.append(f"topics differ from the fixed list: missing {missing}, unexpected {extra}"
                        + ("" if missing or extra else ", or out of order"))
    pillar = None
    for _, level, title in hs:  # each topic under its own pillar
        if level == "##":
            pillar = title.split(". ", 1)[-1]
        elif title in TOPICS and title not in PILLARS.get(pillar, []):
            problems.append(f"topic {title!r} sits under pillar {pillar!r}")
    for title, section in topic_sections(text).items():
        last = last_paragraph(section)
        if not last.startswith("Implemented in"):
            problems.append(f"{title!r} does not end with an 'Implemented in' paragraph")
            continue
        if "not implemented" in last.lower():
            continue
        refs = [span for span in CODE_SPAN.findall(last) if PATH_REF.fullmatch(span)]
        if not any(r.startswith("alignlab/") for r in refs):
            problems.append(f"{title!r}: its 'Implemented in' paragraph names no alignlab/ code")
        if not any(r.startswith("tests/") for r in refs):
            problems.append(f"{title!r}: its 'Implemented in' paragraph names no test")
    return problems


def test_knowledge_has_the_fixed_pillars_and_topics_each_with_its_implementation():
    problems = topic_problems(KNOWLEDGE.read_text())
    assert not problems, "\n".join(problems)


def test_each_pillar_names_the_labs_that_practise_it():
    text = KNOWLEDGE.read_text()
    parts = re.split(r"^## \d+\. .+$", text, flags=re.M)[1:]
    assert len(parts) == len(PILLARS)
    for name, part in zip(PILLARS, parts):
        intro = part.split("\n### ", 1)[0]
        assert re.search(r"\bLabs? \d\d\b", intro), f"pillar {name!r} does not say which lab practises it"


# ----------------------------------------------------------------------------------------------------------------
# The checkers can fail


def test_resolve_accepts_real_references_and_rejects_bogus_ones():
    assert resolve("alignlab/memory.py") is None
    assert resolve("alignlab/eval/") is None
    assert resolve("labs/*/README.md") is None
    assert resolve("alignlab/memory.py::estimate_memory") is None  # a function
    assert resolve("alignlab/lora/layer.py::LoraLinear") is None  # a class
    assert resolve("alignlab/lora/layer.py::LoraLinear.merge") is None  # a method
    assert resolve("alignlab/objectives/lm.py::IGNORE_INDEX") is None  # an assigned name
    assert resolve("tests/test_objectives_rl.py::test_gae_by_hand") is None
    assert resolve("tests/test_objectives_rl.py::test_grpo_loss_matches_trl[grpo-0.0]") is None  # parametrised id

    assert resolve("alignlab/memory.py::estimate_memory_of_everything") == \
        "alignlab/memory.py defines no estimate_memory_of_everything"
    assert resolve("alignlab/no_such_module.py") == "alignlab/no_such_module.py does not exist"
    assert resolve("alignlab/no_such_module.py::f") == "alignlab/no_such_module.py does not exist"
    assert resolve("alignlab/lora/layer.py::LoraLinear.no_such_method") is not None
    assert resolve("alignlab/memory.py::estimate_memory.inner") is not None  # a function has no methods here
    assert resolve("alignlab/lora/layer.py::merge") is not None  # a method is not a top-level name
    assert resolve("labs/00_pretraining_fundamentals/README.md::anything") is not None  # ::name needs a .py file
    assert resolve("labs/*/NO_SUCH_FILE.md") is not None
    assert resolve("alignlab/../README.md") is not None


def test_methods_of_test_classes_resolve_in_tests_only(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("class TestThing:\n    def test_a(self):\n        pass\n")
    (tmp_path / "alignlab").mkdir()
    (tmp_path / "alignlab" / "x.py").write_text("class Thing:\n    def test_a(self):\n        pass\n")
    assert resolve("tests/test_x.py::test_a", tmp_path) is None
    assert resolve("tests/test_x.py::TestThing.test_a", tmp_path) is None
    assert resolve("tests/test_x.py::TestThing::test_a", tmp_path) is None
    assert resolve("alignlab/x.py::Thing.test_a", tmp_path) is None
    assert resolve("alignlab/x.py::test_a", tmp_path) is not None  # only tests/ files resolve a bare method name
    assert resolve("tests/test_x.py::test_b", tmp_path) is not None


def test_broken_references_are_reported_and_code_is_not_read_as_references(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Good: `alignlab/memory.py::estimate_memory` and `tests/test_memory.py::test_peak_logic`.\n"
        "Bogus: `alignlab/memory.py::no_such_function`, `scripts/no_such_script.py`.\n"
        "A command is not a reference: `labs/04_tool_use/serving_numbers.py lora`; nor is `alignlab memory`.\n"
        "```bash\n"
        "`alignlab/inside_a_code_block.py`\n"
        "```\n")
    broken = broken_references(doc)
    assert broken == ["doc.md:2: `alignlab/memory.py::no_such_function`: alignlab/memory.py defines no "
                      "no_such_function",
                      "doc.md:2: `scripts/no_such_script.py`: scripts/no_such_script.py does not exist"]


def _knowledge(topics_of: dict[str, list[str]], implemented: str) -> str:
    parts = ["# Knowledge\n"]
    for n, (pillar, topics) in enumerate(topics_of.items(), 1):
        parts.append(f"## {n}. {pillar}\n\nPractised in Lab 0{n}.\n")
        parts += [f"### {t}\n\nThe idea.\n\n```text\nmath\n```\n\n{implemented}\n" for t in topics]
    return "\n".join(parts)


def test_topic_checker_fails_on_a_missing_topic_a_wrong_order_and_a_missing_implementation():
    ok = "Implemented in: `alignlab/memory.py::estimate_memory`; tests `tests/test_memory.py::test_peak_logic`."
    assert topic_problems(_knowledge(PILLARS, ok)) == []
    assert topic_problems(_knowledge(PILLARS, "Implemented in: not implemented (no code for this yet).")) == []

    fewer = {p: t[1:] if p == "Foundations" else t for p, t in PILLARS.items()}
    assert any("missing ['Tokenization and BPE']" in p for p in topic_problems(_knowledge(fewer, ok)))

    swapped = {p: (t[1::-1] + t[2:]) if p == "Alignment" else t for p, t in PILLARS.items()}
    assert any("out of order" in p for p in topic_problems(_knowledge(swapped, ok)))

    moved = dict(PILLARS)
    moved["Foundations"] = PILLARS["Foundations"] + ["Decontamination"]
    moved["Synthetic data"] = PILLARS["Synthetic data"][:-1]
    assert any("sits under pillar 'Foundations'" in p for p in topic_problems(_knowledge(moved, ok)))

    assert any("does not end with an 'Implemented in'" in p
               for p in topic_problems(_knowledge(PILLARS, "See the code.")))
    assert any("names no test" in p
               for p in topic_problems(_knowledge(PILLARS, "Implemented in: `alignlab/memory.py::estimate_memory`.")))
    assert any("names no alignlab/ code" in p
               for p in topic_problems(_knowledge(PILLARS, "Implemented in: `tests/test_memory.py::test_peak_logic`.")))
