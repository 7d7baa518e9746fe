"""Lab 04 exercises (serving 1-4, agents 5-7, tool calls 8): fill in each function, then grade your work with

    alignlab lab check 4            # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 4 2          # only exercise 2
    alignlab lab solution 4 2       # the reference solution of exercise 2, once you have tried

The checker compares your functions with alignlab's paged KV cache (alignlab/infer/paged.py), multi-LoRA kernels
(alignlab/lora/multi_kernels.py), agent code and tool-call parser (alignlab/tools/calls.py) on the same inputs, or
with values computed by hand. Write each one from the lab's README, not by calling the alignlab function it is
checked against: that would pass and teach nothing.
"""

from __future__ import annotations

import torch


def blocks_and_waste(lengths: list[int], block_size: int = 16) -> tuple[int, int]:
    """Exercise 1a. Sequences holding lengths[s] tokens each, every one with its own blocks (no sharing).

    Returns (blocks in use, wasted slots): a sequence of n tokens holds ceil(n / block_size) blocks, and the slots
    of those blocks that hold no token are wasted (only its last block has any). A sequence of 0 tokens holds none.
    """
    raise NotImplementedError


def blocks_with_sharing(prompt_len: int, n: int, new_tokens: int, block_size: int = 16) -> int:
    """Exercise 1b. Blocks in use for n samples of one prompt of prompt_len tokens, forked after the prompt's
    prefill, once each sample has written new_tokens more tokens into the cache (copy-on-write: a sample that
    writes into a block it shares gets its own copy first; full prompt blocks stay shared).
    """
    raise NotImplementedError


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
    """Exercise 2a. A new sequence that reads the same blocks as `table` (one more reference each, nothing
    copied). Returns its block table."""
    raise NotImplementedError


def append(pool: ToyPool, table: list[int], n_held: int, token: int) -> None:
    """Exercise 2b. Write `token` at slot n_held of the sequence (it holds n_held tokens), changing `table` in place:
    a new block when n_held is a multiple of the block size; otherwise, if the last block is shared with another
    sequence, first replace it in this table by a private copy (copy-on-write). A block this sequence alone holds
    is written in place, never copied."""
    raise NotImplementedError


def free(pool: ToyPool, table: list[int]) -> None:
    """Exercise 2c. The sequence is done: drop its reference to each of its blocks and empty its table."""
    raise NotImplementedError


def sgmv_by_hand(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: list[float], ranks: list[int],
                 index: torch.Tensor) -> torch.Tensor:
    """Exercise 3. The LoRA updates of a batch whose tokens use different adapters, by sorted segments (SGMV).

    x [N, in]; A [S, r_max, in] and B [S, out, r_max]: adapter slot s's weights in the first ranks[s] rows of A[s]
    and columns of B[s] (what lies past them is NOT zero here: ignore it); scaling[s], ranks[s] per slot (rank 0:
    the adapter does not target this layer); index [N] long, the slot of each token, -1 for the base model.
        delta[t] = scaling[i] * B[i, :, :r_i] @ A[i, :r_i] @ x[t]      for i = index[t] >= 0 with r_i > 0; else 0
    Group the tokens by slot and do one pair of matrix products per slot at its own rank. Returns [N, out].
    """
    raise NotImplementedError


def block_hashes(tokens: list[int], block_size: int = 16, adapter: str | None = None) -> list[int]:
    """Exercise 4a. The prefix cache's names of the FULL blocks of `tokens` (a partial last block has none):

        h_0 = hash((None, tuple(tokens[0:bs]), adapter))
        h_i = hash((h_{i-1}, tuple(tokens[i*bs:(i+1)*bs]), adapter))

    with Python's built-in hash, exactly this tuple. Returns [h_0, h_1, ...]."""
    raise NotImplementedError


def cached_prefix(tokens: list[int], cached: set[int], block_size: int = 16, adapter: str | None = None) -> int:
    """Exercise 4b. How many of a new prompt's tokens the prefix cache supplies, given the set of block names it
    holds: the longest run of the prompt's full blocks, from the first, whose names are all cached, but never the
    block that holds the prompt's last token (that token must run through the model to give the next token's
    logits). Returns a multiple of block_size."""
    raise NotImplementedError


# --- agents ------------------------------------------------------------------------------------------------------


def winner(cells: str) -> str | None:
    """Exercise 5a. The winner of a tic-tac-toe board given as 9 characters, rows A-C left to right ("x", "o" or
    "."; "xxx.o.o.." has x across row A): "x" or "o" when that symbol fills a row, a column or a diagonal, else
    None."""
    raise NotImplementedError


def game_reward(result: str, valid_moves: int) -> float:
    """Exercise 5b. The study guide's reward of a finished game: result is "win", "draw", "loss" or "invalid";
    valid_moves is m, the agent's valid moves before an invalid one (the README's table)."""
    raise NotImplementedError


def row_advantages(rewards: list[float], group_size: int, replies: list[int]) -> list[float]:
    """Exercise 6. Trajectory-group advantages, one per row. rewards[i] is game i's reward, the games of a start
    state next to each other in groups of group_size; replies[i] is how many replies game i has (its rows). Each
    game's advantage is GRPO's (r - mean of its group) / (unbiased std of its group + 1e-4), and every row of a
    game carries it: return the rows' advantages, game by game, reply by reply."""
    raise NotImplementedError


def lessons_to_add(playbook: list[str], lessons: list[str], max_new: int) -> list[str]:
    """Exercise 7. ACE's curator, the additions only: the lessons not already in the playbook, compared by their
    normalised text (lower case, runs of whitespace as one space, no trailing "." or "!", stripped), each once,
    the most frequent first (ties: the one seen first first), at most max_new; each added as first written."""
    raise NotImplementedError


# --- tool calls --------------------------------------------------------------------------------------------------


def parse_hermes(text: str) -> tuple[str, list[dict]]:
    """Exercise 8. Read the tool calls out of a reply written in the Hermes format (Qwen2.5, Hermes, many fine-tunes).

    A call is a JSON object between tags, any text around it:
        I'll look.<tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris"}}
        </tool_call>
    -> ("I'll look.", [{"name": "get_weather", "arguments": {"city": "Paris"}}])
    Returns (content, calls), by these rules (alignlab.tools.calls's):
    - Scan left to right. A block starts at "<tool_call>" and ends just after the first "</tool_call>" that follows;
      with none (the model stopped first) it runs to the end of the text. The next block is looked for from there.
    - The block's body (between the tags), stripped of whitespace (str.strip), is read with json.loads. It is a
      call when that gives a dict whose "name" is a str and which has an "arguments" key; arguments given as a str
      are read with json.loads once more (the API carries them so), and must then be a dict. The call is
      {"name": ..., "arguments": that dict}; any other key is dropped.
    - A block that is not a call (JSON that does not parse, no "name", arguments that are not an object) stays in
      the content exactly as written, tags included: nothing the model wrote is lost.
    - content: the text with every call's block (tags included) cut out, the pieces joined as they are (nothing
      added between them), then stripped. calls: in the order written; [] when there is none.
    """
    raise NotImplementedError
