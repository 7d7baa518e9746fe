"""Converters: common dataset layouts -> the SFT record formats (see alignlab.data.sft).

    alpaca_to_messages({"instruction", "input", "output"})     -> {"messages": [user, assistant]}
    alpaca_to_prompt_completion(record)                        -> {"prompt": Alpaca's prompt, "completion": output}
    gsm8k_to_messages({"question", "answer"}, think=True)      -> user: question,
                                                                  assistant: "<think>steps</think>\\nAnswer: 72"
    sharegpt_to_messages({"conversations": [{"from", "value"}]}) -> {"messages": [...]}

and the pieces they are made of: `gsm8k_final_answer` ("#### 1,000" -> "1000"), `strip_calculator`
(drops GSM8K's `<<48/2=24>>` calculator annotations), `think_format` / `parse_think` (reasoning in
`<think>...</think>`, then the answer line: the format TinyWorld's replies use too).

`CONVERTERS` names them for `convert=` in `load_sft_data`, the sft recipe and `alignlab inspect-data`.
A converter raises DataError naming the field ("field 'output': must be a string, got int"); the
caller puts the file and line in front.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from alignlab.data.errors import DataError

# ----------------------------------------------------------------------------------------------
# Alpaca: {"instruction", "input" (may be empty), "output"}; LLaMA-Factory's variant adds
# "system" and "history" ([[user, assistant], ...] turns before this one).

# Stanford Alpaca's prompts (as in its README and alpaca-lora), for prompt-completion training.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _text(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"got {type(value).__name__}"
        raise DataError(f"field {key!r}: must be a string, {got}")
    return value


def alpaca_user_text(record: dict) -> str:
    """The instruction, then the input (if any) after a blank line."""
    instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def alpaca_to_messages(record: dict, system: str | None = None) -> dict:
    """{"messages": [system?, (history turns), user: instruction + input, assistant: output]}."""
    system = _text(record, "system", required=False) or system
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(record.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DataError(f"field 'history'[{i}]: must be a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    messages += [{"role": "user", "content": alpaca_user_text(record)},
                 {"role": "assistant", "content": _text(record, "output")}]
    return {"messages": messages}


def alpaca_to_prompt_completion(record: dict, conversational: bool = False) -> dict:
    """Standard: {"prompt": Alpaca's prompt text, "completion": output} (for a base model without a
    chat template). Conversational: {"prompt": [user], "completion": [assistant]}."""
    output = _text(record, "output")
    if conversational:
        return {"prompt": [{"role": "user", "content": alpaca_user_text(record)}],
                "completion": [{"role": "assistant", "content": output}]}
    instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
    prompt = ALPACA_PROMPT if extra.strip() else ALPACA_PROMPT_NO_INPUT
    return {"prompt": prompt.format(instruction=instruction, input=extra), "completion": output}


# ----------------------------------------------------------------------------------------------
# GSM8K: {"question", "answer"}; the answer is worked steps with calculator annotations, then the
# final line "#### N":
#   "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n... = <<48+24=72>>72 clips ...\n#### 72"

CALCULATOR_SPAN = re.compile(r"<<[^<>]*>>")


def strip_calculator(text: str) -> str:
    """Drop GSM8K's calculator annotations: "48/2 = <<48/2=24>>24" -> "48/2 = 24"."""
    return CALCULATOR_SPAN.sub("", text)


def _split_gsm8k(answer: str) -> tuple[str, str]:
    steps, sep, final = answer.rpartition("####")
    if not sep:
        raise DataError("field 'answer': no final '#### N' line (is this GSM8K?)")
    final = final.strip().replace(",", "")  # "#### 1,000" -> "1000"
    if not final:
        raise DataError("field 'answer': the '####' line holds no answer")
    return steps.strip(), final


def gsm8k_final_answer(answer: str) -> str:
    """The number after "####", without thousands separators: "...\\n#### 1,080" -> "1080"."""
    return _split_gsm8k(answer)[1]


def gsm8k_steps(answer: str, calculator: str = "strip") -> str:
    """The worked steps before "####"; calculator annotations stripped ("strip") or kept ("keep")."""
    if calculator not in ("strip", "keep"):
        raise ValueError(f"calculator={calculator!r}: expected 'strip' or 'keep'")
    steps = _split_gsm8k(answer)[0]
    return strip_calculator(steps) if calculator == "strip" else steps


