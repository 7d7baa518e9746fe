"""`TinyWorld`: every dataset of the post-training pipeline, generated from a seed (see __init__.py)."""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from alignlab.data.errors import DataError
from alignlab.data.world import arithmetic as ar
from alignlab.data.world import safety as sf
from alignlab.data.world import services, town
from alignlab.data.world.calculator import CALCULATOR_TOOL, calculator_output
from alignlab.data.world.template import CHAT_TEMPLATE, SPECIAL_TOKENS

SPLITS = ("train", "test")
MATH_LEVELS = (1, 2, 3, 4)  # answered in the head; level 5 needs the calculator
PAIR_KINDS = ("correctness", "format", "safety", "helpfulness", "concise")
SFT_KINDS = ("math", "qa", "refusal", "lookalike")
QA_TEST_FRACTION = 0.2
DEFAULT_VOCAB_SIZE = 768


def answer_text(think: str, answer: int | str) -> str:
    """The one format every arithmetic reply ends in: reasoning in <think>, then "Answer: N"."""
    return f"<think>{think}</think>\nAnswer: {answer}"


RAMBLE = " (I checked every step twice, slowly and carefully, so I am sure this is right.)"


def ramble_think(think: str) -> str:
    """The steps with a filler remark on the last one's line: right, but longer than it needs to be. The steps read
    the same with or without it, and DPO's choice is one token (" (" or "</think>") that occurs nowhere else."""
    return f"{think}{RAMBLE}"


@dataclass(frozen=True)
class WorldSize:
    """How much of everything to make. Test sets are capped by what the held-out split holds."""

    pretrain_chars: int  # pretraining text, in characters (about 2 characters per token)
    sft_per_level: int  # SFT math conversations per level 1-4
    sft_safety: int  # SFT safety conversations (attacks refused + look-alikes answered, half each)
    sft_qa: int  # SFT questions about the town's people
    tool_conversations: int  # calculator conversations (a quarter answer directly: no call needed)
    pairs_per_kind: int  # preference pairs per kind
    rl_per_level: int  # RL prompts per level, train split
    test_per_level: int  # held-out prompts per level (RL, tool), at most
    safety_test_per_template: int  # held-out safety prompts per held-out template
    sft_hard_per_level: int | None = None  # SFT math conversations per level 3-4 (None: sft_per_level); few
    #   make SFT a cold start there: the model learns the format, and RL has room to raise its accuracy
    chatty_fraction: float = 0.0  # share of SFT math replies of `chatty_levels` that ramble in <think>
    #   (`ramble_think`): what DPO's conciseness pairs then train away
    chatty_levels: tuple[int, ...] = (1, 2, 3, 4)  # the levels whose SFT replies (and concise pairs) ramble
    service_conversations: int = 0  # tool-use chats over the town's services (services.py), train split


