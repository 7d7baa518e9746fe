r"""Verifiable rewards: functions that score completions, for GRPO and its relatives.

The convention is trl's (GRPOTrainer's reward_funcs), so the same functions work here and there:

    fn(prompts, completions, **columns) -> list[float | None]      one reward per completion

    prompts      the prompts, one per completion (each repeated once per generation of its group)
    completions  strings, or for conversational data lists of messages [{"role": "assistant", "content": ...}]
    columns      the dataset's other columns by name (answer=[...], level=[...]), plus trl's extras:
                 completion_ids, trainer_state, log_extra, log_metric -- take **kwargs and ignore the rest
    None         "not scored" (trl reads it as NaN): the completion leaves its group's baseline, advantage 0

The pieces, one idea per file:

    (answers out of text -- extract_answer, gold_answer, parse_number, answers_equal -- are the tasks layer's,
    alignlab/tasks/answers.py, re-exported here)
    builtin.py   format_reward (<think>...</think> then the answer), correctness_reward (the `answer` column),
                 length_penalty (DAPO's soft overlong punishment), weighted (sums with trl's None rules)
    guard.py     RewardRunner / safe_rewards: a reward function that raises, hangs or returns the wrong length is
                 counted, warned about once, and gives None -- never a crash
    registry.py  rewards by name in a config ({"format": 1, "correctness": 1}) over a task
    prm.py       PRMReward: a process reward model's weakest step, min_k sigma(s_k) (registry name `prm`; imported
                 from alignlab.rewards.prm, as it loads a model)
    custom.py    import_reward("module:function"): code named in a config, only with allow_custom_rewards=true

Example, the study guide's scheme (+1 for the format, +1 for a right answer) on TinyWorld or GSM8K rows:

    from alignlab.rewards import RewardRunner, correctness_reward, format_reward

    runner = RewardRunner([format_reward, correctness_reward], weights=[1.0, 1.0], timeout_s=10)
    per_fn = runner(prompts, completions, answer=[row["answer"] for row in rows])
    rewards = runner.total(per_fn)          # 2.0: "<think>48 / 2 = 24 ...</think>\nAnswer: 72" for gold "... #### 72"
    runner.stats                            # calls, errors, timeouts, nones per function

or, as one function for trl's GRPOTrainer: weighted((format_reward, 1.0), (correctness_reward, 1.0)).
"""

from alignlab.rewards.builtin import (
    ANSWER_FORMATS,
    CorrectnessReward,
    FormatReward,
    LengthPenalty,
    Weighted,
    completion_text,
    correctness_reward,
    format_reward,
    length_penalty,
    reward_name,
    weighted,
    weighted_sum,
)
from alignlab.rewards.guard import RewardRunner, RewardStats, safe_rewards
from alignlab.tasks.answers import (
    STYLES,
    answers_equal,
    extract_answer,
    gold_answer,
    parse_number,
    symbolic_equal,
)

__all__ = [
    "ANSWER_FORMATS",
    "STYLES",
    "CorrectnessReward",
    "FormatReward",
    "LengthPenalty",
    "RewardRunner",
    "RewardStats",
    "Weighted",
    "answers_equal",
    "completion_text",
    "correctness_reward",
    "extract_answer",
    "format_reward",
    "gold_answer",
    "length_penalty",
    "parse_number",
    "reward_name",
    "safe_rewards",
    "symbolic_equal",
    "weighted",
    "weighted_sum",
]
