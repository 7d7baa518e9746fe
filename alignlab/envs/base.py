"""The environment interface of agent RL: a conversation the model takes part in, turn by turn.

    env = make_env("tictactoe")
    messages = env.reset(seed=3)                 # system prompt + the first observation
    while True:
        reply = model(env.context(messages), env.tools)
        messages.append({"role": "assistant", "content": reply})
        step = env.step(reply)                   # Step(messages, reward, done, info)
        messages += step.messages                # the environment's answer: a user or tool message
        if step.done:
            break
    env.outcome()                                # {"win": 1.0, "moves": 3.0, ...} for the run's metrics

An episode's reward arrives with its last step (step.reward on done; 0 before). `context` is what the model is
shown of the conversation: the whole of it by default; an environment whose state fits in one observation may show
only the system prompt and the latest observation (tic-tac-toe: a small model's context holds a board, not a game).
The assistant's replies are the only tokens agent RL trains (alignlab/rl/trajectories.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    messages: list[dict]  # what the environment answers: user (or tool) messages; may be empty when done
    reward: float = 0.0  # the episode's reward when done, else 0
    done: bool = False
    info: dict = field(default_factory=dict)  # e.g. {"error": "occupied square"}


class Env:
    """One episode at a time; reset(seed) makes the same start state for the same seed."""

    name = "env"
    max_turns = 10  # the model's replies before the episode is cut (reward: `timeout_reward`)
    timeout_reward = 0.0
    held_out: dict = {}  # options that make the held-out environment (e.g. {"split": "test"}); {}: unseen seeds

    @property
    def tools(self) -> list[dict]:
        """Tools the model may call (OpenAI's schema), rendered into its chat template; none by default."""
        return []

    def reset(self, seed: int) -> list[dict]:
        raise NotImplementedError

    def step(self, reply: str) -> Step:
        raise NotImplementedError

    def context(self, messages: list[dict]) -> list[dict]:
        """The part of the conversation the model sees before its next reply."""
        return messages

    def outcome(self) -> dict[str, float]:
        """The finished episode's numbers for the logs (rates are means of 0/1 values)."""
        return {}


def user(content: str) -> dict:
    return {"role": "user", "content": content}
