"""Self-Instruct (Wang et al. 2022, arXiv:2212.10560): a model writes its own instruction data from a few seed tasks.

    seeds = load_seed_tasks("seed_tasks.jsonl")             # 175 human-written tasks in the paper
    gen = SelfInstruct(teacher, seeds, seed=0)               # teacher: any backend with generate([GenRequest])
    records, counts = gen.run(n=100)                         # trl chats, and what each filter removed

One round, repeated until `n` instructions are kept:

1. Prompt: "Come up with a series of tasks:" and 8 numbered instructions from the pool (6 seed tasks and 2 the
   model wrote, once there are some), then the next number. The teacher continues the list.
2. Parse the continuation into numbered instructions and filter each, in this order (the paper's filters):
   too short (<= 3 words) or too long (> 150 words); a word a text model cannot act on (image, graph, file,
   draw, ...); "Write a program"; starting with punctuation or a non-ASCII character; ROUGE-L >= 0.7 with
   any instruction already in the pool (alignlab.text.rouge); an n-gram shared with an evaluation set
   (alignlab.synth.decontam).
3. Instances: the teacher answers each kept instruction after a few seed tasks shown as
   "Instruction / Input / Output" examples; an empty output, or one that repeats its input, drops it.

Evol-Instruct (Xu et al. 2023, WizardLM, arXiv:2304.12244) is the option `evolve`: each kept instruction is
rewritten once more, in depth (add a constraint, deepen, make concrete, ask for more reasoning steps) or in
breadth (a new, rarer task in the same domain), and the rewrite is kept only if it passes the same filters and
changed the instruction (ROUGE-L with its parent < 0.7) and is not an apology.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.eval.backends import GenRequest
from alignlab.synth.decontam import NgramIndex
from alignlab.text.rouge import rouge_l, rouge_l_words, words

ROUGE_THRESHOLD = 0.7
# words that ask for something a text model cannot do (the paper's list)
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
FILTERS = ("unparsed", "length", "blacklist", "program", "punctuation", "non_ascii", "duplicate", "contaminated")
INSTANCE_FILTERS = ("empty_output", "output_repeats_input")
EVOLVE_FILTERS = ("unchanged", "apology")

EVOLUTIONS = {  # Evol-Instruct's operations, one sentence each
    "constraints": "Add one more constraint or requirement to the task.",
    "deepen": "Make the task ask about the same topic in more depth.",
    "concretize": "Replace a general concept in the task with a more specific one.",
    "reasoning": "Rewrite the task so that answering it takes several steps of reasoning.",
    "breadth": "Write a brand new task in the same domain as this one, but rarer.",
}


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[tuple[str, str], ...]  # (input, output)
    is_classification: bool = False


def load_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Self-Instruct's seed file: JSON Lines of {"instruction", "instances": [{"input", "output"}],
    "is_classification"}. A bad line is an error naming the file, the line and the field."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such seed-task file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise DataError(f"{where}: field 'instruction': a non-empty string is required")
        instances = row.get("instances", [])
        if not isinstance(instances, list) or not all(isinstance(i, dict) and isinstance(i.get("output"), str)
                                                      for i in instances):
            raise DataError(f"{where}: field 'instances': a list of {{'input', 'output'}} objects is required")
        out.append(SeedTask(row["instruction"].strip(), tuple((i.get("input") or "", i["output"]) for i in instances),
                            bool(row.get("is_classification", False))))
    if not out:
        raise DataError(f"{path}: no seed tasks")
    return out


# ------------------------------------------------------------------------------------------------------------------
# Prompts and parsing

def instruction_prompt(examples: list[str]) -> str:
    """The paper's prompt: the numbered examples, then the next number for the teacher to continue."""
    lines = "".join(f"{i}. {text}\n" for i, text in enumerate(examples, 1))
    return f"Come up with a series of tasks:\n{lines}{len(examples) + 1}."


_NUMBER = re.compile(r"\n\s*\d+\s*\.\s*")


