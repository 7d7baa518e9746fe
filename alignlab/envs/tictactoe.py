"""Tic-tac-toe against a random opponent: the study guide's multi-turn agent task (OpenPipe ART's notebook).

The board has rows A-C and columns 1-3; the agent plays x or o at random (x moves first, so the opponent opens when
the agent is o) and answers each board with its move as `<move>B3</move>`. The reply must be that XML element and
nothing else (parsed with ElementTree, as the notebook does; surrounding whitespace and a lower-case square
pass); a reply that is not, a square off the board, or an occupied square ends the game as invalid. The
reward (the notebook's):

    win 1,  draw 0.5,  loss 0,  invalid move  -1 + ln(m + 1) / ln(100)

where m is the number of valid moves the agent made before the invalid one: an early mistake costs most, and any
invalid move scores below a loss. The opponent picks uniformly among the free squares with the episode's seeded
random generator, so reset(seed) and the same replies replay the same game. opponent="blocking" is a harder one
for evaluation: it completes its own line when it can, else blocks the agent's, else plays at random.

A small model's context holds a board but not a whole game, so `context` shows only the system prompt and the latest
board (the game is Markov in the board); `history=True` shows the whole conversation, as the notebook does.
The board lists the free squares, which makes legal moves learnable by a small model in a minute of SFT
(`legal_move_records`); winning is left to RL.
"""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET

from alignlab.envs.base import Env, Step, user

ROWS, COLS = "ABC", "123"
SQUARES = [r + c for r in ROWS for c in COLS]
LINES = [[r + c for c in COLS] for r in ROWS] + [[r + c for r in ROWS] for c in COLS] + \
        [["A1", "B2", "C3"], ["A3", "B2", "C1"]]
SYSTEM = "You play tic-tac-toe. Reply with one free square as <move>B3</move>."


def winner(board: dict[str, str]) -> str | None:
    """"x" or "o" when that symbol fills a line, else None."""
    for line in LINES:
        a, b, c = (board[s] for s in line)
        if a != "." and a == b == c:
            return a
    return None


def free_squares(board: dict[str, str]) -> list[str]:
    return [s for s in SQUARES if board[s] == "."]


def completing(board: dict[str, str], symbol: str) -> set[str]:
    """The free squares that would complete a line of `symbol`."""
    out = set()
    for line in LINES:
        cells = [board[s] for s in line]
        if cells.count(symbol) == 2 and cells.count(".") == 1:
            out.add(line[cells.index(".")])
    return out


def render(board: dict[str, str], symbol: str) -> str:
    """The observation: the grid, whose move it is, the free squares.

      1 2 3
    A x . .
    B . o .
    C . . .
    You are o. Free: A2 A3 B1 B3 C1 C2 C3
    """
    rows = ["  " + " ".join(COLS)] + [r + " " + " ".join(board[r + c] for c in COLS) for r in ROWS]
    return "\n".join(rows) + f"\nYou are {symbol}. Free: {' '.join(free_squares(board))}"


def parse_move(reply: str) -> tuple[str | None, str | None]:
    """(square, None) for a well-formed `<move>B3</move>`, else (None, the error)."""
    try:
        element = ET.fromstring(reply.strip())
    except ET.ParseError:
        return None, "bad XML: reply with <move>B3</move>"
    if element.tag != "move" or len(element) or element.attrib:
        return None, "bad XML: reply with <move>B3</move>"
    square = (element.text or "").strip().upper()
    if square not in SQUARES:
        return None, f"bad square {square!r}: rows A-C, columns 1-3"
    return square, None


def invalid_reward(moves: int) -> float:
    """-1 + ln(m + 1) / ln(100): in [-1, -0.65] for the m <= 4 valid moves a game allows before a mistake."""
    return -1.0 + math.log(moves + 1) / math.log(100)


class TicTacToe(Env):
    name = "tictactoe"
    max_turns = 5  # the agent makes at most five moves

    def __init__(self, history: bool = False, opponent: str = "random"):
        if opponent not in ("random", "blocking"):
            raise ValueError(f"opponent must be random or blocking, got {opponent!r}")
        self.history, self.opponent_kind = history, opponent

    def reset(self, seed: int) -> list[dict]:
        self.rng = random.Random(seed)
        self.board = {s: "." for s in SQUARES}
        self.symbol = self.rng.choice("xo")
        self.opponent = "o" if self.symbol == "x" else "x"
        self.moves, self.result = 0, None  # result: win | draw | loss | invalid
        if self.symbol == "o":
            self._opponent_move()
        return [{"role": "system", "content": SYSTEM}, user(render(self.board, self.symbol))]

    def _opponent_move(self) -> None:
        """A random free square; the blocking opponent first completes its own line, else blocks the agent's."""
        choices = free_squares(self.board)
        if self.opponent_kind == "blocking":
            choices = (completing(self.board, self.opponent) or completing(self.board, self.symbol)
                       or choices)
        self.board[self.rng.choice(sorted(choices))] = self.opponent

    def _end(self, result: str, reward: float, error: str | None = None) -> Step:
        self.result = result
        return Step([], reward, True, {"error": error} if error else {})

    def step(self, reply: str) -> Step:
        if self.result is not None:
            raise RuntimeError("the game is over; reset() starts a new one")
        square, error = parse_move(reply)
        if square is not None and self.board[square] != ".":
            error = f"square {square} is occupied"
        if error:
            return self._end("invalid", invalid_reward(self.moves), error)
        self.board[square] = self.symbol
        self.moves += 1
        if winner(self.board) == self.symbol:
            return self._end("win", 1.0)
        if not free_squares(self.board):
            return self._end("draw", 0.5)
        self._opponent_move()
        if winner(self.board) == self.opponent:
            return self._end("loss", 0.0)
        if not free_squares(self.board):
            return self._end("draw", 0.5)
        return Step([user(render(self.board, self.symbol))])

    def context(self, messages: list[dict]) -> list[dict]:
        return messages if self.history else [messages[0], messages[-1]]

    def outcome(self) -> dict[str, float]:
        return {**{k: float(self.result == k) for k in ("win", "draw", "loss", "invalid")}, "moves": float(self.moves)}


def legal_move_records(n: int, seed: int = 0) -> list[dict]:
    """n SFT chats that teach the move format: a board from a game of random moves, and a uniformly random free
    square as the reply. Random play wins some games, so the model can sometimes win before RL starts."""
    rng, out = random.Random(f"tictactoe-sft:{seed}"), []
    while len(out) < n:
        env = TicTacToe()
        messages = env.reset(rng.randrange(2**31))
        while True:
            move = rng.choice(free_squares(env.board))
            out.append({"messages": [*env.context(messages), {"role": "assistant", "content": f"<move>{move}</move>"}]})
            step = env.step(f"<move>{move}</move>")
            if step.done or len(out) >= n:
                break
            messages += [{"role": "assistant", "content": f"<move>{move}</move>"}, *step.messages]
    return out
