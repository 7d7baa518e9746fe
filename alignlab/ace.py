"""ACE, agentic context engineering: a model gets better at a task by curating its context, not its weights.

    alignlab ace --model runs/p/sft/model --source tinyworld:rl:3-4 --rounds 8 --out runs/ace

Zhang et al. 2025, "Agentic Context Engineering" (arXiv:2510.04618), after Dynamic Cheatsheet (Suzgun et al. 2025):
the context is a playbook of short entries that grows by small deltas instead of being rewritten, so that what was
learnt is not summarised away ("context collapse"). Each round:

1. Generator  the model answers a batch of training tasks with the playbook in its system prompt
2. Reflector  lessons from the replies, checked against the task's answers: `rules` (TinyWorld's worked steps: a
              wrong step "7 * 8 = 54" becomes the lesson "7 * 8 = 56") or `model` (a chat model is shown the
              question, the reply and the right answer and writes one "Lesson: ..."); and, for every entry a reply
              used (its step appears in the reply), whether the reply got that step right
3. Curator    delta operations, never a rewrite: add the new lessons (deduplicated by their normalised text),
              count each entry helpful or harmful, remove entries whose harmful count leads by prune_margin, and
              keep to the context budget (old and new entries ranked by helpful - harmful, the lowest out).
              With `gate` (the default) the round's batch is answered again with the edited playbook, and an edit
              that scores lower than the playbook before it is rejected (its counts kept): an addition to this
              module, not the paper's
4. the playbook file (playbook.json) gets the next version; every operation goes to playbook_log.jsonl

At the end the held-out tasks are answered with the final playbook and with the fixed prompt (no playbook), and the
paired difference in accuracy gets a bootstrap confidence interval (eval/stats.py). Entries, context tokens and
training accuracy per round go to rounds.jsonl and plots/ace.png (each round's accuracy with the playbook it was
answered with: entries_used, tokens_used; entries after the round's edit: entries).
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignlab.data.cache import atomic_path
from alignlab.data.world.arithmetic import apply
from alignlab.eval.stats import paired_bootstrap_ci, wilson_interval
from alignlab.tasks import Task, load_source, prompt_text
from alignlab.tasks.tinyworld import worked_steps

Solver = Callable[[list[list[dict]]], list[str]]  # chat prompts -> replies
NOTES = "Notes:"


# ----------------------------------------------------------------------------------------------------------------
# The playbook


@dataclass
class Entry:
    id: int
    text: str
    helpful: int = 0
    harmful: int = 0
    added: int = 0  # the round it was added in

    @property
    def score(self) -> int:
        return self.helpful - self.harmful


def normalise(text: str) -> str:
    """The dedup key of a lesson: lower case, single spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!")


@dataclass
class Playbook:
    entries: list[Entry] = field(default_factory=list)
    version: int = 0
    next_id: int = 1

    def render(self) -> str:
        """The playbook as context: one entry a line, the most helpful first."""
        ranked = sorted(self.entries, key=lambda e: (-e.score, e.id))
        return "\n".join([NOTES, *(e.text for e in ranked)]) if ranked else ""

    def find(self, text: str) -> Entry | None:
        key = normalise(text)
        return next((e for e in self.entries if normalise(e.text) == key), None)

    def apply(self, ops: list[dict], round_: int) -> None:
        """Apply delta operations in order: {"op": "add", "text"} | {"op": "helpful" | "harmful" | "remove", "id"}."""
        by_id = {e.id: e for e in self.entries}
        for op in ops:
            if op["op"] == "add":
                entry = Entry(self.next_id, op["text"], added=round_)
                self.entries.append(entry)
                by_id[entry.id] = entry
                self.next_id += 1
            elif op["op"] in ("helpful", "harmful"):
                setattr(by_id[op["id"]], op["op"], getattr(by_id[op["id"]], op["op"]) + op.get("n", 1))
            elif op["op"] == "remove":
                self.entries = [e for e in self.entries if e.id != op["id"]]
            else:
                raise ValueError(f"unknown playbook operation {op!r}")
        self.version += 1

    def save(self, path: Path) -> None:
        """Atomically: the file is either the old version or the new one."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"version": self.version, "next_id": self.next_id,
                                       "entries": [asdict(e) for e in self.entries]}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Playbook:
        data = json.loads(path.read_text())
        return cls([Entry(**e) for e in data["entries"]], data["version"], data["next_id"])


def with_playbook(prompt: list[dict], playbook: Playbook) -> list[dict]:
    """The prompt with the playbook appended to its system message (or as one, when it has none)."""
    notes = playbook.render()
    if not notes:
        return prompt
    if prompt and prompt[0]["role"] == "system":
        return [{**prompt[0], "content": prompt[0]["content"] + "\n" + notes}, *prompt[1:]]
    return [{"role": "system", "content": notes}, *prompt]


# ----------------------------------------------------------------------------------------------------------------
# 2. Reflectors: (question, reply, answer, right) -> lessons; and which entries the reply used, right or wrong


def step_fact(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {apply(a, op, b)}"


def rule_lessons(reply: str) -> list[str]:
    """TinyWorld's rule reflector: every wrong worked step, corrected ("7 * 8 = 54" -> "7 * 8 = 56")."""
    return [step_fact(s.a, s.op, s.b) for s in worked_steps(reply) if not s.right]