def parse_instructions(continuation: str) -> list[str]:
    """The instructions a continuation lists: its first piece continues the prompt's last number, each later
    "N. text" line starts one. Blank pieces are skipped; a piece keeps its first paragraph only."""
    pieces = _NUMBER.split(continuation)
    return [p.strip().split("\n\n")[0].strip() for p in pieces if p.strip()]


def instance_prompt(instruction: str, shots: list[SeedTask]) -> str:
    """Seed tasks as Instruction / Input / Output examples, then the new instruction for the teacher to answer."""
    blocks = []
    for t in shots:
        inp, out = t.instances[0] if t.instances else ("", "")
        blocks.append(f"Instruction: {t.instruction}\nInput: {inp or '(none)'}\nOutput: {out}\n")
    return "\n".join(blocks) + f"\nInstruction: {instruction}\nInput:"


def parse_instance(continuation: str) -> tuple[str, str]:
    """(input, output) from "INPUT\\nOutput: OUTPUT[\\n\\nInstruction: ...]"; "(none)" is an empty input."""
    text = continuation.split("\nInstruction:")[0]
    inp, sep, out = text.partition("Output:")
    inp = inp.strip()
    if not sep:
        return "", ""
    return ("" if inp.lower() in ("(none)", "none", "") else inp), out.strip()


def evolve_prompt(instruction: str, operation: str) -> str:
    return (f"Rewrite the task below into a new task. {EVOLUTIONS[operation]} The new task must be reasonable and "
            f"answerable by a person.\n#Task#: {instruction}\n#New Task#:")


# ------------------------------------------------------------------------------------------------------------------
# Filters

def instruction_filter(text: str) -> str | None:
    """The first heuristic filter an instruction fails (a FILTERS name), or None."""
    n = len(text.split())
    if n <= 3 or n > 150:
        return "length"
    low = text.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", low) for w in BLACKLIST):
        return "blacklist"
    if low.startswith("write a program"):
        return "program"
    if text[0] in string.punctuation:
        return "punctuation"
    if not text[0].isascii():
        return "non_ascii"
    return None


class Pool:
    """The instructions kept so far, seeds included, for the ROUGE-L duplicate check (each split into words once)."""

    def __init__(self, texts: list[str]):
        self.texts = list(texts)
        self.tokens = [words(t) for t in texts]

    def most_similar(self, text: str) -> float:
        w = words(text)
        return max((rouge_l_words(w, t) for t in self.tokens), default=0.0)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.tokens.append(words(text))


# ------------------------------------------------------------------------------------------------------------------
# The generator