def gsm8k_reply(record: dict, think: bool = True, calculator: str = "strip", answer_prefix: str = "Answer: ") -> str:
    """The assistant's reply: "<think>steps</think>\\nAnswer: N" (think=True), or GSM8K's own
    "steps\\n#### N" with the calculator annotations stripped or kept (think=False)."""
    answer = _text(record, "answer")
    steps, final = gsm8k_steps(answer, calculator), gsm8k_final_answer(answer)
    return think_format(steps, final, answer_prefix) if think else f"{steps}\n#### {final}"


def gsm8k_to_messages(record: dict, think: bool = True, calculator: str = "strip", answer_prefix: str = "Answer: ",
                      system: str | None = None) -> dict:
    """{"messages": [system?, user: question, assistant: gsm8k_reply(...)]}."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": _text(record, "question")},
                 {"role": "assistant", "content": gsm8k_reply(record, think, calculator, answer_prefix)}]
    return {"messages": messages}


def gsm8k_to_prompt_completion(record: dict, think: bool = True, calculator: str = "strip",
                               answer_prefix: str = "Answer: ", conversational: bool = False) -> dict:
    """{"prompt": question, "completion": reply} (strings, or [user] / [assistant] message lists)."""
    question, reply = _text(record, "question"), gsm8k_reply(record, think, calculator, answer_prefix)
    if conversational:
        return {"prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": reply}]}
    return {"prompt": question, "completion": reply}


# ----------------------------------------------------------------------------------------------
# Chain of thought: reasoning inside <think>...</think>, then the answer line.

THINK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.DOTALL)


def think_format(reasoning: str, answer: Any, answer_prefix: str = "Answer: ") -> str:
    """"<think>{reasoning}</think>\\n{answer_prefix}{answer}", e.g. "<think>8 + 9 = 17</think>\\nAnswer: 17"."""
    return f"<think>{reasoning.strip()}</think>\n{answer_prefix}{answer}"


def parse_think(text: str) -> tuple[str | None, str]:
    """(reasoning, the rest) of a reply; reasoning is None when the reply does not open with <think>...</think>."""
    m = THINK.match(text)
    return (m.group(1).strip(), text[m.end():]) if m else (None, text)


# ----------------------------------------------------------------------------------------------
# ShareGPT: {"conversations": [{"from": "human" | "gpt" | "system" | ..., "value": text}]}

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool", "observation": "tool", "function_response": "tool"}


def sharegpt_to_messages(record: dict) -> dict:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError("field 'conversations': must be a non-empty list of {'from', 'value'} turns")
    messages = []
    for i, turn in enumerate(turns):
        who = turn.get("from") if isinstance(turn, dict) else None
        if who not in SHAREGPT_ROLES:
            raise DataError(f"field 'conversations'[{i}].from: must be one of {'/'.join(SHAREGPT_ROLES)}, got {who!r}")
        if not isinstance(turn.get("value"), str):
            raise DataError(f"field 'conversations'[{i}].value: must be a string")
        messages.append({"role": SHAREGPT_ROLES[who], "content": turn["value"]})
    out = {"messages": messages}
    if record.get("tools") is not None:
        out["tools"] = record["tools"]
    return out


# ----------------------------------------------------------------------------------------------

CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "alpaca": alpaca_to_messages,
    "alpaca_prompt_completion": alpaca_to_prompt_completion,
    "gsm8k": partial(gsm8k_to_messages, think=False),  # GSM8K's own "steps\n#### N", calculator spans stripped
    "gsm8k_think": gsm8k_to_messages,  # "<think>steps</think>\nAnswer: N"
    "gsm8k_prompt_completion": partial(gsm8k_to_prompt_completion, think=False),
    "sharegpt": sharegpt_to_messages,
}


def get_converter(name: str) -> Callable[[dict], dict]:
    if name not in CONVERTERS:
        raise DataError(f"unknown converter {name!r}; choose from {', '.join(CONVERTERS)}")
    return CONVERTERS[name]