def entry_usage(playbook: Playbook, reply: str) -> dict[int, bool]:
    """{entry id: the reply got that step right} for every entry whose step "a op b" the reply worked out."""
    facts = {f"{s.a} {s.op} {s.b}": s.right for s in worked_steps(reply)}
    out = {}
    for e in playbook.entries:
        lhs = e.text.split(" = ")[0].strip()
        if lhs in facts:
            out[e.id] = facts[lhs]
    return out


REFLECT_PROMPT = ("A student answered a question. Write one short, general lesson that would have helped, on one line "
                  "starting with 'Lesson:'.\nQuestion: {question}\nStudent's reply: {reply}\nRight answer: {answer}")


def model_lessons(chat: Callable[[list[dict]], str], question: str, reply: str, answer: str) -> list[str]:
    """A chat model's lesson on a failed reply (the 'Lesson:' line of its answer), for tasks without worked steps."""
    text = chat([{"role": "user", "content": REFLECT_PROMPT.format(question=question, reply=reply, answer=answer)}])
    m = re.search(r"Lesson:\s*(.+)", text or "")
    return [m.group(1).strip()[:300]] if m else []


# ----------------------------------------------------------------------------------------------------------------
# 3. The curator


@dataclass
class CuratorConfig:
    max_entries: int = 10  # the context budget, in entries (a small model's context is short)
    max_new: int = 4  # lessons added per round, the most frequent first
    prune_margin: int = 2  # remove an entry once harmful - helpful reaches this


def curate(playbook: Playbook, lessons: list[str], usage: list[dict[int, bool]], cfg: CuratorConfig,
           ) -> tuple[list[dict], dict]:
    """Delta operations for one round and their counts: helpful/harmful tallies, new deduplicated lessons, removals."""
    ops, counts = [], {"lessons": len(lessons), "duplicates": 0, "added": 0, "removed": 0}
    tally: dict[int, list[int]] = {}
    for used in usage:
        for i, right in used.items():
            tally.setdefault(i, [0, 0])[0 if right else 1] += 1
    for i, (good, bad) in sorted(tally.items()):
        if good:
            ops.append({"op": "helpful", "id": i, "n": good})
        if bad:
            ops.append({"op": "harmful", "id": i, "n": bad})
    freq: dict[str, int] = {}
    for text in lessons:
        if playbook.find(text) is not None:
            counts["duplicates"] += 1
        else:
            freq[normalise(text)] = freq.get(normalise(text), 0) + 1
    counts["duplicates"] += sum(freq.values()) - len(freq)
    first = {normalise(t): t for t in reversed(lessons)}
    new = [first[k] for k, _ in sorted(freq.items(), key=lambda kv: -kv[1])[:min(cfg.max_new, cfg.max_entries)]]
    # removals: entries whose harmful count leads by prune_margin; then, over the budget, the lowest helpful - harmful
    # of old and new together (a new lesson counts 0 and, at equal score, an older entry goes first)
    score = {e.id: e.score + tally.get(e.id, [0, 0])[0] - tally.get(e.id, [0, 0])[1] for e in playbook.entries}
    drop = [e.id for e in playbook.entries if -score[e.id] >= cfg.prune_margin]
    ranked = [(score[e.id], e.id, e.id) for e in playbook.entries if e.id not in drop]
    ranked += [(0, playbook.next_id + j, text) for j, text in enumerate(new)]  # new ones: the newest ids
    ranked.sort(key=lambda x: (x[0], x[1]))
    cut = ranked[:max(0, len(ranked) - cfg.max_entries)]
    drop += [item for _, _, item in cut if isinstance(item, int)]
    left_out = {item for _, _, item in cut if isinstance(item, str)}
    for text in new:
        if text not in left_out:
            ops.append({"op": "add", "text": text})
            counts["added"] += 1
    ops += [{"op": "remove", "id": i} for i in drop]
    counts["removed"] = len(drop)
    return ops, counts


# ----------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class ACEConfig:
    source: str = "tinyworld:rl:3-4"  # training tasks (a tasks source with answers)
    val_source: str = "tinyworld:rl:3-4:test@0"  # held-out tasks
    rounds: int = 8
    per_round: int = 48  # training tasks a round
    val_tasks: int = 200
    reflector: str = "rules"  # rules (TinyWorld's worked steps) | model
    gate: bool = True  # answer the round's batch again with the edited playbook; reject the edit if it scores less
    seed: int = 0
    curator: CuratorConfig = field(default_factory=CuratorConfig)


def accuracy(task: Task, replies: list[str], records: list[dict]) -> list[bool]:
    return [bool(task.correct(o, r)) for o, r in zip(replies, records)]


