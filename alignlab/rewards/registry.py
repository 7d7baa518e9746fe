"""Reward functions by name, as RL configs give them: {name: weight} -> functions behind a RewardRunner.

    format        the task's format (FormatReward(task.format_style): TinyWorld's exact one, GSM8K's "Answer:" line
                  after <think>, or any)
    correctness   the task's answer check against the `answer` column (CorrectnessReward(task.answer_style))
    length        DAPO's soft overlong penalty over the last quarter of max_completion_length
    prm           a process reward model's weakest step, min_k sigma(s_k), 0 without a step (rewards/prm.py); its
                  directory is prm_model (rollout.prm_model), loaded once on `device`, the policy's
    module:func   any function in trl's convention, fn(prompts, completions, **columns) -> list[float | None];
                  this imports and runs code named in a config, so it needs allow_custom_rewards=true
"""

from __future__ import annotations

from alignlab.errors import ConfigError
from alignlab.rewards.builtin import CorrectnessReward, FormatReward, length_penalty, reward_name
from alignlab.rewards.custom import import_reward
from alignlab.rewards.guard import RewardRunner
from alignlab.rewards.prm import PRMReward, check_prm_model
from alignlab.tasks import Task

BUILTIN = ("format", "correctness", "length", "prm")


def build_reward_funcs(spec: dict[str, float], task: Task, max_completion_length: int,
                       allow_custom: bool = False, prm_model: str = "",
                       device=None) -> tuple[list, list[float], list[str]]:
    """(functions, weights, names) from {name: weight} (module docstring)."""
    check_prm_model(spec, prm_model)
    fns, weights, names = [], [], []
    for name, weight in spec.items():
        if name == "format":
            fn = FormatReward(task.format_style)
        elif name == "correctness":
            fn = CorrectnessReward(task.answer_style)
        elif name == "length":
            fn = length_penalty(max_completion_length, max(1, max_completion_length // 4))
        elif name == "prm":
            fn = PRMReward(prm_model, device=device)
        elif ":" in name:
            fn = import_reward(name, allow_custom)
        else:
            raise ConfigError(f"reward_funcs: unknown reward {name!r}; built-ins are {', '.join(BUILTIN)}, or give "
                              "module:function")
        fns.append(fn)
        weights.append(float(weight))
        names.append(name.rpartition(":")[2] if ":" in name else name)
    if not fns:
        raise ConfigError("reward_funcs is empty: RL needs at least one reward function")
    return fns, weights, names


def describe_rewards(runner: RewardRunner, names: list[str]) -> str:
    """"format (format_reward[tinyworld]) x 1, ...": each reward function, what it is, its weight."""
    return ", ".join(f"{n} ({reward_name(f)}) x {w:g}" for n, f, w in zip(names, runner.fns, runner.weights))
