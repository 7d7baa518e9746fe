"""A paged KV cache: fixed-size blocks in one pre-allocated pool, a block table per sequence.

PagedAttention (Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", arXiv:2309.06180). A static cache reserves prompt + max_new_tokens slots for every row up front;
most of that is never filled (requests stop early) and none of it can be shared. Here the cache is a pool of
`num_blocks` blocks of `block_size` slots, per layer

    K, V: [num_blocks, block_size, Hkv, d]      (fp32 on the CPU, see CausalLM.new_cache; else the model's dtype)

and a sequence owns a list of block ids, its block table: token i of the sequence lives in block
table[i // block_size] at slot i % block_size. Blocks are taken when a sequence reaches them, so a sequence
holding n tokens occupies ceil(n / block_size) blocks and wastes at most block_size - 1 slots, all in its last
block:

    wasted = sum over sequences of  ceil(n_s / bs) * bs - n_s   <   (number of sequences) * bs

(block_size 16, 64 sequences: under 1024 slots, whatever their lengths; a static cache of 64 rows x 2048 wastes
2048 - n_s per row.)

Sharing. Each block has a reference count. The n samples of one prompt (GRPO's G completions) fork one
sequence's table: every block gains a reference, nothing is copied. A sequence that writes into a block others
still read first copies it (copy-on-write); with forks that is only ever the prompt's last, partial block.

Prefix caching. Every FULL block is named by a hash chain over its tokens,

    h_i = hash((h_{i-1}, tokens of block i, adapter name)),

so h_i names the whole prefix up to the end of block i (the adapter is part of the name: the same tokens under
another LoRA adapter have other keys and values). A full block whose last reference goes stays in the pool, at
reference count 0, in an LRU of evictable blocks; it is only reused for other tokens when no free block is left.
A new request looks its prompt's full blocks up in order and takes the longest run found, never the block of its
last token: that token must still run through the model to give the logits of the first new token. The keys and
values in a cached block are those the request would have computed itself, so outputs never change because of
it. (Python's 64-bit tuple hash names a block; a collision of two different prefixes has probability ~2^-64.)

How the model reads the pool: `PagedRows` is the cache object of one forward over the scheduled sequences. Row
b's new tokens go to its slots [lengths[b], lengths[b] + n_b). Its `attend` (the model's attention layers call it
in place of `append`) writes them into their blocks, then gathers each row's blocks: one index_select of the
block ids, after which [B, blocks, block_size, Hkv, d] is already the rows' slots in order, so a view (not a
second copy) gives attention its [B, Hkv, slots, d]. Slots a row does not hold yet are masked by the causal
mask, as in KVCache; the pool is zero-initialised so that such slots are always finite.

Rows of very different lengths are not padded to the longest: `length_groups` splits the rows into groups of
similar length, and each group gathers and attends over only as many blocks as its own longest row holds (a
request that joined late, with a short context, no longer reads a long one's worth of blocks). The gather and the
attention are most of a decode step's time after the matrix products, and both grow with the slots read.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import torch

# A group of rows costs one more gather of K and of V and one more attention call: about as long as gathering and
# attending over this many more slots (2-core CPU, 5M Llama: 1024 to 4096 measured alike), so rows are only split
# off when they save more.
GROUP_COST_SLOTS = 2048


@dataclass
class BlockTable:
    """A sequence's blocks, and the hash chain of its full blocks computed so far (for the prefix cache)."""

    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)


