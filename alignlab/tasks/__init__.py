"""Tasks: each dataset or world as one object that knows its records and what a right reply is.

    base.py       Task (records by split, format_ok, extract, correct, reward, question) and PromptRecords (any
                  prompt-only records)
    tinyworld.py  TinyWorld's scorers (answers, step errors, refusals, leaks, tool calls) and its tasks:
                  TinyWorldMath (levels), TinyWorldSafety, TinyWorldTools
    gsm8k.py      GSM8K: exact match of the final number
    multiple_choice.py  questions with options, scored by answer log-likelihood (acc, acc_norm)
    humaneval.py  HumanEval's problems and the program a completion makes (eval runs it in the sandbox)
    mt_bench.py   MT-Bench's two-turn questions and reference answers (a judge grades them)
    instructions.py  TinyWorld questions with verifiable format instructions (IFEval-style)
    answers.py    answers and formats in any reply: extract_answer, gold_answer, parse_number, answers_equal,
                  format_ok (<think> then an answer line, tag, \\boxed{} or ####)
    symbolic.py   symbolic equality with math-verify or sympy (optional), bounded so no answer can hang it
    sources.py    the source grammar: load_source("tinyworld:rl:3-4:test@0") -> (task, records)

eval/, rewards/ and recipes/ read tasks through these; tasks import only data/ and text/ below them.
"""

from alignlab.tasks.base import PromptRecords, Task, prompt_messages, prompt_text
from alignlab.tasks.gsm8k import GSM8K
from alignlab.tasks.sources import default_val_source, load_source, task_for, world_spec
from alignlab.tasks.tinyworld import TinyWorldMath, TinyWorldSafety, TinyWorldTools

__all__ = ["GSM8K", "PromptRecords", "Task", "TinyWorldMath", "TinyWorldSafety", "TinyWorldTools",
           "default_val_source", "load_source", "prompt_messages", "prompt_text", "task_for", "world_spec"]
