"""Lab 04's reference solutions: one way to write each exercise, straight from the docstrings in exercises.py and
the lab's README. Read them after your own attempt (`alignlab lab solution 4 N` prints one). ToyPool is given, as in
exercises.py, so that this module is complete.
"""

from __future__ import annotations

import json
import math
import re

import torch

# --- serving -----------------------------------------------------------------------------------------------------


def blocks_and_waste(lengths: list[int], block_size: int = 16) -> tuple[int, int]:
    """Exercise 1a. (blocks in use, wasted slots) for sequences with their own blocks each."""
    blocks = sum(math.ceil(n / block_size) for n in lengths)  # ceil(n / bs) each; 0 tokens: 0 blocks
    return blocks, blocks * block_size - sum(lengths)  # every slot of a held block that holds no token


def blocks_with_sharing(prompt_len: int, n: int, new_tokens: int, block_size: int = 16) -> int:
    """Exercise 1b. Blocks in use for n samples of one prompt, each having written new_tokens more tokens."""
    if new_tokens == 0:  # nobody wrote yet: the n samples read the prompt's blocks, partial last block included
        return math.ceil(prompt_len / block_size)
    full = prompt_len // block_size  # the prompt's full blocks stay shared by all n
    # each sample holds the rest on its own: its copy of the prompt's partial block (if any) and its new blocks
    # (the last writer into the shared partial block finds itself alone and keeps the original: still one each)
    own = math.ceil((prompt_len + new_tokens) / block_size) - full
    return full + n * own