class BlockPool:
    """Which blocks are in use (reference counts), free, or cached (count 0, holding a known prefix)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))  # count 0, nothing worth keeping
        self.evictable: OrderedDict[int, None] = OrderedDict()  # count 0, a cached prefix; oldest first
        self.block_of: dict[int, int] = {}  # prefix hash -> block
        self.hash_of: dict[int, int] = {}  # block -> prefix hash

    def available(self) -> int:
        return len(self.free) + len(self.evictable)

    def allocate(self) -> int:
        """A block with one reference: a free one, else the least recently used cached one (its prefix is lost)."""
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.block_of[self.hash_of.pop(block)]
        else:
            raise RuntimeError("no free KV block")  # the scheduler checks `available` first
        self.refs[block] = 1
        return block

    def retain(self, block: int):
        if self.refs[block] == 0:
            self.evictable.pop(block)
        self.refs[block] += 1

    def release(self, block: int):
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if block in self.hash_of:
                self.evictable[block] = None  # newest
            else:
                self.free.append(block)

    def lookup(self, h: int) -> int | None:
        return self.block_of.get(h)

    def register(self, block: int, h: int):
        """Name a full block by its prefix hash (the first block computed for a prefix keeps the name)."""
        if h not in self.block_of and block not in self.hash_of:
            self.block_of[h], self.hash_of[block] = block, h

    def forget(self):
        """Drop every prefix name (the cached blocks become free): their keys and values are stale."""
        self.free.extend(self.evictable)
        self.evictable.clear()
        self.block_of.clear()
        self.hash_of.clear()

    def counts(self) -> dict[str, int]:
        used = self.num_blocks - self.available()
        return {"total": self.num_blocks, "used": used, "free": len(self.free), "cached": len(self.evictable)}


class PagedKVCache:
    """The pool's tensors and the block operations on sequences' tables."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16,
                 dtype=torch.float32, device=None, prefix_caching: bool = True):
        shape = (n_layers, num_blocks, block_size, n_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # zeros: a masked slot must still be finite
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.num_blocks = block_size, num_blocks
        self.pool = BlockPool(num_blocks)
        self.prefix_caching = prefix_caching
        self.group_cost = GROUP_COST_SLOTS  # see length_groups

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16, prefix_caching: bool = True) -> PagedKVCache:
        """A pool in the model's `cache_dtype()` (fp32 on the CPU, else the keys' dtype)."""
        c, device = model.config, model.lm_head.weight.device
        return cls(c.n_layers, c.n_kv_heads, c.head_dim, num_blocks, block_size, model.cache_dtype(), device,
                   prefix_caching)

    def blocks_for(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.block_size)

    # --- a sequence's blocks ------------------------------------------------------------------------

    def reserve(self, table: BlockTable, start: int, end: int) -> bool:
        """Make slots [start, end) writable by this sequence: new blocks past its table, and a private copy of a
        shared block it is about to write into (copy-on-write). All or nothing: False if the pool is short."""
        bs = self.block_size
        first = start // bs
        shared = first < len(table.blocks) and start < end and self.pool.refs[table.blocks[first]] > 1
        new = max(0, self.blocks_for(end) - len(table.blocks))
        if new + shared > self.pool.available():
            return False
        if shared:
            old = table.blocks[first]
            table.blocks[first] = self.pool.allocate()
            self.k[:, table.blocks[first]] = self.k[:, old]  # every layer
            self.v[:, table.blocks[first]] = self.v[:, old]
            self.pool.release(old)
        table.blocks += [self.pool.allocate() for _ in range(new)]
        return True

    def fork(self, table: BlockTable) -> BlockTable:
        """Another sequence reading the same blocks (one more reference each; nothing copied)."""
        for b in table.blocks:
            self.pool.retain(b)
        return BlockTable(list(table.blocks), list(table.hashes))

    def free(self, table: BlockTable):
        """Drop the sequence's references, last block first (so the LRU evicts a prefix's tail before its head)."""
        for b in reversed(table.blocks):
            self.pool.release(b)
        table.blocks, table.hashes = [], []

    def match_prefix(self, table: BlockTable, tokens: list[int], adapter: str | None) -> int:
        """Take the longest run of cached full blocks that starts `tokens` (never the last token's block) into an
        empty table; returns the number of tokens they hold."""
        if not self.prefix_caching:
            return 0
        h = None
        for i in range((len(tokens) - 1) // self.block_size):
            h = self._hash(h, tokens, i, adapter)
            block = self.pool.lookup(h)
            if block is None:
                break
            self.pool.retain(block)
            table.blocks.append(block)
            table.hashes.append(h)
        return len(table.blocks) * self.block_size

    def commit(self, table: BlockTable, tokens: list[int], n_computed: int, adapter: str | None):
        """Name the sequence's blocks that are full now that `n_computed` of its tokens are in the cache."""
        if not self.prefix_caching:
            return
        for i in range(len(table.hashes), n_computed // self.block_size):
            h = self._hash(table.hashes[-1] if table.hashes else None, tokens, i, adapter)
            table.hashes.append(h)
            self.pool.register(table.blocks[i], h)

    def reset_prefix_cache(self):
        """Forget every cached prefix, e.g. after the weights (or an adapter of the same name) changed."""
        self.pool.forget()

    def _hash(self, parent: int | None, tokens: list[int], i: int, adapter: str | None) -> int:
        bs = self.block_size
        return hash((parent, tuple(tokens[i * bs:(i + 1) * bs]), adapter))

    # --- counters ---------------------------------------------------------------------------------------

    def stats(self, sequences: list[tuple[BlockTable, int]] = ()) -> dict[str, int]:
        """Block counts; with the live (table, tokens held) pairs, also `wasted`: slots of used blocks that hold
        no token (a block shared by several sequences counts once, as filled as its fullest reader)."""
        out = self.pool.counts()
        filled: dict[int, int] = {}
        for table, n in sequences:
            for i, b in enumerate(table.blocks):
                filled[b] = max(filled.get(b, 0), min(self.block_size, max(0, n - i * self.block_size)))
        out["wasted"] = len(filled) * self.block_size - sum(filled.values())
        return out

    # --- one forward --------------------------------------------------------------------------------------

    def rows(self, tables: list[BlockTable], lengths: list[int], n_new: list[int]) -> PagedRows:
        return PagedRows(self, tables, lengths, n_new)


def length_groups(n_blocks: list[int], block_size: int, cost: int = GROUP_COST_SLOTS) -> list[list[int]]:
    """Split rows into groups of similar length: row b reads n_blocks[b] blocks; a group reads as many blocks for
    every row as its longest row needs. Minimises  sum over groups (rows x blocks x block_size + cost)  over
    groups of consecutive lengths (dynamic programming over the distinct block counts). Returns the rows of
    each group, shortest rows first."""
    rows_of = Counter(n_blocks)
    sizes = sorted(rows_of)
    count = [rows_of[s] for s in sizes]
    best, cut = [0.0] + [math.inf] * len(sizes), [0] * (len(sizes) + 1)  # best[j]: sizes[:j] grouped
    for j in range(1, len(sizes) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):  # the last group holds sizes[i:j]
            rows += count[i]
            c = best[i] + rows * sizes[j - 1] * block_size + cost
            if c < best[j]:
                best[j], cut[j] = c, i
    bounds, j = [], len(sizes)
    while j > 0:
        bounds.append((sizes[cut[j]], sizes[j - 1]))
        j = cut[j]
    return [[b for b, n in enumerate(n_blocks) if lo <= n <= hi] for lo, hi in reversed(bounds)]


@dataclass
class _Group:
    rows: torch.Tensor | None  # the rows' indices in the batch (None: every row)
    read: torch.Tensor  # [rows x blocks] block ids
    end: int  # slots gathered per row
    offset: int | torch.Tensor  # each row's first new slot (an int when they agree)


class PagedRows:
    """The cache of one forward over B sequences (model/kv_cache.py's methods): row b holds lengths[b] tokens
    and brings n_new[b] new ones, right-padded to T = max(n_new). The padding is never written to the pool."""

    differentiable = False
    paged = True  # the model calls `attend` (attention over the blocks) instead of `append`

    def __init__(self, cache: PagedKVCache, tables: list[BlockTable], lengths: list[int], n_new: list[int]):
        self.cache, self.tables, self._lengths = cache, tables, list(lengths)
        bs, dev = cache.block_size, cache.k.device
        B, T = len(lengths), max(n_new)
        self.T = T
        # 1. where the new tokens go: (block, offset) of each real (row, t), and its index in the [B * T] tokens
        blk, off, flat = [], [], []
        for b, (table, n0, n) in enumerate(zip(tables, lengths, n_new)):
            for s in range(n0, n0 + n):  # one entry per new token: a decode step has one per row
                blk.append(table.blocks[s // bs])
                off.append(s % bs)
            flat += range(b * T, b * T + n)
        self.w_block = torch.tensor(blk, dtype=torch.long, device=dev)
        self.w_off = torch.tensor(off, dtype=torch.long, device=dev)
        self.select = None if len(flat) == B * T else torch.tensor(flat, dtype=torch.long, device=dev)
        # 2. what attention reads: rows of similar length together, each group as many blocks as its longest row
        needs = [cache.blocks_for(n0 + T) for n0 in lengths]
        self.groups = [self._group(rows, B) for rows in length_groups(needs, bs, cache.group_cost)]

    def _group(self, rows: list[int], B: int) -> _Group:
        lens = [self._lengths[b] for b in rows]
        end = max(lens) + self.T
        n_read = self.cache.blocks_for(end)  # the first n_read blocks of each row (padded with block 0: masked)
        read = [(self.tables[b].blocks + [0] * n_read)[:n_read] for b in rows]
        dev = self.cache.k.device
        return _Group(None if len(rows) == B else torch.tensor(rows, dtype=torch.long, device=dev),
                      torch.tensor(read, dtype=torch.long, device=dev).flatten(), end,
                      lens[0] if min(lens) == max(lens) else torch.tensor(lens, device=dev))

    @property
    def lengths(self) -> list[int]:
        return list(self._lengths)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention) -> torch.Tensor:
        """PagedAttention over the pool: write the real new tokens of k, v [B, Hkv, T, d] into their blocks, then
        run `attention(q, K, V, q_offset)` for each group of rows on the K, V gathered from the group's blocks, up
        to its longest row; returns [B, Hq, T, d]. Rows of a group that hold equally many tokens get one int
        offset (attention's unmasked fast path)."""
        K, V = self.cache.k[layer], self.cache.v[layer]  # [num_blocks, bs, Hkv, d]
        k, v = k.to(K.dtype), v.to(V.dtype)
        self._write(K, V, k, v)
        if max(self._lengths) == 0:  # nothing before: the new keys are all there is
            return attention(q, k, v, 0)
        if len(self.groups) == 1:
            g = self.groups[0]
            return attention(q, self._gather(K, g), self._gather(V, g), g.offset)
        out = None
        for g in self.groups:
            y = attention(q[g.rows], self._gather(K, g), self._gather(V, g), g.offset)
            out = y.new_empty(q.shape[:2] + y.shape[2:]) if out is None else out
            out[g.rows] = y
        return out

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """KVCache's method: write the real new tokens of k, v [B, Hkv, T, d] into their blocks; return this
        layer's K, V [B, Hkv, max(lengths) + T, d] gathered from the rows' blocks."""
        K, V = self.cache.k[layer], self.cache.v[layer]
        k, v = k.to(K.dtype), v.to(V.dtype)
        self._write(K, V, k, v)
        if max(self._lengths) == 0:
            return k, v
        g = self._group(list(range(len(self._lengths))), len(self._lengths))
        return self._gather(K, g), self._gather(V, g)

    def _gather(self, pool: torch.Tensor, g: _Group) -> torch.Tensor:
        """[rows, Hkv, g.end, d]: each of the group's rows' blocks side by side (one index_select; then views)."""
        N, bs, H, d = pool.shape
        rows = pool.index_select(0, g.read).view(-1, self.cache.blocks_for(g.end) * bs, H, d)
        return rows[:, :g.end].transpose(1, 2)

    def _write(self, K, V, k, v):
        B, H, T, d = k.shape
        k, v = k.transpose(1, 2).reshape(B * T, H, d), v.transpose(1, 2).reshape(B * T, H, d)
        if self.select is not None:
            k, v = k[self.select], v[self.select]
        K[self.w_block, self.w_off] = k  # the value is [M, Hkv, d]
        V[self.w_block, self.w_off] = v

    def advance(self, n: int):
        """Nothing to do: the scheduler counts each sequence's tokens (n_new[b], not the padded T)."""
