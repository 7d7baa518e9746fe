r"""Built-in reward functions, in trl's calling convention: fn(prompts, completions, **columns) -> list[float | None].

    format_reward         1.0 if the completion is <think>reasoning</think> then an "Answer: ..." line and nothing
                          else, 0.0 otherwise
    FormatReward(answer="line", prefilled=False)     the same for another answer format (below)
    correctness_reward    1.0 if the completion's answer equals the dataset's `answer` column, 0.0 if not (or if it
                          has none), None if the gold answer cannot be read
    CorrectnessReward(style="auto", gold_column="answer", rel_tol=0.0)
    length_penalty(max_length, cache, unit="tokens")  DAPO's soft overlong punishment, 0 down to -1
    weighted((fn, w), ...)                           one function: sum_k w_k * fn_k, with trl's None rules
    weighted_sum(values, weights), completion_text(completion)

The study guide's scheme -- +1 for the format, +1 for a right answer -- is

    reward = weighted((format_reward, 1.0), (correctness_reward, 1.0))     # 0, 1 or 2 per completion

Completions are strings or, for conversational data, lists of messages [{"role": "assistant", "content": ...}];
a conversational completion is scored on its last assistant message (the final reply: with tool calls the earlier
messages are calls and results), whose content may also be a list of {"type": "text", "text": ...} parts. The
functions take every other dataset column, and trl's extras (completion_ids, trainer_state, log_extra, ...), as
keyword arguments and ignore what they do not use. They are callable objects rather than closures so that they
pickle; each has a __name__ for logs.

None means "no reward for this completion": trl turns it into NaN, and the completion is left out of its group's
baseline and gets no advantage. `weighted` follows trl's aggregation (GRPOTrainer, multi_objective_aggregation=
"sum_then_normalize"): r = nansum_k w_k r_k -- a part that is None adds nothing -- and None only when every part is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from alignlab.tasks.answers import (
    ANSWER_FORMATS,
    STYLES,
    after_think,
    answers_equal,
    exact_answer,
    extract_answer,
    gold_answer,
)

Completion = str | list[dict[str, Any]]
RewardFn = Callable[..., list[float | None]]

# ----------------------------------------------------------------------------------------------------------------
# Completions as text


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))  # [{"type": "text", ...}]


def completion_text(completion: Completion) -> str:
    """A completion as the text to score: a string as is; for a list of messages, the content of the last assistant
    message (or of the last message, when none has a role)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    messages = [m for m in completion if m.get("role", "assistant") == "assistant"] or list(completion)
    return _content_text(messages[-1].get("content")) if messages else ""


def _all_text(completion: Completion) -> str:
    """Every message's content, joined: what a length in characters counts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    return "\n".join(_content_text(m.get("content")) for m in completion)


def reward_name(fn: Callable) -> str:
    """How logs name a reward function: its __name__ (a partial's function's), else its class name."""
    fn = getattr(fn, "func", fn)
    return getattr(fn, "__name__", None) or type(fn).__name__


# ----------------------------------------------------------------------------------------------------------------
# Format


class FormatReward:
    r"""1.0 if a completion is `<think>reasoning</think>` followed by the answer in the expected format, else 0.0.

    The reply must open with one <think> block (surrounding whitespace allowed, no nested or repeated think tags;
    trailing end-of-turn tokens are dropped), and what follows </think> must be, stripped of whitespace:

        answer="line"       one line "Answer: ...": TinyWorld's and `alignlab.data.converters.think_format`'s replies
        answer="tinyworld"  exactly TinyWorld's format, `<think>...</think>\nAnswer: N` with N a plain integer
                            (`alignlab.tasks.answers.EXACT_FORMAT`)
        answer="tag"        <answer>...</answer>, non-empty
        answer="boxed"      any text holding a non-empty \boxed{...}
        answer="gsm8k"      one line "#### ..."
        answer="any"        any of line, tag, boxed, gsm8k
        answer=<regex>      a pattern (string or compiled) the rest must match in full
        answer=<callable>   a test of the rest: f(rest) -> bool

    prefilled=True: the chat template already opened the block (the prompt ends with "<think>"), so the completion
    starts inside it and "<think>" is put back in front before checking.
    """

    def __init__(self, answer: str | re.Pattern | Callable[[str], bool] = "line", prefilled: bool = False):
        self.answer, self.prefilled = answer, prefilled
        self._pattern = None
        if isinstance(answer, re.Pattern):
            self._pattern = answer
        elif isinstance(answer, str) and answer != "tinyworld" and answer not in ANSWER_FORMATS:
            self._pattern = re.compile(answer, re.S)
        elif not isinstance(answer, str) and not callable(answer):
            raise TypeError(f"answer must be a format name, a regex or a callable, got {answer!r}")
        label = answer if isinstance(answer, str) else getattr(answer, "pattern", None) or reward_name(answer)
        self.__name__ = "format_reward" if answer == "line" and not prefilled else f"format_reward[{label}]"

    def ok(self, text: str) -> bool:
        """Whether one completion's text is in the format."""
        if self.prefilled:
            text = "<think>" + text
        if self.answer == "tinyworld":
            return exact_answer(text) is not None
        rest = after_think(text)
        if rest is None:
            return False
        if self._pattern is not None:
            return self._pattern.fullmatch(rest) is not None
        if callable(self.answer):
            return bool(self.answer(rest))
        return ANSWER_FORMATS[self.answer](rest)

    def __call__(self, prompts: Sequence | None = None, completions: Sequence[Completion] = (),
                 **kwargs) -> list[float]:
        return [1.0 if self.ok(completion_text(c)) else 0.0 for c in completions]

    def __repr__(self) -> str:
        return f"FormatReward(answer={self.answer!r}, prefilled={self.prefilled})"