SIZES = {
    "quick": WorldSize(40_000, 40, 40, 20, 40, 40, 40, 40, 1, sft_hard_per_level=10, chatty_fraction=0.7,
                       service_conversations=200),
    "default": WorldSize(400_000, 400, 400, 100, 300, 300, 500, 200, 1, sft_hard_per_level=100,
                         chatty_fraction=0.7, service_conversations=1500),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def _msg(role: str, content: str, **extra: Any) -> dict:
    return {"role": role, "content": content, **extra}


class TinyWorld:
    """A seeded synthetic world for the whole post-training pipeline. Everything is made on demand
    from (seed, size); the same seed gives identical records in every process."""

    def __init__(self, seed: int = 0, size: str | WorldSize = "default"):
        if isinstance(size, str):
            if size not in SIZES:
                raise DataError(f"size must be one of {sorted(SIZES)} or a WorldSize, got {size!r}")
            size = SIZES[size]
        self.seed = seed
        self.size = size
        self.cast = town.make_cast(seed)
        self.secret = sf.make_secret(seed)
        self.system_prompt = sf.make_system_prompt(self.secret)
        self.refusal = sf.REFUSAL
        self.tools = [CALCULATOR_TOOL]
        # phone numbers etc. of the cast and the residents: only a call finds them
        self.directory = services.Directory(seed, (*self.cast, *services.RESIDENTS))
        self.chat_template = CHAT_TEMPLATE
        self.special_tokens = SPECIAL_TOKENS
        self._secret_re = sf.secret_pattern(self.secret)
        self._safety_split = sf.split_templates(seed)

    def __repr__(self) -> str:
        name = next((k for k, v in SIZES.items() if v == self.size), "custom")
        return f"TinyWorld(seed={self.seed}, size={name!r}, secret={self.secret!r})"

    # ------------------------------------------------------------------------------------------
    # Splits and the no-leak rule

    def _rng(self, *stream: Any) -> random.Random:
        return random.Random(":".join(["tinyworld", str(self.seed), *map(str, stream)]))

    def split_of(self, problem: ar.Problem) -> str:
        """The split of a problem, "train" or "test", by its identity (see arithmetic.py)."""
        return ar.split_of(self.seed, problem.key, problem.level)

    def is_held_out(self, text: str) -> bool:
        """Whether `text` states a held-out problem: any "a op b" in it that is a test problem of some
        level. No training record or pretraining document ever does."""
        for expression in ar.find_expressions(text):
            found = ar.expression_key(expression)
            if found and ar.split_of(self.seed, *found) == "test":
                return True
        return False

    def _clean(self, *texts: str) -> bool:
        """What every training text must be: no held-out problem in it, and no trace of the secret."""
        return not any(self.is_held_out(t) or self._secret_re.search(t) for t in texts)

    @cached_property
    def _level1(self) -> list[ar.Problem]:
        return ar.all_level1()

    def _sample(self, level: int, rng: random.Random) -> ar.Problem:
        if level == 1:
            return rng.choice(self._level1)
        return {2: ar.sample_level2, 3: ar.sample_level3, 4: town.sample_level4, 5: ar.sample_level5}[level](rng)

    def _ok(self, p: ar.Problem, split: str) -> bool:
        if self.split_of(p) != split:
            return False
        texts = (p.think(), p.expression, p.text, str(p.answer))
        # test problems may use train steps freely; but no record may carry the secret
        return self._clean(*texts) if split == "train" else not any(self._secret_re.search(t) for t in texts)

    def problems(self, level: int, split: str, n: int, stream: str = "problems") -> list[ar.Problem]:
        """`n` problems of a level from a split. Test problems are distinct and ordered by a seeded
        draw, so asking for more returns a longer list with the same start; a level with fewer
        held-out problems than `n` returns them all. Train problems are distinct while the pool
        lasts (level 1 has ~125), then repeat. `stream` names an independent draw."""
        _check_split(split)
        if level not in ar.LEVELS:
            raise DataError(f"level must be one of {ar.LEVELS}, got {level!r}")
        rng = self._rng(stream, level, split)
        if level == 1:
            pool = [p for p in self._level1 if self._ok(p, split)]
            rng.shuffle(pool)
            if split == "test":
                return pool[:n]
            return pool[:n] + [rng.choice(pool) for _ in range(n - len(pool))]
        out: list[ar.Problem] = []
        seen: set[str] = set()
        misses = 0
        while len(out) < n and misses < 2000:
            p = self._sample(level, rng)
            if not self._ok(p, split) or p.key in seen:
                misses += 1
                continue
            misses = 0
            seen.add(p.key)
            out.append(p)
        return out

    # ------------------------------------------------------------------------------------------
    # Building blocks of records

    def question(self, problem: ar.Problem, rng: random.Random) -> str:
        """The user's question for a problem; level-5 problems are sometimes a short story."""
        if problem.level == 5 and rng.random() < 0.3:
            name, obj = rng.choice(town.PEOPLE), rng.choice(town.OBJECTS)
            a, op, b = problem.expression.split()
            if op == "*":
                return f"{name} packs {b} boxes with {a} {obj} in each box. How many {obj} is that?"
            return f"{name} puts {a} {obj} into {b} equal bags. How many {obj} go in each bag?"
        return ar.ask(problem, rng)

    def solution(self, problem: ar.Problem) -> str:
        """The reference reply: worked steps in <think>, then "Answer: N"."""
        return answer_text(problem.think(), problem.answer)

    def _tools(self) -> list[dict]:
        return copy.deepcopy(self.tools)  # each record its own copy, safe to edit

    def prompt(self, user: str) -> list[dict]:
        return [_msg("system", self.system_prompt), _msg("user", user)]

    def _small_sum(self, rng: random.Random) -> tuple[str, str]:
        """A small sum that is no level's problem (two-digit + one-digit), for look-alikes."""
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"{a} + {b}", answer_text(f"{a} + {b} = {a + b}", a + b)

    def _safety_templates(self, split: str, label: str | None = None) -> list[sf.Template]:
        return [
            t for t in sf.TEMPLATES if self._safety_split[t.id] == split and (label is None or t.label == label)
        ]

    def _safety_item(self, t: sf.Template, rng: random.Random) -> tuple[str, str]:
        user, reply = sf.fill(t, rng, self.secret, self.cast, self._small_sum(rng))
        return rng.choice(sf.PREFIXES) + user, reply

    def _qa_split(self, person: str, attribute: str) -> str:
        key = f"qa:{attribute}:{person}"
        return "test" if ar.split_hash(self.seed, key) < QA_TEST_FRACTION else "train"

    def _qa(self, split: str, rng: random.Random) -> tuple[str, str, str]:
        pairs = [(p, a) for p in self.cast for a in town.QA_TEMPLATES if self._qa_split(p, a) == split]
        person, attribute = rng.choice(pairs)
        q, a = town.qa_pair(self.cast[person], attribute, rng)
        return q, a, f"qa:{attribute}:{person}"

    # ------------------------------------------------------------------------------------------
    # Pretraining text

    def pretraining_documents(self) -> list[str]:
        """Plain-text documents of about 100-400 characters: arithmetic facts, worked solutions,
        column additions, word problems with their solutions, sentences about the town, and logs of the
        town's services in use (`services.diary`: a question, its call as JSON, the result, the answer). Only
        training problems, (city, day) pairs and event titles appear, no held-out problem even as a step, and no
        directory entry."""
        rng = self._rng("pretrain")
        people = list(self.cast.values())
        docs: list[str] = []
        total = 0
        kinds = ("facts", "worked", "column", "story", "town", "diary")
        while total < self.size.pretrain_chars:
            kind = rng.choices(kinds, weights=(3, 3, 1, 2, 1, 2))[0]
            if kind == "facts":
                lines = []
                for _ in range(rng.randint(6, 12)):
                    p = self._sample(rng.choice((1, 2, 2, 3, 3)), rng)
                    if self._clean(p.expression):  # held-out facts are left out line by line
                        lines.append(f"{p.expression} = {p.answer}")
                doc = "\n".join(lines)
            elif kind == "worked":
                p = self._sample(rng.choice((1, 2, 2, 3, 3, 3)), rng)
                if rng.random() < 0.5:
                    doc = f"Question: {ar.ask(p, rng)}\n{p.think()}\nAnswer: {p.answer}"
                else:
                    doc = f"{p.expression} = ?\n{p.think()}\nSo {p.expression} = {p.answer}."
            elif kind == "column":
                doc = self._column_addition(rng)
            elif kind == "story":
                p = self._sample(4, rng)
                doc = f"{p.text}\n{p.think()}\nAnswer: {p.answer}"
            elif kind == "diary":
                doc = services.diary(self, rng)
            else:
                chosen = rng.sample(people, rng.randint(1, 3))
                sentences = [s for person in chosen for s in town.person_sentences(person)]
                sentences += rng.sample(town.PLACE_FACTS, rng.randint(1, 3))
                doc = " ".join(sentences)
            if self._clean(doc):  # a document that would state a held-out problem is dropped
                docs.append(doc)
                total += len(doc)
        return docs

    def pretraining_text(self, separator: str = "<|endoftext|>") -> str:
        """The documents joined by `separator` (the tokenizer's eos by default)."""
        return separator.join(self.pretraining_documents())

    def _column_addition(self, rng: random.Random) -> str:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        lines = [f"Add {a} and {b} in columns."]
        carry, place = 0, 0
        names = ("Ones", "Tens", "Hundreds", "Thousands")
        x, y = a, b
        while x or y or carry:
            da, db = x % 10, y % 10
            s = da + db + carry
            terms = f"{da} + {db}" + (f" + {carry}" if carry else "")
            note = f" Write {s % 10}, carry 1." if s >= 10 else f" Write {s}."
            if not (x or y):  # only the carry is left
                lines.append(f"{names[place]}: write the carry 1.")
                break
            lines.append(f"{names[place]}: {terms} = {s}.{note}")
            carry, x, y, place = s // 10, x // 10, y // 10, place + 1
        lines.append(f"So {a} + {b} = {a + b}.")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    # SFT conversations

    def _math_conversations(self, level: int, split: str, n: int, stream: str, chatty: float = 0.0) -> list[dict]:
        """`n` math chats of a level; a `chatty` share of the replies ramble (`ramble_think`)."""
        rng = self._rng(stream, "ask", level, split)
        out = []
        for p in self.problems(level, split, n, stream):
            question = self.question(p, rng)
            reply = answer_text(ramble_think(p.think()), p.answer) if rng.random() < chatty else self.solution(p)
            out.append({
                "messages": [*self.prompt(question), _msg("assistant", reply)],
                "kind": "math", "level": level, "answer": str(p.answer), "id": p.id,
            })  # fmt: skip
        return out

    def sft_conversations(self, split: str = "train", kinds: tuple[str, ...] | None = None) -> list[dict]:
        """Chats in Hugging Face `messages` form, each {"messages", "kind", "id", ...}, shuffled:

        - "math": levels 1-4, `sft_per_level` each (levels 3-4: `sft_hard_per_level`; test: `test_per_level`),
          the reply is `<think>steps</think>\\nAnswer: N` (also "level", "answer"); in training a `chatty_fraction`
          of the replies (at `chatty_levels`) close their steps with a filler remark (`ramble_think`), as data
          gathered from many writers does;
        - "refusal": an attack on the policy, answered with the fixed refusal ("category", "style");
        - "lookalike": a benign prompt that looks like an attack, answered helpfully;
        - "qa": a question about the town's people, answered in one sentence.
        Every chat starts with the system prompt (which holds the secret). The test split holds the
        held-out problems, templates and questions."""
        _check_split(split)
        kinds = SFT_KINDS if kinds is None else tuple(kinds)
        unknown = set(kinds) - set(SFT_KINDS)
        if unknown:
            raise DataError(f"unknown SFT kinds {sorted(unknown)}; choose from {SFT_KINDS}")
        size, out = self.size, []
        test = split == "test"
        if "math" in kinds:
            for level in MATH_LEVELS:
                n = size.test_per_level if test else size.sft_per_level
                if not test and level >= 3 and size.sft_hard_per_level is not None:
                    n = size.sft_hard_per_level
                chatty = size.chatty_fraction if not test and level in size.chatty_levels else 0.0
                out += self._math_conversations(level, split, n, "sft", chatty)
        if "refusal" in kinds or "lookalike" in kinds:
            labels = [lab for lab, kind in (("attack", "refusal"), ("benign", "lookalike")) if kind in kinds]
            for item in self._safety_records(split, "sft", size.sft_safety, labels):
                reply = self.refusal if item["label"] == "attack" else item["reference"]
                out.append({
                    "messages": [*item["prompt"], _msg("assistant", reply)],
                    "kind": "refusal" if item["label"] == "attack" else "lookalike",
                    "category": item["category"], "style": item["style"], "id": item["id"],
                })  # fmt: skip
        if "qa" in kinds:
            rng = self._rng("sft-qa", split)
            for _ in range(size.sft_qa if not test else max(1, size.sft_qa // 4)):
                q, a, key = self._qa(split, rng)
                out.append({"messages": [*self.prompt(q), _msg("assistant", a)], "kind": "qa", "id": key})
        self._rng("sft-shuffle", split).shuffle(out)
        return out

    # ------------------------------------------------------------------------------------------
    # Safety prompts

    def _safety_records(self, split: str, stream: str, n: int, labels=("attack", "benign")) -> list[dict]:
        """Train: `n` prompts, half attacks and half look-alikes (of the labels asked for), templates
        drawn at random. Test: every held-out template, `safety_test_per_template` fills each."""
        rng = self._rng("safety", stream, split)
        records = []

        def acceptable(t: sf.Template, user: str, reply: str) -> bool:
            # a look-alike never carries the secret; training text never states a held-out problem
            if t.label == "benign" and self._secret_re.search(user + reply):
                return False
            return split == "test" or self._clean(user, reply if t.label == "benign" else "")

        def add(t: sf.Template, i: int):
            user, reply = self._safety_item(t, rng)
            while not acceptable(t, user, reply):
                user, reply = self._safety_item(t, rng)
            records.append({
                "prompt": self.prompt(user), "label": t.label, "category": t.category, "style": t.style,
                "template": t.id, "reference": self.refusal if t.label == "attack" else reply,
                "violation": reply if t.label == "attack" else None, "id": f"{t.id}:{split}:{i}",
            })  # fmt: skip

        if split == "test":
            for t in self._safety_templates("test"):
                if t.label in labels:
                    for i in range(self.size.safety_test_per_template):
                        add(t, i)
            rng.shuffle(records)  # so that the first n of a label spread over the templates
            return records
        for i in range(n):
            label = labels[i % len(labels)]
            add(rng.choice(self._safety_templates("train", label)), i)
        return records

    def safety_prompts(self, split: str = "test") -> list[dict]:
        """Attack prompts and benign look-alikes, labelled, for red-teaming and over-refusal:
        {"prompt": [system, user], "label": "attack" | "benign", "category", "style", "template",
        "reference": the refusal (attacks) or the expected answer (look-alikes), "violation": a reply
        that breaks the policy (attacks; None for look-alikes), "id"}. The test split is every
        held-out template; train is `sft_safety` prompts drawn from the training templates."""
        _check_split(split)
        return self._safety_records(split, "prompts", self.size.sft_safety)

    # ------------------------------------------------------------------------------------------
    # Preference pairs

    def preference_pairs(self, split: str = "train", kinds: tuple[str, ...] | None = None) -> list[dict]:
        """Pairs in TRL's conversational form, {"prompt": [system, user], "chosen": [assistant],
        "rejected": [assistant], "kind", "id", ...}, shuffled. Kinds:

        - "correctness": right vs wrong answer, same format; the wrong one makes a slip of 1, 2 or 10
          at one step and carries it on ("level", "answer", "wrong_answer");
        - "format": right answer in the fixed format vs the same number in another format;
        - "safety": the refusal vs a reply that leaks the secret or helps steal ("category", "style", and
          SafeDPO's indicators "chosen_unsafe": False, "rejected_unsafe": True);
        - "helpfulness": a look-alike answered vs refused (against over-refusal);
        - "concise": a short answer vs the same answer buried in filler (town questions, and math of the
          `chatty_levels` with SFT's filler remark, `ramble_think`: a lesson in style, not in arithmetic)."""
        _check_split(split)
        kinds = PAIR_KINDS if kinds is None else tuple(kinds)
        unknown = set(kinds) - set(PAIR_KINDS)
        if unknown:
            raise DataError(f"unknown preference kinds {sorted(unknown)}; choose from {PAIR_KINDS}")
        n = self.size.pairs_per_kind if split == "train" else max(1, self.size.pairs_per_kind // 4)
        out: list[dict] = []
        for kind in kinds:
            out += getattr(self, f"_pairs_{kind}")(split, n)
        self._rng("pairs-shuffle", split).shuffle(out)
        return out

    def _pair(self, prompt, chosen: str, rejected: str, kind: str, id: str, **extra) -> dict:
        return {
            "prompt": prompt, "chosen": [_msg("assistant", chosen)], "rejected": [_msg("assistant", rejected)],
            "kind": kind, "id": id, **extra,
        }  # fmt: skip

    def _math_problems(self, split: str, n: int, stream: str, levels: tuple[int, ...] = MATH_LEVELS
                       ) -> list[ar.Problem]:
        """n problems spread over `levels`."""
        per = -(-n // len(levels))
        problems = [p for level in levels for p in self.problems(level, split, per, stream)]
        self._rng(stream, "pick", split).shuffle(problems)
        return problems[:n]

    def _pairs_correctness(self, split: str, n: int) -> list[dict]:
        rng = self._rng("pairs-correct", split)
        out = []
        for p in self._math_problems(split, n, "pairs-correct"):
            for _ in range(50):
                override = ar.wrong_override(p, rng)
                lines = p.lines(override)
                rejected = answer_text(ar.steps_text(lines), lines[-1][3])
                if split == "test" or self._clean(rejected):
                    break
            else:
                continue
            out.append(self._pair(self.prompt(self.question(p, rng)), self.solution(p), rejected, "correctness",
                                  p.id, level=p.level, answer=str(p.answer), wrong_answer=str(lines[-1][3])))
        return out

    def _pairs_format(self, split: str, n: int) -> list[dict]:
        rng = self._rng("pairs-format", split)
        out = []
        for p in self._math_problems(split, n, "pairs-format"):
            a, think = p.answer, p.think()
            bad = rng.choice((
                f"The answer is {a}.", f"{a}", f"Answer: {a}", f"<think>{think}</think>\nThe answer is {a}.",
                f"<think>{think}</think>\nAnswer: {a}. I hope that helps!", f"{think}\nAnswer: {a}",
            ))  # fmt: skip
            out.append(self._pair(self.prompt(self.question(p, rng)), self.solution(p), bad, "format", p.id,
                                  level=p.level, answer=str(a)))
        return out

    def _pairs_safety(self, split: str, n: int) -> list[dict]:
        out = []
        for item in self._safety_records(split, "pairs", n, labels=("attack",)):
            out.append(self._pair(item["prompt"], self.refusal, item["violation"], "safety", item["id"],
                                  category=item["category"], style=item["style"], chosen_unsafe=False,
                                  rejected_unsafe=True))  # SafeDPO's safety indicators
        return out

    def _pairs_helpfulness(self, split: str, n: int) -> list[dict]:
        out = []
        for item in self._safety_records(split, "pairs-help", n, labels=("benign",)):
            out.append(self._pair(item["prompt"], item["reference"], self.refusal, "helpfulness", item["id"],
                                  category=item["category"], style=item["style"]))
        return out

    def _pairs_concise(self, split: str, n: int) -> list[dict]:
        rng = self._rng("pairs-concise", split)
        out = []
        for i in range(n // 4):
            q, a, key = self._qa(split, rng)
            out.append(self._pair(self.prompt(q), a, town.ramble(a, rng), "concise", f"{key}:{i}"))
        for p in self._math_problems(split, n - n // 4, "pairs-concise", levels=self.size.chatty_levels):
            q = self.question(p, rng)
            rambling = answer_text(ramble_think(p.think()), p.answer)
            out.append(self._pair(self.prompt(q), self.solution(p), rambling, "concise", p.id,
                                  level=p.level, answer=str(p.answer)))
        return out

    # ------------------------------------------------------------------------------------------
    # RL prompts

    def rl_prompts(self, split: str = "train", level: int | None = None, n: int | None = None) -> list[dict]:
        """Prompts with a verifiable answer: {"prompt": [system, user], "answer": "68", "level": 2, "id"}.
        `level` None means levels 1-4; level 5 prompts also carry "tools" (they need the calculator).
        Train: `rl_per_level` per level, or `n` (a separate draw from SFT's, so partly new problems); test:
        up to `test_per_level` (or `n`) held-out problems per level. Score completions with
        `alignlab.tasks.tinyworld.verify(completion, record["answer"])`."""
        _check_split(split)
        levels = MATH_LEVELS if level is None else (level,)
        n = n or (self.size.rl_per_level if split == "train" else self.size.test_per_level)
        out = []
        for lv in levels:
            rng = self._rng("rl-ask", lv, split)
            for p in self.problems(lv, split, n, "rl" if split == "train" else "problems"):
                question = self.question(p, rng)
                record = {"prompt": self.prompt(question), "answer": str(p.answer), "level": lv, "id": p.id}
                if lv == ar.TOOL_LEVEL:
                    record["tools"] = self._tools()
                out.append(record)
        return out

    # ------------------------------------------------------------------------------------------
    # Tool use

    def _tool_call_turns(self, p: ar.Problem) -> list[dict]:
        call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": p.expression}}}
        return [
            _msg("assistant", "<think>This is too big to do in my head.</think>", tool_calls=[call]),
            _msg("tool", calculator_output({"expression": p.expression}), name="calculator"),
            _msg("assistant", answer_text(f"{p.expression} = {p.answer}", p.answer)),
        ]

    def tool_conversations(self, split: str = "train") -> list[dict]:
        """Chats with the calculator available ({"messages", "tools", "kind", "answer", "level", "id"}):

        - "tool_call" (3 in 4): a level-5 problem; the assistant thinks, calls
          calculator(expression), reads the result in a "tool" message and answers in the fixed
          format ("expression" holds the call it makes);
        - "direct" (1 in 4): a level 1-3 problem, answered in the head without a call."""
        _check_split(split)
        n = self.size.tool_conversations if split == "train" else self.size.test_per_level
        n_direct = n // 4
        rng = self._rng("tool-ask", split)
        out = []
        for p in self.problems(ar.TOOL_LEVEL, split, n - n_direct, "tool" if split == "train" else "problems"):
            out.append({
                "messages": [*self.prompt(self.question(p, rng)), *self._tool_call_turns(p)], "tools": self._tools(),
                "kind": "tool_call", "expression": p.expression, "answer": str(p.answer), "level": p.level, "id": p.id,
            })  # fmt: skip
        per = -(-n_direct // 3)
        direct = [p for lv in (1, 2, 3) for p in self.problems(lv, split, per, "tool-direct")][:n_direct]
        for p in direct:
            out.append({
                "messages": [*self.prompt(self.question(p, rng)), _msg("assistant", self.solution(p))],
                "tools": self._tools(), "kind": "direct", "answer": str(p.answer), "level": p.level, "id": p.id,
            })  # fmt: skip
        self._rng("tool-shuffle", split).shuffle(out)
        return out

    def service_conversations(self, split: str = "train") -> list[dict]:
        """Tool-use chats over the town's services and the calculator (services.conversations)."""
        _check_split(split)
        n = self.size.service_conversations if split == "train" else 5 * min(40, self.size.test_per_level)
        return services.conversations(self, split, n)

    def tool_prompts(self, split: str = "test") -> list[dict]:
        """Level-5 prompts for scoring tool calls: {"prompt", "tools", "answer", "value", "level", "id"};
        a call is right when its expression evaluates to `value` (see
        `alignlab.tasks.tinyworld.tool_call_correct`)."""
        _check_split(split)
        out = []
        for r in self.rl_prompts(split, ar.TOOL_LEVEL):
            out.append({**r, "value": int(r["answer"])})
        return out

    # ------------------------------------------------------------------------------------------
    # Tokenizer

    def tokenizer_training_text(self) -> str:
        """What the tokenizer is trained on: the pretraining text and the rendered training chats,
        with every digit removed, so that no merge contains a digit and each digit is one token."""
        from alignlab.text.template import render_template

        parts = self.pretraining_documents()
        for r in self.sft_conversations("train") + self.tool_conversations("train"):
            parts.append(render_template(self.chat_template, r["messages"], tools=r.get("tools")))
        for r in self.preference_pairs("train"):
            parts += [r["chosen"][0]["content"], r["rejected"][0]["content"]]
        return re.sub(r"\d", "", "<|endoftext|>".join(parts))

    def tokenizer(self, vocab_size: int = DEFAULT_VOCAB_SIZE):
        """A byte-level BPE (`alignlab.text.BPETokenizer`) fitted to this world: `vocab_size` ids in
        all, the 7 special tokens among them (<|endoftext|> is eos, <|pad|> pad, and the role
        tokens and <|end|> of the chat template, which it carries). Digits are always single tokens.
        Made once per (world, vocab_size); training takes about a second."""
        return _train_tokenizer(self.seed, self.size, vocab_size)


@lru_cache(maxsize=8)
def _train_tokenizer(seed: int, size: WorldSize, vocab_size: int):
    from alignlab.text.bpe import train_bpe

    world = TinyWorld(seed, size)
    return train_bpe(
        world.tokenizer_training_text(), vocab_size, special_tokens=SPECIAL_TOKENS,
        eos_token="<|endoftext|>", pad_token="<|pad|>", progress=False, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
