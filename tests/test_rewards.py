"""alignlab.rewards: answer extraction and equality, the built-in rewards (on TinyWorld's and GSM8K's real formats),
weighted sums with trl's None rules, and RewardRunner keeping a run alive through functions that raise, hang, or
return the wrong length."""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from alignlab.data.converters import gsm8k_reply
from alignlab.data.world import TinyWorld
from alignlab.rewards import (
    CorrectnessReward,
    FormatReward,
    RewardRunner,
    answers_equal,
    completion_text,
    correctness_reward,
    extract_answer,
    format_reward,
    gold_answer,
    length_penalty,
    parse_number,
    safe_rewards,
    symbolic_equal,
    weighted,
    weighted_sum,
)
from alignlab.tasks import tinyworld

from .hf_models import require

GSM8K = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"
THINK = "<think>23 + 40 = 63\n63 + 5 = 68</think>"


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


# --- extraction ---------------------------------------------------------------------------------------------------

EXTRACT = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
    ("#### 1,000\n", "1,000"),
    (r"So the probability is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),  # nested braces
    (r"first \boxed{3}, then \boxed{{1}+{2}} at last", "{1}+{2}"),  # the last box, nested groups balanced
    ("Answer: -1,234", "-1,234"),
    ("**Final Answer:** 18", "18"),
    ("<answer>3/4</answer>", "3/4"),
    ("<SOLUTION> 42 </SOLUTION>", "42"),
    ("I think it's 12, no wait, 15 apples.", "15"),  # the last number
    ("She has 5-3=2 left", "2"),  # "-3" here is subtraction, not a sign
    ("The change is x = -3.", "-3"),
    ("no digits at all", None),
    ("", None),
    (f"{THINK}\nAnswer: 68<|end|>", "68"),  # a trailing end-of-turn token is markup
    ("<think>Maybe 7, maybe 9.</think>\nI am not sure.", None),  # numbers in the reasoning are not answers
    ("<think>so far 7 + 2 = 9", None),  # the reasoning never closed: truncated, no answer
    (r"Answer: 5 (see \boxed{7})", "5 (see \\boxed{7})"),  # "auto" tries the answer tag before \boxed{}
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_styles():
    text = "Answer: 5\nThe box says \\boxed{7}, the hashes #### 9 and then 11 more"
    assert [extract_answer(text, s) for s in ("tag", "boxed", "gsm8k", "number")] == ["5", "7", "9 and then 11 more",
                                                                                      "11"]
    assert extract_answer(r"\boxed{12", "boxed") is None  # never closed
    assert extract_answer("1,234,567 and 1,2345", "number") == "2345"  # "1,2345" is not a grouped number
    # "tinyworld": only TinyWorld's exact format (a plain integer, nothing after it)
    assert extract_answer(f"{THINK}\nAnswer: 68", "tinyworld") == "68"
    assert extract_answer(f"{THINK}\nAnswer: 1,234", "tinyworld") is None
    assert extract_answer(f"{THINK}\nAnswer: 1,234", "auto") == "1,234"
    with pytest.raises(ValueError, match="style must be one of"):
        extract_answer("1", "latex")


PARSE = [
    ("1,234", Fraction(1234)),
    ("-1,234.50", Fraction(-2469, 2)),
    ("3/4", Fraction(3, 4)),
    (r"\frac{1}{2}", Fraction(1, 2)),
    (r"-\dfrac{3}{4}", Fraction(-3, 4)),
    ("$18.00", Fraction(18)),
    (r"\$1{,}000", Fraction(1000)),
    ("72.", Fraction(72)),  # a trailing full stop
    (".5", Fraction(1, 2)),
    ("+5", Fraction(5)),
    ("\u22125", Fraction(-5)),  # a Unicode minus sign
    ("50%", Fraction(50)),  # the percent sign dropped
    ("18 dollars", Fraction(18)),
    ("68. Hope that helps!", Fraction(68)),  # words after the number, no digits among them
    ("5 or 6", None),
    (r"18\text{ dollars}", Fraction(18)),
    (r"\boxed{7}", Fraction(7)),
    ("0.1", Fraction(1, 10)),  # exact, not the float 0.1000000000000000055...
    ("12/0", None),
    ("x^2", None),
    ("2x", None),
    ("1,23", None),  # a decimal comma? not guessed
    ("3 + 4", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "value"), PARSE)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_parse_percent_and_integers():
    assert parse_number("50%", percent=True) == Fraction(1, 2)
    assert parse_number(72) == 72 and parse_number(0.5) == Fraction(1, 2)


def test_answers_equal_numbers():
    halves = [0.5, "1/2", "0.50", r"\frac{1}{2}", "$0.5$", r"\boxed{\dfrac{1}{2}}", ".5"]
    for a in halves:
        for b in halves:
            assert answers_equal(a, b), (a, b)
    assert answers_equal("-1,234", "-1234") and answers_equal("70,000", "70000") and answers_equal(72, "72.")
    assert not answers_equal("1/3", "0.333") and not answers_equal("0.333", "1/3")
    assert answers_equal("0.333", "1/3", rel_tol=0.01) and not answers_equal("0.3", "1/3", rel_tol=0.01)
    assert not answers_equal("-72", "72") and not answers_equal(None, "72") and not answers_equal("72", None)
    assert not answers_equal("", "")


def test_numeric_equality_needs_neither_sympy_nor_math_verify(monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)  # "import sympy" now raises ImportError
    monkeypatch.setitem(sys.modules, "math_verify", None)
    assert answers_equal(r"\frac{1}{2}", "0.50") and answers_equal("1,234", "1234.0")
    assert not answers_equal(r"\sqrt{8}", r"2\sqrt{2}")  # symbolic: not without them
    assert not symbolic_equal("x+1", "1+x")


def test_symbolic_equality_with_sympy(tmp_path):
    require("sympy", reason="sympy is optional; symbolic equality needs it (or math-verify)")
    if "math_verify" in sys.modules or _installed("math_verify"):
        pytest.skip("math-verify is installed and takes precedence over sympy")
    assert answers_equal(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}")
    assert answers_equal(r"2\sqrt{2}", r"\sqrt{8}") and answers_equal(r"\sqrt[3]{27}", "3")
    assert answers_equal("x+1", "1+x") and answers_equal("2^{10}", "1024") and answers_equal(r"2 \cdot \pi", r"\pi 2")
    assert not answers_equal("x+1", "x+2") and not answers_equal(r"\sqrt{2}", "1.4142")
    # sympy's parser evaluates Python: nothing but a small LaTeX subset may reach it
    marker = tmp_path / "pwned"
    assert not answers_equal(f"open('{marker}', 'w')", "0") and not marker.exists()
    assert not answers_equal("__import__('os').getpid()", str(os.getpid()))
    start = time.perf_counter()
    assert not answers_equal("9^9^9^9", "1") and not answers_equal("2^(99999)", "3")  # towers refused, fast
    assert time.perf_counter() - start < 2


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- GSM8K's real gold answers ------------------------------------------------------------------------------------


@pytest.mark.shared_data(GSM8K)
def test_gsm8k_gold_answers():
    with open(GSM8K, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(3)]
    assert [gold_answer(r["answer"]) for r in rows] == ["18", "3", "70000"]  # Janet's ducks, the robe, the house
    golds = [r["answer"] for r in rows]
    # the repo's own think-format replies for these rows: the format and the answer
    replies = [gsm8k_reply(r) for r in rows]
    assert replies[2].endswith("Answer: 70000") and format_reward(None, replies) == [1.0, 1.0, 1.0]
    assert correctness_reward(None, replies, answer=golds) == [1.0, 1.0, 1.0]
    written = ["<think>9 * 2 = 18</think>\nAnswer: $18.", r"It takes \boxed{3} bolts.", "He made 70,000 dollars"]
    assert correctness_reward(None, written, answer=golds) == [1.0, 1.0, 1.0]
    wrong = ["<think>16 - 3 = 13</think>\nAnswer: 26", "#### 2", "<think>200,000 - 130,000 = 70,000</think>\n"]
    assert correctness_reward(None, wrong, answer=golds) == [0.0, 0.0, 0.0]  # the last: no answer after </think>
    # GSM8K's own reply ("steps\n#### N") is correct but not the <think> format
    own = [gsm8k_reply(r, think=False) for r in rows]
    assert correctness_reward(None, own, answer=golds) == [1.0] * 3 and format_reward(None, own) == [0.0] * 3
    assert FormatReward("gsm8k")(None, ["<think>x</think>\n" + o.rsplit("\n", 1)[1] for o in own]) == [1.0] * 3


def test_gold_answer_forms():
    assert gold_answer("steps\n#### 1,000") == "1,000" and gold_answer(72) == "72" and gold_answer(0.5) == "0.5"
    assert gold_answer(r"so the area is $\boxed{\frac{9}{2}}$.") == r"\frac{9}{2}"
    assert gold_answer("steps\n####  ") is None and gold_answer("   ") is None and gold_answer(None) is None
    # an unreadable gold answer cannot score anything: None, left out of the baseline
    assert correctness_reward(None, ["Answer: 3", "Answer: 3"], answer=["#### ", "3"]) == [None, 1.0]


# --- format and correctness on TinyWorld --------------------------------------------------------------------------


def _tinyworld_solutions(world):
    """(solution text, gold answer) for TinyWorld's RL train prompts, levels 1-4: the problems behind the records."""
    records = world.rl_prompts("train")
    problems = [p for lv in (1, 2, 3, 4) for p in world.problems(lv, "train", world.size.rl_per_level, "rl")]
    assert [p.id for p in problems] == [r["id"] for r in records]
    assert [str(p.answer) for p in problems] == [r["answer"] for r in records]
    return [world.solution(p) for p in problems], [r["answer"] for r in records], records


def test_tinyworld_solutions_score_full_marks(world):
    solutions, answers, records = _tinyworld_solutions(world)
    assert len(solutions) == 160 and all(s.startswith("<think>") and "\nAnswer: " in s for s in solutions)
    for fmt in (format_reward, FormatReward("tinyworld"), FormatReward("any")):
        assert fmt(None, solutions) == [1.0] * len(solutions)
        assert fmt(None, [s + "<|end|>" for s in solutions]) == [1.0] * len(solutions)
    # the way trl calls it: keywords, every column, trl's extras
    prompts = [r["prompt"] for r in records]
    kwargs = {"prompts": prompts, "completions": solutions, "completion_ids": [[1, 2]] * 160, "trainer_state": None,
              "log_extra": None, "log_metric": None, "answer": answers, "level": [r["level"] for r in records],
              "id": [r["id"] for r in records]}
    assert correctness_reward(**kwargs) == [1.0] * 160
    assert CorrectnessReward(style="tinyworld")(**kwargs) == [1.0] * 160
    scheme = weighted((format_reward, 1.0), (correctness_reward, 1.0))
    assert scheme(**kwargs) == [2.0] * 160
    # one off: the format holds, the answer does not
    off = [s.rsplit(" ", 1)[0] + f" {int(a) + 1}" for s, a in zip(solutions, answers)]
    assert correctness_reward(None, off, answer=answers) == [0.0] * 160 and format_reward(None, off) == [1.0] * 160
    assert scheme(None, off, answer=answers) == [1.0] * 160


# (output, format_reward ("line"), tinyworld.format_ok, correct for 68 with style="auto")
FORMATS = [
    (f"{THINK}\nAnswer: 68", 1.0, True, 1.0),
    (f"  {THINK}\nAnswer: 68\n<|im_end|>", 1.0, True, 1.0),
    ("<think></think>\nAnswer: 68", 1.0, True, 1.0),  # empty reasoning is still the format
    (f"{THINK}\nAnswer: 1,234", 1.0, False, 0.0),  # "line" takes any answer; TinyWorld's needs a plain integer
    (f"{THINK}\nAnswer: 68.0", 1.0, False, 1.0),
    (f"{THINK}\nAnswer: 68. Hope that helps!", 1.0, False, 1.0),  # "line" takes the whole line
    (f"{THINK} Answer: 68", 1.0, False, 1.0),  # no newline: "line" allows any whitespace after </think>
    (f"{THINK}\nAnswer: 68\nAnswer: 70", 0.0, False, 0.0),  # two answer lines; the last one counts
    (f"{THINK}\nThe total is 68.\nAnswer: 68", 0.0, False, 1.0),  # prose between: not the format, still right
    (f"{THINK}\nanswer: 68", 0.0, False, 1.0),  # lower case: not the format; the tag reads it
    ("Answer: 68", 0.0, False, 1.0),  # no <think>
    ("<think>63 + 5 = 68\nAnswer: 68", 0.0, False, None),  # unclosed <think>: no answer at all
    (f"<think>x</think>\n{THINK}\nAnswer: 68", 0.0, False, 1.0),  # two think blocks
    ("<think>a<think>b</think></think>\nAnswer: 68", 0.0, False, 1.0),  # nested
    (f"{THINK}\n", 0.0, False, 0.0),  # no answer
    ("", 0.0, False, 0.0),
]


@pytest.mark.parametrize(("output", "line", "tiny", "correct"), FORMATS)
def test_format_reward(output, line, tiny, correct):
    assert format_reward(None, [output]) == [line]
    assert FormatReward("tinyworld")(None, [output]) == [float(tiny)] == [float(tinyworld.format_ok(output))]
    got = correctness_reward(None, [output], answer=["68"])
    assert got == [0.0 if correct is None else correct]  # no answer found is a wrong answer (the gold is fine)
    # style="tinyworld" is TinyWorld's verifier
    assert CorrectnessReward(style="tinyworld")(None, [output], answer=["68"]) == [tinyworld.verify(output, "68")]


def test_format_choices():
    rest = {"tag": "<answer> 68 </answer>", "boxed": r"So it is $\boxed{68}$.", "gsm8k": "#### 68",
            "line": "Answer: 68"}
    for name, tail in rest.items():
        text = f"{THINK}\n{tail}"
        for other in rest:
            assert FormatReward(other)(None, [text]) == [float(other == name)], (name, other)
        assert FormatReward("any")(None, [text]) == [1.0]
        assert correctness_reward(None, [text], answer=["68"]) == [1.0]
    assert FormatReward("tag")(None, [f"{THINK}\n<answer>  </answer>"]) == [0.0]  # empty
    assert FormatReward("boxed")(None, [f"{THINK}\n" + r"\boxed{}"]) == [0.0]
    assert FormatReward(r"Result: \d+")(None, [f"{THINK}\nResult: 68", f"{THINK}\nResult: x"]) == [1.0, 0.0]
    assert FormatReward(lambda rest: rest.endswith("!"))(None, [f"{THINK}\nDone!"]) == [1.0]
    # a template that opens the block itself: the completion starts inside it
    prefilled = FormatReward(prefilled=True)
    assert prefilled(None, ["23 + 45 = 68</think>\nAnswer: 68", f"{THINK}\nAnswer: 68"]) == [1.0, 0.0]
    assert FormatReward("tinyworld", prefilled=True)(None, ["5 - 4 = 1</think>\nAnswer: 1"]) == [1.0]
    assert [format_reward.__name__, FormatReward("tag").__name__] == ["format_reward", "format_reward[tag]"]
    with pytest.raises(TypeError):
        FormatReward(answer=3)


def test_conversational_completions(world):
    solutions, answers, _ = _tinyworld_solutions(world)
    chats = [[{"role": "assistant", "content": s}] for s in solutions[:8]]
    assert format_reward(None, chats) == [1.0] * 8 and correctness_reward(None, chats, answer=answers[:8]) == [1.0] * 8
    # content as text parts; a tool call, its result, then the final reply: the last assistant message is scored
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<think>2 + 2 = 4</think>\n"},
                                               {"type": "text", "text": "Answer: 4"}]}]
    tools = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
             {"role": "tool", "content": "4"},
             {"role": "assistant", "content": "<think>the tool says 4</think>\nAnswer: 4"}]
    assert completion_text(parts) == "<think>2 + 2 = 4</think>\nAnswer: 4"
    assert format_reward(None, [parts, tools]) == [1.0, 1.0]
    assert correctness_reward(None, [parts, tools], answer=["4", "4"]) == [1.0, 1.0]
    assert completion_text([]) == "" and completion_text({"content": "hi"}) == "hi"
    # and through the runner, which passes them on untouched
    runner = RewardRunner([format_reward, correctness_reward])
    got = runner([[{"role": "user", "content": "2 + 2?"}]] * 2, [parts, tools], answer=["4", "5"])
    assert got == {"format_reward": [1.0, 1.0], "correctness_reward": [1.0, 0.0]}