class SelfInstruct:
    def __init__(self, teacher, seeds: list[SeedTask], seed: int = 0, temperature: float = 0.7,
                 max_tokens: int = 256, prompt_seeds: int = 6, prompt_machine: int = 2, shots: int = 3,
                 rouge_threshold: float = ROUGE_THRESHOLD, index: NgramIndex | None = None, evolve: bool = False):
        self.teacher, self.seeds, self.rng = teacher, seeds, random.Random(seed)
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.prompt_seeds, self.prompt_machine, self.shots = prompt_seeds, prompt_machine, shots
        self.rouge_threshold, self.index, self.evolve = rouge_threshold, index, evolve
        self.pool = Pool([t.instruction for t in seeds])
        self.machine: list[str] = []  # instructions the teacher wrote and the filters kept
        self.counts: Counter = Counter()
        self.calls = 0

    def _generate(self, prompts: list[str]) -> list[str]:
        requests = [GenRequest(p, max_tokens=self.max_tokens, temperature=self.temperature,
                               seed=self.seed * 1_000_003 + self.calls + i) for i, p in enumerate(prompts)]
        self.calls += len(prompts)
        return self.teacher.generate(requests)

    def _check(self, text: str) -> str | None:
        """The first filter an instruction fails, or None (and then it joins the pool)."""
        why = instruction_filter(text)
        if why is None and self.pool.most_similar(text) >= self.rouge_threshold:
            why = "duplicate"
        if why is None and self.index is not None and self.index.hits(text):
            why = "contaminated"
        return why

    def propose(self, batch: int) -> list[str]:
        """One batch of prompts to the teacher; the instructions that pass every filter (added to the pool)."""
        prompts = []
        for _ in range(batch):
            examples = [t.instruction for t in self.rng.sample(self.seeds, min(self.prompt_seeds, len(self.seeds)))]
            examples += self.rng.sample(self.machine, min(self.prompt_machine, len(self.machine)))
            self.rng.shuffle(examples)
            prompts.append(instruction_prompt(examples))
        kept = []
        for continuation in self._generate(prompts):
            parsed = parse_instructions(continuation)
            if not parsed:
                self.counts["unparsed"] += 1
            for text in parsed:
                self.counts["generated"] += 1
                why = self._check(text)
                if why:
                    self.counts[why] += 1
                    continue
                self.pool.add(text)
                self.machine.append(text)
                kept.append(text)
        return kept

    def evolve_all(self, instructions: list[str]) -> list[str]:
        """Evol-Instruct: one rewrite of each instruction by a random operation; the rewrites that pass."""
        prompts = [evolve_prompt(i, self.rng.choice(sorted(EVOLUTIONS))) for i in instructions]
        out = []
        for parent, text in zip(instructions, self._generate(prompts)):
            text = text.strip().split("\n")[0].strip()
            self.counts["evolved"] += 1
            if not text or rouge_l(text, parent) >= self.rouge_threshold:
                self.counts["evolve_unchanged"] += 1
                continue
            if re.search(r"\b(sorry|as an ai)\b", text.lower()):
                self.counts["evolve_apology"] += 1
                continue
            why = self._check(text)
            if why:
                self.counts[f"evolve_{why}"] += 1
                continue
            self.pool.add(text)
            out.append(text)
        return out

    def instances(self, instructions: list[str], progress: bool = True) -> list[dict]:
        """Each instruction answered by the teacher: trl chat records (user: instruction [+ input], assistant:
        output) that pass the instance filters."""
        from tqdm import tqdm

        prompts = [instance_prompt(i, self.rng.sample(self.seeds, min(self.shots, len(self.seeds))))
                   for i in instructions]
        answers: list[str] = []
        for i in tqdm(range(0, len(prompts), 32), desc="instances", unit="batch", disable=not progress):
            answers += self._generate(prompts[i:i + 32])
        out = []
        for instruction, continuation in zip(instructions, answers):
            inp, output = parse_instance(continuation)
            if not output:
                self.counts["empty_output"] += 1
                continue
            if inp and output.strip() == inp.strip():
                self.counts["output_repeats_input"] += 1
                continue
            user = instruction if not inp else f"{instruction}\n\n{inp}"
            out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}],
                        "instruction": instruction, "input": inp, "output": output})
        return out

    def run(self, n: int, batch: int = 8, max_rounds: int | None = None, progress: bool = True) -> tuple[list, dict]:
        """Rounds of propose (+ evolve) until `n` instructions are kept or `max_rounds` (default 4 n / batch + 4)
        rounds have run; then their instances. Returns the records and the counts of every filter."""
        from tqdm import tqdm

        max_rounds = max_rounds or 4 * n // batch + 4
        kept: list[str] = []
        bar = tqdm(total=n, desc="self-instruct", unit="instr", disable=not progress)
        for _ in range(max_rounds):
            new = self.propose(batch)
            if self.evolve and new:
                new += self.evolve_all(new)
            new = new[:n - len(kept)]
            kept += new
            bar.update(len(new))
            self.counts["rounds"] += 1
            if len(kept) >= n:
                break
        bar.close()
        records = self.instances(kept, progress)
        counts = {"rounds": self.counts["rounds"], "teacher_calls": self.calls,
                  "generated": self.counts["generated"], "kept_instructions": len(kept),
                  "removed": {f: self.counts[f] for f in FILTERS},
                  "instances_removed": {f: self.counts[f] for f in INSTANCE_FILTERS},
                  "records": len(records)}
        if self.evolve:
            counts["evolved"] = self.counts["evolved"]
            counts["evolve_removed"] = {k.removeprefix("evolve_"): v for k, v in sorted(self.counts.items())
                                        if k.startswith("evolve_")}
        return records, counts
