"""GSM8K (Cobbe et al. 2021, arXiv:2110.14168) as RL prompts with a verifiable answer: loading its rows.

    records = load_gsm8k("test")                          # Hugging Face: openai/gsm8k, config main
    records = load_gsm8k("../shared/data/gsm8k/test.jsonl")   # or a local copy ({"question", "answer"} rows)
    records[0] -> {"prompt": [system, user: question], "answer": "18", "question": ..., "solution": ...}

Scoring replies is the task's (alignlab.tasks.gsm8k: GSM8K().correct, score).

GSM8K's rows are {"question", "answer"}, the answer being worked steps with calculator annotations and a last line
"#### N". A record here is in trl's prompt-only format: "prompt" holds the chat messages (a system prompt asking for
the reasoning in <think>...</think> and then one line "Answer: N", and the question), "answer" the gold number N
(commas dropped), "solution" the worked steps. Those are the columns GRPO's reward functions read
(`alignlab.rewards.correctness_reward` takes the `answer` column).
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
