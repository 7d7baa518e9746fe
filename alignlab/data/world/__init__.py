"""TinyWorld: a seeded synthetic world with all the data a tiny model needs for every post-training stage.

Shipped as code, no data files. A ~1-5M-parameter model goes through pretraining, SFT, DPO, GRPO,
tool use and evaluation on it in minutes on a laptop CPU; the same seed gives identical records.

    from alignlab.data.world import TinyWorld
    world = TinyWorld(seed=0, size="default")        # or size="quick" for tests

    world.pretraining_text()              # str: ~300 KB of arithmetic facts, worked solutions, column
                                          #   additions, word problems, sentences about the town
    world.pretraining_documents()         # the same as a list of documents
    world.sft_conversations("train")      # [{"messages": [...], "kind": "math"|"qa"|"refusal"|"lookalike", ...}]
    world.preference_pairs("train", kinds=("correctness", "safety"))   # TRL conversational pairs
    world.rl_prompts("test", level=3)     # [{"prompt": [...], "answer": "406", "level": 3, "id": ...}]
    world.tool_conversations("train")     # chats that call the calculator (plus some that need not)
    world.tool_prompts("test")            # level-5 prompts to score tool calls on
    world.service_conversations("train")  # tool-use chats: weather, calendar, directory, calculator, no tool
    world.safety_prompts("test")          # attacks and benign look-alikes, labelled
    world.problems(level=2, split="test", n=50)   # the Problem objects behind the records

    tok = world.tokenizer()               # byte-level BPE, 768 ids, digits one token each, template set
    world.chat_template                   # the compact jinja template (template.py); tok carries it
    world.system_prompt, world.secret, world.refusal, world.tools, world.cast

    from alignlab.text import render_chat
    ids, mask = render_chat(tok, record["messages"], tools=record.get("tools"))   # mask = assistant tokens

Score model outputs with `alignlab.tasks.tinyworld` (answer accuracy, format, refusals, secret
leaks, tool calls).

The pieces, one idea per file:

    arithmetic.py   levels 1-5, worked steps, problem identity and the train/test split
    town.py         the cast and places (facts, questions about them), word problems (level 4)
    safety.py       the secret and the policy, attack and look-alike templates, spotting the secret
    calculator.py   the calculator tool: its schema and a safe evaluator
    services.py     the town's services (weather, calendar, directory) and the tool-use chats over them
    template.py     the chat template and special tokens
    world.py        TinyWorld: everything above turned into records

Every arithmetic reply ends in one fixed format, `<think>steps</think>\\nAnswer: N`. Splits are by
problem identity (operands, or a word problem's template and numbers), and no training text --
pretraining included -- states a held-out problem, even as a step of another problem's solution.
Safety prompts are split by template. README.md in this directory shows a record of every kind;
regenerate them (and the size and token-length numbers) with `python -m alignlab.data.world`.
"""

from alignlab.data.world.arithmetic import LEVEL_NAMES, LEVELS, TOOL_LEVEL, Problem, expression_key
from alignlab.data.world.calculator import CALCULATOR_TOOL, CalculatorError, calculate, calculator_output
from alignlab.data.world.safety import REFUSAL, contains_secret, secret_pattern
from alignlab.data.world.template import CHAT_TEMPLATE, SPECIAL_TOKENS
from alignlab.data.world.world import (
    MATH_LEVELS,
    PAIR_KINDS,
    SFT_KINDS,
    SIZES,
    SPLITS,
    TinyWorld,
    WorldSize,
    answer_text,
)

__all__ = [
    "CALCULATOR_TOOL",
    "CHAT_TEMPLATE",
    "LEVELS",
    "LEVEL_NAMES",
    "MATH_LEVELS",
    "PAIR_KINDS",
    "REFUSAL",
    "SFT_KINDS",
    "SIZES",
    "SPECIAL_TOKENS",
    "SPLITS",
    "TOOL_LEVEL",
    "CalculatorError",
    "Problem",
    "TinyWorld",
    "WorldSize",
    "answer_text",
    "calculate",
    "calculator_output",
    "contains_secret",
    "expression_key",
    "secret_pattern",
]
