"""TinyWorld's tool tasks as an environment: a question, tool calls that run, an answer from their results.

The start states are TinyWorld's tool-use chats (data/world/services.py: the weather, the calendar, the town
directory, the calculator, and sums small enough to answer without a tool), their system prompt and question, every
tool listed. Each reply is parsed for calls in the Hermes format (`<tool_call>{json}</tool_call>`); calls run in a
ToolBox over the town's services and their results come back as `tool` messages; a reply without a call ends the
episode. Reward 1 when the final reply holds every fact of the reference answer and a tool was called exactly when
one was needed, else 0 (stricter than eval/tool_use.py's `answer`, which credits a right answer without the call
it needed: here only answers from the tool pay); cut at max_turns replies: 0. A directory question's
fact is the directory's real entry (TinyWorld's training chats answer from made-up ones, so that only the tool's
answer is ever right). Training plays the train split; evaluation the test split (`held_out`).
"""

from __future__ import annotations

import functools

from alignlab.data.world import TinyWorld
from alignlab.data.world.services import Calendar, get_weather
from alignlab.envs.base import Env, Step
from alignlab.tools.agent import assistant_message
from alignlab.tools.calls import parse_calls
from alignlab.tools.executor import ToolBox


def town_toolbox(world: TinyWorld) -> ToolBox:
    """The tools TinyWorld's tool chats list, runnable: the weather, a fresh calendar, the town's directory and the
    calculator."""
    return ToolBox([get_weather, Calendar().add_event, world.directory.lookup], builtins=["calculator"])


@functools.lru_cache(maxsize=4)
def _world_records(world_seed: int, split: str) -> tuple[TinyWorld, list[dict]]:
    world = TinyWorld(world_seed)
    return world, world.service_conversations(split)


class ToolTask(Env):
    name = "tools"
    held_out = {"split": "test"}  # the evaluation's options: the held-out questions

    def __init__(self, world_seed: int = 0, split: str = "train", max_turns: int = 3):
        self.world, self.records = _world_records(world_seed, split)  # made once per process: every game shares them
        self.max_turns = max_turns

    @property
    def tools(self) -> list[dict]:
        return self.record["tools"]

    def reset(self, seed: int) -> list[dict]:
        self.record = self.records[seed % len(self.records)]
        self.facts = self.record["facts"]
        if self.record["kind"] == "lookup":  # training chats read made-up entries; here the real directory answers
            self.facts = [self.world.directory.lookup(**self.record["call"]["arguments"])]
        self.box = town_toolbox(self.world)
        self.turns, self.calls, self.correct = 0, 0, False
        return [dict(m) for m in self.record["messages"][:2]]

    def step(self, reply: str) -> Step:
        self.turns += 1
        content, calls = parse_calls(reply, "hermes")
        if calls:
            self.calls += len(calls)
            if self.turns >= self.max_turns:
                return Step([], 0.0, True, {"error": "turn limit"})
            return Step(self.box.run_all(assistant_message(content, calls, self.turns)["tool_calls"]))
        needed = self.record["call"] is not None
        self.correct = all(f in reply for f in self.facts) and (self.calls > 0) == needed
        return Step([], float(self.correct), True)

    def outcome(self) -> dict[str, float]:
        return {"win": float(self.correct), "moves": float(self.turns), "tool_calls": float(self.calls)}