def test_missing_gold_column_is_a_clear_error():
    with pytest.raises(KeyError, match="column 'answer'"):
        correctness_reward(None, ["Answer: 1"], solution=["1"])
    assert CorrectnessReward(gold_column="solution")(None, ["Answer: 1"], solution=["1"]) == [1.0]


# --- length penalty -----------------------------------------------------------------------------------------------


def test_length_penalty_is_dapos():
    fn = length_penalty(max_length=10, cache=4)
    ids = [[0] * n for n in (0, 6, 7, 8, 10, 11, 50)]
    assert fn(None, ["x"] * 7, completion_ids=ids) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    chars = length_penalty(10, 4, unit="chars")
    assert chars(None, ["a" * 6, "a" * 9, [{"role": "assistant", "content": "a" * 12}]]) == [0.0, -0.75, -1.0]
    hard = length_penalty(10, 0)
    assert hard(None, ["x"] * 2, completion_ids=[[0] * 10, [0] * 11]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="completion_ids"):
        fn(None, ["abc"])
    with pytest.raises(ValueError):
        length_penalty(10, 11)
    with pytest.raises(ValueError):
        length_penalty(10, 4, unit="words")


def test_length_penalty_matches_trl():
    trl_rewards = require("trl.rewards", reason="trl (a dev dependency) is the oracle")
    oracle = trl_rewards.get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=8)
    ids = [[1] * n for n in range(0, 30)]
    assert length_penalty(20, 8)(None, ["x"] * 30, completion_ids=ids) == pytest.approx(oracle(completion_ids=ids))


