"""GSM8K (Cobbe et al. 2021, arXiv:2110.14168) as RL prompts with a verifiable answer, and its exact-match scorer.

    records = load_gsm8k("test")                          # Hugging Face: openai/gsm8k, config main
    records = load_gsm8k("../shared/data/gsm8k/test.jsonl")   # or a local copy ({"question", "answer"} rows)
    records[0] -> {"prompt": [system, user: question], "answer": "18", "question": ..., "solution": ...}

    replies = ...                                         # what a model wrote for each record["prompt"]
    score(replies, records) -> {"accuracy", "format_rate", "format_ok_wrong", "n"}

GSM8K's rows are {"question", "answer"}, the answer being worked steps with calculator annotations and a last line
"#### N". A record here is in trl's prompt-only format: "prompt" holds the chat messages (a system prompt asking for
the reasoning in <think>...</think> and then one line "Answer: N", and the question), "answer" the gold number N
(commas dropped), "solution" the worked steps. Those are the columns GRPO's reward functions read
(`alignlab.rewards.correctness_reward` takes the `answer` column).

Exact match: `is_correct(reply, gold)` extracts the reply's final answer with `alignlab.rewards.extract_answer`
(style "auto": an "Answer:" line or <answer> tag, else \\boxed{}, else "#### N", else the last number -- only after
the reasoning's </think>) and compares it with the gold number exactly (`answers_equal`: "1,000" == "1000.00" ==
1000; 0.5 == "1/2"). `format_ok(reply)` is the format the system prompt asks for (`FormatReward("line")`): a
<think> block, then one "Answer: ..." line and nothing else. format_ok_wrong, the share of replies in the right
format with a wrong answer, is one of GRPO's reward-hacking monitors: format learned, maths not.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.data.loaders import read_rows

HF_NAME, HF_CONFIG = "openai/gsm8k", "main"
SPLITS = ("train", "test")

SYSTEM_PROMPT = ("Solve the math problem. Think step by step inside <think> </think>, then give only the final "
                 "number on its own line as: Answer: <number>")


def hf_source(split: str = "train") -> str:
    """The loader source of a GSM8K split on the Hugging Face Hub: hf:openai/gsm8k:main/SPLIT."""
    return f"hf:{HF_NAME}:{HF_CONFIG}/{split}"


def gsm8k_record(row: dict, system: str | None = SYSTEM_PROMPT, where: str = "record") -> dict:
    """One GSM8K row {"question", "answer"} -> {"prompt": messages, "answer": gold number, "question", "solution"}."""
    from alignlab.data.converters import gsm8k_final_answer, gsm8k_steps

    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
        raise DataError(f"{where}: a GSM8K row needs the text fields 'question' and 'answer', got {sorted(row)}")
    try:
        gold, steps = gsm8k_final_answer(answer), gsm8k_steps(answer)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question.strip()})
    return {"prompt": messages, "answer": gold, "question": question.strip(), "solution": steps}


def load_gsm8k(source: str | Path = "train", limit: int | None = None,
               system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """GSM8K as RL records. source: "train" or "test" (the Hugging Face dataset openai/gsm8k, config main), a local
    file of {"question", "answer"} rows (.jsonl, .json, .parquet, ...), or any hf:NAME[:CONFIG][/SPLIT] in GSM8K's
    layout. `limit` keeps the first rows."""
    source = str(source)
    rows = read_rows(hf_source(source) if source in SPLITS else source)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{source}: no GSM8K rows")
    return [gsm8k_record(r.record, system, r.where) for r in rows]


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def format_ok(reply: str) -> bool:
    """The reply is <think>...</think> followed by one line "Answer: ..." (what SYSTEM_PROMPT asks for)."""
    from alignlab.rewards import FormatReward

    return FormatReward("line").ok(reply)


def extract(reply: str) -> str | None:
    """The reply's final answer as written (alignlab.rewards.extract_answer, style auto), or None."""
    from alignlab.rewards import extract_answer

    return extract_answer(reply, "auto")


def is_correct(reply: str, gold: str) -> bool:
    """Exact match: the reply's extracted final answer equals the gold number (exactly, as numbers)."""
    from alignlab.rewards import answers_equal, gold_answer

    return answers_equal(extract(reply), gold_answer(gold))


def score(replies: list[str], records: list[dict]) -> dict[str, float]:
    """Exact-match accuracy of replies against records' gold answers, the format rate, and the share of replies in
    the right format with a wrong answer."""
    if len(replies) != len(records):
        raise ValueError(f"{len(replies)} replies for {len(records)} records")
    n = len(replies)
    if n == 0:
        return {"accuracy": float("nan"), "format_rate": float("nan"), "format_ok_wrong": float("nan"), "n": 0}
    correct = [is_correct(out, r["answer"]) for out, r in zip(replies, records)]
    formatted = [format_ok(out) for out in replies]
    return {"accuracy": sum(correct) / n, "format_rate": sum(formatted) / n,
            "format_ok_wrong": sum(f and not c for f, c in zip(formatted, correct)) / n, "n": n}