class ToyPool:
    """A block pool small enough to print: data[b] is block b's slots (None where nothing is written), refs[b]
    the number of block tables that hold block b, free the blocks nobody holds. Given, not an exercise."""

    def __init__(self, num_blocks: int, block_size: int = 4):
        self.block_size = block_size
        self.data: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.refs = [0] * num_blocks
        self.free = list(range(num_blocks))

    def allocate(self) -> int:
        """A free block, empty, with one reference."""
        if not self.free:
            raise RuntimeError("no free block")
        block = self.free.pop(0)
        self.refs[block] = 1
        self.data[block] = [None] * self.block_size
        return block

    def retain(self, block: int) -> None:
        self.refs[block] += 1

    def release(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free.append(block)

    def read(self, table: list[int], n: int) -> list[int | None]:
        """The first n tokens of the sequence whose block table is `table`."""
        bs = self.block_size
        return [self.data[table[i // bs]][i % bs] for i in range(n)]


def fork(pool: ToyPool, table: list[int]) -> list[int]:
    """Exercise 2a. A new sequence that reads the same blocks as `table`."""
    for block in table:
        pool.retain(block)  # one more reader each; nothing is copied
    return list(table)


def append(pool: ToyPool, table: list[int], n_held: int, token: int) -> None:
    """Exercise 2b. Write `token` at slot n_held of the sequence, copy-on-write."""
    slot = n_held % pool.block_size
    if slot == 0:  # the last block is full (or there is none): a fresh block
        table.append(pool.allocate())
    elif pool.refs[table[-1]] > 1:  # shared with another sequence: copy it first, then write into the copy
        shared = table[-1]
        private = pool.allocate()
        pool.data[private] = list(pool.data[shared])
        pool.release(shared)
        table[-1] = private
    pool.data[table[-1]][slot] = token  # a block this sequence alone holds is written in place


def free(pool: ToyPool, table: list[int]) -> None:
    """Exercise 2c. Drop the sequence's reference to each of its blocks and empty its table."""
    for block in table:
        pool.release(block)  # back to the free list once nobody holds it
    table.clear()


def sgmv_by_hand(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: list[float], ranks: list[int],
                 index: torch.Tensor) -> torch.Tensor:
    """Exercise 3. The LoRA updates of a batch whose tokens use different adapters, by sorted segments (SGMV)."""
    out = torch.zeros(x.shape[0], B.shape[1], dtype=x.dtype)  # [N, out]; base-model tokens keep 0
    order = torch.argsort(index, stable=True)  # tokens sorted by slot: each adapter's tokens form one segment
    slots, counts = torch.unique_consecutive(index[order], return_counts=True)
    start = 0
    for slot, count in zip(slots.tolist(), counts.tolist()):
        rows = order[start:start + count]  # [n_s] the segment's tokens
        start += count
        r = ranks[slot] if slot >= 0 else 0
        if r == 0:  # the base model (-1), or an adapter that does not target this layer
            continue
        h = x[rows] @ A[slot, :r].T  # [n_s, r]: shrink, at this adapter's own rank
        out[rows] = scaling[slot] * (h @ B[slot, :, :r].T)  # [n_s, out]: expand
    return out


def block_hashes(tokens: list[int], block_size: int = 16, adapter: str | None = None) -> list[int]:
    """Exercise 4a. The prefix cache's names of the full blocks of `tokens`: a hash chain."""
    hashes, h = [], None
    for i in range(len(tokens) // block_size):  # full blocks only
        h = hash((h, tuple(tokens[i * block_size:(i + 1) * block_size]), adapter))  # the parent's name, then this block
        hashes.append(h)
    return hashes


def cached_prefix(tokens: list[int], cached: set[int], block_size: int = 16, adapter: str | None = None) -> int:
    """Exercise 4b. How many of a new prompt's tokens the prefix cache supplies."""
    n = 0
    for i, h in enumerate(block_hashes(tokens, block_size, adapter)):
        if (i + 1) * block_size >= len(tokens):  # this block holds the last token: it must run through the model
            break
        if h not in cached:  # the chain breaks here: later blocks have other parents, so other names
            break
        n += 1
    return n * block_size


# --- agents ------------------------------------------------------------------------------------------------------


def winner(cells: str) -> str | None:
    """Exercise 5a. The winner of a tic-tac-toe board given as 9 characters."""
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8),  # rows A-C
             (0, 3, 6), (1, 4, 7), (2, 5, 8),  # columns
             (0, 4, 8), (2, 4, 6)]  # diagonals
    for a, b, c in lines:
        if cells[a] != "." and cells[a] == cells[b] == cells[c]:
            return cells[a]
    return None


def game_reward(result: str, valid_moves: int) -> float:
    """Exercise 5b. The study guide's reward of a finished game."""
    if result == "invalid":  # -1, less the further the agent got: log(m + 1) / log(100)
        return -1 + math.log(valid_moves + 1) / math.log(100)
    return {"win": 1.0, "draw": 0.5, "loss": 0.0}[result]


def row_advantages(rewards: list[float], group_size: int, replies: list[int]) -> list[float]:
    """Exercise 6. Trajectory-group advantages, one per row."""
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g:g + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))  # unbiased
        for r, n in zip(group, replies[g:g + group_size]):
            out += [(r - mean) / (std + 1e-4)] * n  # every reply of the game carries the game's advantage
    return out


def lessons_to_add(playbook: list[str], lessons: list[str], max_new: int) -> list[str]:
    """Exercise 7. ACE's curator, the additions only."""
    def norm(text: str) -> str:
        return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!").strip()

    have = {norm(t) for t in playbook}
    counts: dict[str, int] = {}
    first: dict[str, str] = {}  # each lesson as first written
    for text in lessons:
        key = norm(text)
        if key in have:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, text)
    order = sorted(counts, key=lambda k: -counts[k])  # the most frequent first; sorted is stable: ties in order seen
    return [first[k] for k in order[:max_new]]


# --- tool calls --------------------------------------------------------------------------------------------------


def _as_call(body: str) -> dict | None:
    """{"name", "arguments"} from a block's body, or None when it is not a call."""
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return None
    args = obj["arguments"]
    if isinstance(args, str):  # the arguments as a JSON string, the way the API carries them
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"name": obj["name"], "arguments": args} if isinstance(args, dict) else None


def parse_hermes(text: str) -> tuple[str, list[dict]]:
    """Exercise 8. Read the tool calls out of a reply written in the Hermes format: (content, calls)."""
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    calls, kept = [], []
    cut = 0  # where the text not yet kept starts
    start = text.find(OPEN)
    while start >= 0:
        close = text.find(CLOSE, start)
        if close < 0:  # the model stopped before closing the block: it runs to the end of the text
            body, end = text[start + len(OPEN):], len(text)
        else:
            body, end = text[start + len(OPEN):close], close + len(CLOSE)
        call = _as_call(body)
        if call is not None:  # cut the block out; a block that is not a call stays in the content as written
            calls.append(call)
            kept.append(text[cut:start])
            cut = end
        start = text.find(OPEN, end)
    kept.append(text[cut:])
    return "".join(kept).strip(), calls