def run_ace(solve: Solver, cfg: ACEConfig, out: Path, count_tokens: Callable[[str], int] = len,
            reflect_chat: Callable[[list[dict]], str] | None = None, log: Callable[[str], None] = print) -> dict:
    """The ACE loop (module docstring) with `solve` as the Generator; returns the summary written to result.json."""
    if cfg.reflector not in ("rules", "model"):
        raise ValueError(f"reflector must be rules or model, got {cfg.reflector!r}")
    if cfg.reflector == "model" and reflect_chat is None:
        raise ValueError("reflector=model needs a chat model to reflect with")
    task, records = load_source(cfg.source)
    _, val = load_source(cfg.val_source)
    val = random.Random(f"ace-val:{cfg.seed}").sample(val, min(cfg.val_tasks, len(val)))
    rng = random.Random(f"ace-train:{cfg.seed}")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("rounds.jsonl", "playbook_log.jsonl"):
        (out / name).unlink(missing_ok=True)
    playbook = Playbook()
    for r in range(1, cfg.rounds + 1):
        batch = rng.sample(records, min(cfg.per_round, len(records)))
        used = {"entries_used": len(playbook.entries), "tokens_used": count_tokens(playbook.render())}
        replies = solve([with_playbook(x["prompt"], playbook) for x in batch])  # 1. generate
        right = accuracy(task, replies, batch)
        lessons, usage = [], []  # 2. reflect
        for x, reply, ok in zip(batch, replies, right):
            usage.append(entry_usage(playbook, reply))
            if not ok:
                lessons += (rule_lessons(reply) if cfg.reflector == "rules"
                            else model_lessons(reflect_chat, prompt_text(x["prompt"]), reply, str(x["answer"])))
        ops, counts = curate(playbook, lessons, usage, cfg.curator)  # 3. curate
        candidate = copy.deepcopy(playbook)
        candidate.apply(ops, r)
        counts["rejected"] = 0
        if cfg.gate and any(op["op"] in ("add", "remove") for op in ops):  # the batch again, with the new playbook
            again = accuracy(task, solve([with_playbook(x["prompt"], candidate) for x in batch]), batch)
            if sum(again) < sum(right):  # the edit made things worse: keep only the counts
                ops = [op for op in ops if op["op"] in ("helpful", "harmful")]
                counts.update(rejected=counts["added"] + counts["removed"], added=0, removed=0)
                candidate = copy.deepcopy(playbook)
                candidate.apply(ops, r)
        playbook = candidate  # 4. the next version
        playbook.save(out / "playbook.json")
        with open(out / "playbook_log.jsonl", "a") as f:
            f.write("".join(json.dumps({"round": r, "version": playbook.version, **op}) + "\n" for op in ops))
        row = {"round": r, "train_accuracy": sum(right) / len(right), **used, "entries": len(playbook.entries),
               "context_tokens": count_tokens(playbook.render()), **counts}
        with open(out / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"round {r}: train accuracy {row['train_accuracy']:.1%} with {used['entries_used']} entries "
            f"({used['tokens_used']} tokens); then +{counts['added']} -{counts['removed']}, {counts['rejected']} "
            f"rejected, {counts['duplicates']} duplicate lessons: {row['entries']} entries")
    # held-out: the same tasks with the fixed prompt and with the curated playbook
    fixed = accuracy(task, solve([x["prompt"] for x in val]), val)
    curated = accuracy(task, solve([with_playbook(x["prompt"], playbook) for x in val]), val)
    diff, low, high = paired_bootstrap_ci([float(x) for x in fixed], [float(x) for x in curated], seed=cfg.seed)
    n = len(val)
    result = {"val_tasks": n, "fixed_prompt": sum(fixed) / n, "fixed_prompt_ci": wilson_interval(sum(fixed), n),
              "playbook": sum(curated) / n, "playbook_ci": wilson_interval(sum(curated), n),
              "difference": diff, "difference_ci": [low, high], "entries": len(playbook.entries),
              "playbook_version": playbook.version, "context_tokens": count_tokens(playbook.render()),
              "config": asdict(cfg)}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_rounds(out / "rounds.jsonl", out / "plots" / "ace.png", result)
    return result


def plot_rounds(path: Path, png: Path, result: dict) -> Path:
    """Training accuracy, playbook entries and context tokens per round; the held-out comparison in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import save_figure

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("train_accuracy", "entries_used", "tokens_used"),
                              ("training accuracy", "playbook entries it was answered with",
                               "playbook tokens it was answered with")):
        ax.plot(rounds, [r[key] for r in rows], "o-")
        ax.set_title(label)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.suptitle(f"ACE: held-out accuracy {result['fixed_prompt']:.1%} with the fixed prompt, "
                 f"{result['playbook']:.1%} with the playbook (difference {result['difference']:+.1%}, "
                 f"95% CI {result['difference_ci'][0]:+.1%} to {result['difference_ci'][1]:+.1%})", fontsize=10)
    return save_figure(fig, png)