format_reward = FormatReward()

# ----------------------------------------------------------------------------------------------------------------
# Correctness


class CorrectnessReward:
    """1.0 if a completion's answer equals the row's gold answer, 0.0 if it does not or there is none, None if the
    gold answer cannot be read (nothing after "####", a blank cell): that completion cannot be scored.

    The answer: `extract_answer(text, style)` -- style="auto" looks for an answer tag ("Answer: N",
    <answer>...</answer>), then \\boxed{}, then "#### N", then the last number, after the reasoning's </think>;
    style="tinyworld" takes N only from TinyWorld's exact format, which makes this `tinyworld.verify`.
    The gold: `gold_answer(columns[gold_column])` -- GSM8K's "...\\n#### 72" gives "72".
    Equal: `answers_equal(pred, gold, rel_tol)` -- exact numbers ("1,234" == 1234, "0.50" == "1/2"), else symbolic
    when math-verify or sympy is installed.

    Format is not required: the study guide scores it separately (`format_reward`), so a right number in a
    malformed reply still earns this reward.
    """

    def __init__(self, style: str = "auto", gold_column: str = "answer", rel_tol: float = 0.0):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style, self.gold_column, self.rel_tol = style, gold_column, rel_tol
        self.__name__ = "correctness_reward" if style == "auto" else f"correctness_reward[{style}]"

    def score(self, text: str, gold: Any) -> float | None:
        """The reward of one completion's text against one gold answer."""
        gold = gold_answer(gold)
        if gold is None:
            return None
        return float(answers_equal(extract_answer(text, self.style), gold, self.rel_tol))

    def __call__(self, prompts: Sequence | None = None, completions: Sequence[Completion] = (),
                 **columns) -> list[float | None]:
        if self.gold_column not in columns:
            have = sorted(k for k, v in columns.items() if isinstance(v, (list, tuple)))
            raise KeyError(f"{self.__name__} reads the gold answer from the dataset column {self.gold_column!r}, "
                           f"which was not passed (columns: {have})")
        golds = columns[self.gold_column]
        if len(golds) != len(completions):
            raise ValueError(f"{len(golds)} gold answers for {len(completions)} completions")
        return [self.score(completion_text(c), g) for c, g in zip(completions, golds)]

    def __repr__(self) -> str:
        return f"CorrectnessReward(style={self.style!r}, gold_column={self.gold_column!r}, rel_tol={self.rel_tol})"


correctness_reward = CorrectnessReward()

# ----------------------------------------------------------------------------------------------------------------
# Length


class LengthPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13), trl's get_soft_overlong_punishment:

        L = |y|,  L_max = max_length,  L_cache = cache

        R(y) = 0                                  L <= L_max - L_cache
               ((L_max - L_cache) - L) / L_cache  L_max - L_cache < L <= L_max   (0 falling linearly to -1)
               -1                                 L > L_max

    A penalty only: it never rewards being short. unit="tokens" counts `completion_ids` (trl passes them; DAPO
    counts tokens), unit="chars" counts the characters of the completion (every message's content). cache=0 is a
    hard cut: -1 beyond max_length, else 0.
    """

    def __init__(self, max_length: int, cache: int, unit: str = "tokens"):
        if unit not in ("tokens", "chars"):
            raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
        if max_length <= 0 or not 0 <= cache <= max_length:
            raise ValueError(f"need max_length > 0 and 0 <= cache <= max_length, got {max_length}, {cache}")
        self.max_length, self.cache, self.unit = max_length, cache, unit
        self.__name__ = "length_penalty"

    def penalty(self, length: int) -> float:
        start = self.max_length - self.cache
        if length <= start:
            return 0.0
        if length <= self.max_length:
            return (start - length) / self.cache
        return -1.0

    def __call__(self, prompts: Sequence | None = None, completions: Sequence[Completion] = (),
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs) -> list[float]:
        if self.unit == "tokens":
            if completion_ids is None:
                raise ValueError("length_penalty(unit='tokens') counts completion_ids, which were not passed; "
                                 "pass them, or use unit='chars'")
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(_all_text(c)) for c in completions]
        return [self.penalty(n) for n in lengths]

    def __repr__(self) -> str:
        return f"LengthPenalty(max_length={self.max_length}, cache={self.cache}, unit={self.unit!r})"


def length_penalty(max_length: int, cache: int, unit: str = "tokens") -> LengthPenalty:
    """DAPO's soft overlong punishment as a reward function (see LengthPenalty)."""
    return LengthPenalty(max_length, cache, unit)


# ----------------------------------------------------------------------------------------------------------------
# Weighted sums


def _missing(r: float | None) -> bool:
    return r is None or (isinstance(r, float) and math.isnan(r))


def weighted_sum(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """sum_k w_k r_k over the parts that are not None (NaN counts as None), or None when every part is: trl's
    nansum over reward functions and its "unscorable" completion."""
    if len(values) != len(weights):
        raise ValueError(f"{len(values)} rewards for {len(weights)} weights")
    present = [(r, w) for r, w in zip(values, weights) if not _missing(r)]
    return sum(w * r for r, w in present) if present else None


class Weighted:
    """Reward functions combined into one: r = sum_k w_k r_k per completion, with `weighted_sum`'s None rules.

    The parts run one after the other with the same arguments. A part that raises makes the whole call raise:
    to keep the other parts' rewards when one fails, give the parts to RewardRunner (with weights) instead.
    """

    def __init__(self, *parts: tuple[RewardFn, float]):
        if not parts:
            raise ValueError("weighted() needs at least one (function, weight) pair")
        for part in parts:
            if not (isinstance(part, tuple) and len(part) == 2 and callable(part[0]) and isinstance(part[1], Real)):
                raise TypeError(f"weighted() takes (function, weight) pairs, got {part!r}")
        self.parts = [(fn, float(w)) for fn, w in parts]
        self.__name__ = "+".join(f"{w:g}*{reward_name(fn)}" for fn, w in self.parts)

    def __call__(self, prompts: Sequence | None = None, completions: Sequence[Completion] = (),
                 **columns) -> list[float | None]:
        results = []
        for fn, _ in self.parts:
            rewards = list(fn(prompts=prompts, completions=completions, **columns))
            if len(rewards) != len(completions):
                raise ValueError(f"{reward_name(fn)} returned {len(rewards)} rewards for {len(completions)} "
                                 "completions")
            results.append(rewards)
        weights = [w for _, w in self.parts]
        return [weighted_sum(values, weights) for values in zip(*results)]

    def __repr__(self) -> str:
        return f"weighted({', '.join(f'({reward_name(fn)}, {w:g})' for fn, w in self.parts)})"


def weighted(*parts: tuple[RewardFn, float]) -> Weighted:
    """One reward function from (function, weight) pairs: sum_k w_k r_k, None parts left out, None if all are."""
    return Weighted(*parts)
