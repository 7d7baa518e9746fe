"""Task: one dataset or world, everything that knows what a good reply to it looks like.

    task = load_task("tinyworld:rl:3-4")           # or gsm8k, gsm8k:test, a file of prompt-only records
    records = task.records("train")                 # {"prompt": messages or text, "answer": ..., other columns}
    task.format_ok(reply)                           # the reply is in the format the prompt asks for
    task.extract(reply)                             # its final answer, or None
    task.correct(reply, record)                     # right, by the task's own rule
    task.reward(reply, record)                      # 1.0 / 0.0: nanochat's rule, the reward is the evaluation
    task.question(record)                           # what a judge sees of the prompt

Evaluation, reward functions, RL recipes (and data generators) read a task through these methods only, so a new
dataset is one new file here. `format_style` and `answer_style` name the formats of the trl-convention reward
functions in alignlab.rewards that score the same things (FormatReward(format_style),
CorrectnessReward(answer_style)).
"""

from __future__ import annotations

from alignlab.tasks.answers import answers_equal, extract_answer, format_ok, gold_answer


def prompt_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a text becomes one user message, a conversation is copied."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt) -> str:
    """The question of a prompt: the text itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


class Task:
    """A dataset of prompts with a rule for right replies. Subclasses set `name` and override what differs."""

    name = "task"
    format_style = "any"  # FormatReward's answer format (alignlab.rewards)
    answer_style = "auto"  # how extract_answer reads a reply (alignlab.tasks.answers.STYLES)

    def records(self, split: str = "train") -> list[dict]:
        raise NotImplementedError

    def format_ok(self, reply: str) -> bool:
        """<think>...</think> then an answer in any of the usual forms (Answer: line, tag, \\boxed{}, ####)."""
        return format_ok(reply, self.format_style)

    def extract(self, reply: str) -> str | None:
        return extract_answer(reply, self.answer_style)

    def correct(self, reply: str, record: dict | str) -> bool:
        """The extracted answer equals the record's gold answer (a record, or the gold answer itself)."""
        gold = record.get("answer") if isinstance(record, dict) else record
        return answers_equal(self.extract(reply), gold_answer(gold))

    def reward(self, reply: str, record: dict) -> float:
        return float(self.correct(reply, record))

    def question(self, record: dict) -> str:
        return prompt_text(record["prompt"])


class PromptRecords(Task):
    """Any prompt-only records in trl's format, {"prompt": messages or text, "answer": ..., other columns}, scored
    with the "any" answer format."""

    name = "generic"

    def __init__(self, rows: list[dict] | None = None):
        self.rows = rows or []

    def records(self, split: str = "train") -> list[dict]:
        return self.rows
