"""Guess the number: a text game whose reward needs several turns.

The environment holds a number from 1 to `high` (16 by default); the agent guesses with `<guess>7</guess>` and is
told "Higher." or "Lower." until it finds it or runs out of turns. No single reply can win from the start (the first
guess is right 1 time in `high`); a policy that halves the interval finds any number in floor(log2(high)) + 1
guesses (5 for 16: 8, 12, 14, 15, 16).

    reward = 1 - 0.1 * (guesses - 1)   when found (1.0 at the first guess, 0.5 at the sixth)
             0                         when not found within max_turns

A reply that is not `<guess>N</guess>` with 1 <= N <= high costs a turn and is told so.
"""

from __future__ import annotations

import random
import re

from alignlab.envs.base import Env, Step, user

GUESS = re.compile(r"^\s*<guess>\s*(-?\d+)\s*</guess>\s*$")


def found_reward(guesses: int) -> float:
    return 1.0 - 0.1 * (guesses - 1)


class GuessNumber(Env):
    name = "guess"

    def __init__(self, high: int = 16, max_turns: int = 6):
        if high < 2 or max_turns < 1:
            raise ValueError("high must be >= 2 and max_turns >= 1")
        self.high, self.max_turns = high, max_turns

    def reset(self, seed: int) -> list[dict]:
        self.secret = random.Random(seed).randint(1, self.high)
        self.guesses, self.found, self.errors = 0, False, 0
        return [{"role": "system", "content": f"Guess my number from 1 to {self.high}. Reply as <guess>8</guess>."},
                user("Your first guess?")]

    def step(self, reply: str) -> Step:
        self.guesses += 1
        m = GUESS.match(reply)
        if m is None or not 1 <= int(m.group(1)) <= self.high:
            self.errors += 1
            feedback, info = f"Reply as <guess>N</guess> with N from 1 to {self.high}.", {"error": "bad guess"}
        elif int(m.group(1)) == self.secret:
            self.found = True
            return Step([], found_reward(self.guesses), True)
        else:
            feedback, info = ("Higher." if self.secret > int(m.group(1)) else "Lower."), {}
        if self.guesses >= self.max_turns:
            return Step([], self.timeout_reward, True, info)
        return Step([user(feedback)], 0.0, False, info)

    def outcome(self) -> dict[str, float]:
        return {"win": float(self.found), "moves": float(self.guesses), "invalid": float(self.errors > 0)}