# --- weighted sums ------------------------------------------------------------------------------------------------


def _constant(name, values):
    def fn(prompts=None, completions=(), **kwargs):
        return list(values)

    fn.__name__ = name
    return fn


def test_weighted_sums_follow_trl_none_rules():
    a = _constant("a", [1.0, None, None, 0.5])
    b = _constant("b", [0.0, 1.0, None, float("nan")])
    fn = weighted((a, 2.0), (b, 1.0))
    # nansum of the present parts; None only where every part is None
    assert fn(None, ["x"] * 4) == [2.0, 1.0, None, 1.0]
    assert fn.__name__ == "2*a+1*b"
    assert weighted_sum([None, None], [1, 1]) is None and weighted_sum([float("nan"), 3.0], [1, -1]) == -3.0
    with pytest.raises(ValueError):
        weighted_sum([1.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="pairs"):
        weighted(a, b)
    with pytest.raises(ValueError, match="2 rewards for 4"):
        weighted((_constant("short", [1.0, 1.0]), 1.0))(None, ["x"] * 4)


def test_builtins_pickle():
    fns = [format_reward, correctness_reward, FormatReward("tag"), length_penalty(10, 2),
           weighted((format_reward, 1.0), (correctness_reward, 0.5))]
    for fn in fns:
        again = pickle.loads(pickle.dumps(fn))
        assert again.__name__ == fn.__name__
        assert again(None, ["<think>a</think>\nAnswer: 1"], answer=["1"], completion_ids=[[1]]) == \
            fn(None, ["<think>a</think>\nAnswer: 1"], answer=["1"], completion_ids=[[1]])


# --- the runner: failures counted, warned once, never a crash -----------------------------------------------------


def raises(prompts=None, completions=(), **kwargs):
    raise ValueError("boom")


def wrong_length(prompts=None, completions=(), **kwargs):
    return [1.0]


def test_runner_survives_raising_hanging_and_wrong_length():
    release = threading.Event()

    def hangs(prompts=None, completions=(), **kwargs):
        release.wait(10)  # a call that would take 10 s
        return [1.0] * len(completions)

    warnings = []
    runner = RewardRunner([raises, hangs, wrong_length, format_reward], weights=[1, 1, 1, 2], timeout_s=0.5,
                          warn=warnings.append)
    completions = [f"{THINK}\nAnswer: 68", "junk", f"{THINK}\nAnswer: 1"]
    try:
        start = time.perf_counter()
        for _ in range(2):
            got = runner(["q"] * 3, completions)
            assert got == {"raises": [None] * 3, "hangs": [None] * 3, "wrong_length": [None] * 3,
                           "format_reward": [1.0, 0.0, 1.0]}
            assert runner.total(got) == [2.0, 0.0, 2.0]  # the failed ones are left out
        assert time.perf_counter() - start < 4  # two calls of 0.5 s each, not 2 x 10 s
    finally:
        release.set()
    s = runner.stats
    assert (s["raises"].calls, s["raises"].errors, s["raises"].timeouts) == (2, 2, 0)
    assert (s["hangs"].calls, s["hangs"].errors, s["hangs"].timeouts) == (2, 0, 2)
    assert (s["wrong_length"].errors, s["format_reward"].errors, s["format_reward"].timeouts) == (2, 0, 0)
    assert s["raises"].last_error == "ValueError: boom"
    assert s["wrong_length"].last_error == "returned 1 rewards for 3 completions"
    # one line per failing function, the first time only
    assert len(warnings) == 3 and all("\n" not in w and w.startswith("warning: reward function") for w in warnings)
    assert "'raises'" in warnings[0] and "ValueError: boom" in warnings[0]
    assert "'hangs'" in warnings[1] and "timed out after 0.5 s" in warnings[1]
    assert "'wrong_length'" in warnings[2] and "1 rewards for 3 completions" in warnings[2]


def test_runner_checks_what_comes_back(capsys):
    results = {
        "nan_is_none": [1.0, float("nan"), None],
        "a_string": "1.0",
        "strings": ["1", "2", "3"],
        "infinite": [1.0, float("inf"), 0.0],
        "ints_and_bools": [1, True, 0],
        "a_generator": (x for x in [1.0, 2.0, 3.0]),
    }
    fns = [_constant(name, value) if not name.startswith("a_gen") else (lambda value=value, **kw: value)
           for name, value in results.items()]
    runner = RewardRunner(fns)
    got = runner(None, ["a", "b", "c"])
    assert got["nan_is_none"] == [1.0, None, None] and runner.stats["nan_is_none"].nones == 2
    assert got["ints_and_bools"] == [1.0, 1.0, 0.0]
    for name in ("a_string", "strings", "infinite", "<lambda>"):
        assert got[name] == [None] * 3 and runner.stats[name].errors == 1, name
    assert "not a number" in runner.stats["strings"].last_error and "inf" in runner.stats["infinite"].last_error
    assert capsys.readouterr().err.count("warning: reward function") == 4  # the default warns on stderr


def test_runner_async_names_and_safe_rewards():
    async def async_reward(prompts=None, completions=(), **kwargs):
        return [float(len(c)) for c in completions]

    runner = RewardRunner([async_reward, format_reward, format_reward])
    assert runner.names == ["async_reward", "format_reward", "format_reward_2"]
    assert runner(None, ["ab", "c"])["async_reward"] == [2.0, 1.0]
    got = safe_rewards([correctness_reward, raises], None, ["Answer: 3"], {"answer": ["3"]}, timeout_s=1,
                       warn=lambda message: None)
    assert got == {"correctness_reward": [1.0], "raises": [None]}
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        runner(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="weights"):
        RewardRunner([format_reward], weights=[1, 2])


@pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self/statm").exists(), reason="needs fork and /proc")
def test_process_isolation_kills_and_limits():
    def spins(prompts=None, completions=(), **kwargs):
        while True:  # a thread could not be stopped; a process can
            pass

    def hogs(prompts=None, completions=(), **kwargs):
        blob = bytearray(4 * 2**30)  # 4 GB against a 200 MB limit
        return [float(len(blob))] * len(completions)

    def exits(prompts=None, completions=(), **kwargs):
        os._exit(3)

    warnings = []
    runner = RewardRunner([spins, hogs, exits, raises, correctness_reward], timeout_s=0.5, isolation="process",
                          memory_mb=200, warn=warnings.append)
    start = time.perf_counter()
    got = runner(None, ["Answer: 7", "Answer: 8"], answer=["7", "7"])
    assert time.perf_counter() - start < 5
    assert got == {"spins": [None] * 2, "hogs": [None] * 2, "exits": [None] * 2, "raises": [None] * 2,
                   "correctness_reward": [1.0, 0.0]}
    s = runner.stats
    assert s["spins"].timeouts == 1 and s["hogs"].last_error == "MemoryError"
    assert s["exits"].last_error == "its process died (exit code 3)" and s["raises"].last_error == "ValueError: boom"
    assert len(warnings) == 4
    assert not [c for c in __import__("multiprocessing").active_children() if c.is_alive()]  # nothing left running
    assert math.isclose(sum(st.calls for st in s.values()), 5)
