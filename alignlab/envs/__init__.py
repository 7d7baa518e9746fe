"""Multi-turn environments for agent RL (alignlab/rl/trajectories.py, `alignlab agent-rl`).

    base.py       Env (reset, step, context, outcome) and Step
    tictactoe.py  tic-tac-toe against a random opponent, moves as <move>B3</move>, the study guide's reward
    guess.py      guess the number with "Higher."/"Lower." hints: a reward that needs several turns
    tool_task.py  TinyWorld's tool questions: calls run in a ToolBox, the answer is checked against the facts
"""

from alignlab.envs.base import Env, Step
from alignlab.envs.guess import GuessNumber
from alignlab.envs.tictactoe import TicTacToe, legal_move_records
from alignlab.envs.tool_task import ToolTask

ENVS = {"tictactoe": TicTacToe, "guess": GuessNumber, "tools": ToolTask}


def make_env(name: str, **options) -> Env:
    """A new environment by name (ENVS), with its options (e.g. history=True, high=32, world_seed=1)."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; one of {', '.join(ENVS)}")
    return ENVS[name](**options)


__all__ = ["ENVS", "Env", "GuessNumber", "Step", "TicTacToe", "ToolTask", "legal_move_records", "make_env"]
