"""Iteration-level scheduling (continuous batching) over a paged KV cache.

A static batch runs until its longest request is done; here the batch is re-formed at every step, so a request
joins as soon as there is room and leaves the moment it finishes (Orca, Yu et al. 2022, OSDI; with vLLM's
paged memory, Kwon et al. 2023, arXiv:2309.06180). Each step spends a budget of max_num_batched_tokens:

    1. decodes: every running sequence that has one token to feed (its last sampled token) gets 1 token
    2. running prefills: sequences still working through their prompt get their next chunk
    3. admissions: waiting requests join, first come first served, while the budget, max_num_seqs (and
       max_loras distinct adapters) allow; a long prompt takes a chunk per step (chunked prefill)

Blocks are taken as each chunk needs them. When the pool runs dry, the most recently admitted running
sequence is preempted: its blocks are freed and it goes back to the front of the waiting queue, keeping its
generated tokens, which it recomputes with its prompt when it runs again (recompute preemption). A step that
preempted admits nobody. The oldest running sequence can always proceed, so nothing ever fails for lack of
memory once a request is accepted (LLMEngine.add_request refuses one that could never fit alone).

Sharing a prompt. A fresh request whose prompt (and adapter) equals that of a sequence still in its prefill
follows it: it waits, holding no blocks, and when the leader's prefill completes it forks the leader's block
table (no copy; see paged.py) and draws its first token from the leader's last logits. With prefix caching, a
request arriving later reuses the prompt's cached full blocks instead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from alignlab.infer.paged import BlockTable, PagedKVCache


class Sequence:
    """One request as the scheduler sees it: its tokens (prompt, then the generated ones), how many of them
    are in the cache, and its blocks."""

    def __init__(self, request_id: str, prompt: list[int], adapter: str | None = None, share: bool = True,
                 data=None):
        self.request_id, self.adapter, self.data = request_id, adapter, data
        self.token_ids = list(prompt)
        self.num_prompt = len(prompt)
        self.share = share  # may take cached blocks or follow a leader (False when every prompt logit is wanted)
        self.table = BlockTable()
        self.num_computed = 0  # tokens whose keys and values are in the cache
        self.leader: Sequence | None = None  # the sequence whose prefill this one waits for
        self.followers: list[Sequence] = []

    @property
    def need(self) -> int:
        """Tokens still to run through the model before the next token can be drawn."""
        return len(self.token_ids) - self.num_computed

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    def key(self) -> tuple:
        """What a follower must share with its leader: the prompt and the adapter."""
        return tuple(self.token_ids[:self.num_prompt]), self.adapter


@dataclass
class Chunk:
    """Run tokens [start, start + n) of seq this step."""

    seq: Sequence
    start: int
    n: int


class Scheduler:
    def __init__(self, cache: PagedKVCache, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                 max_loras: int | None = None):
        self.cache = cache
        self.max_num_seqs, self.max_num_batched_tokens, self.max_loras = max_num_seqs, max_num_batched_tokens, max_loras
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in order of admission
        self.leaders: dict[tuple, Sequence] = {}  # prompt key -> the fresh sequence prefilling it
        self.num_preemptions = 0
        self.prefix_hit_tokens = 0  # prompt tokens taken from the prefix cache instead of computed

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step ---------------------------------------------------------------------------------------

    def schedule(self) -> list[Chunk]:
        """This step's chunks (decodes first, then prefills); may preempt running sequences."""
        self.budget = self.max_num_batched_tokens
        self.chunks: dict[Sequence, Chunk] = {}
        preempted = self.num_preemptions
        # 1. decodes, oldest first
        for seq in list(self.running):
            if self.budget > 0 and seq in self.running and seq.leader is None and seq.need == 1:
                self._take(seq, 1)
        # 2. prefills of running sequences
        for seq in list(self.running):
            if self.budget > 0 and seq in self.running and seq.leader is None and seq.need > 1:
                self._take(seq, min(seq.need, self.budget))
        # 3. admissions
        while (self.waiting and self.budget > 0 and len(self.running) < self.max_num_seqs
               and self.num_preemptions == preempted):
            seq = self.waiting[0]
            if not self._adapter_fits(seq.adapter):
                break
            fresh = seq.share and seq.num_generated == 0
            leader = self.leaders.get(seq.key()) if fresh and seq.num_computed == 0 else None
            if leader is not None:  # same prompt in prefill: wait for it, then fork its blocks
                self.waiting.popleft()
                seq.leader = leader
                leader.followers.append(seq)
                self.running.append(seq)
                continue
            if seq.share and not seq.table.blocks:
                seq.num_computed = self.cache.match_prefix(seq.table, seq.token_ids, seq.adapter)
            n = min(seq.need, self.budget)
            if not self.cache.reserve(seq.table, seq.num_computed, seq.num_computed + n):
                self.cache.free(seq.table)
                seq.num_computed = 0
                break
            self.waiting.popleft()
            self.prefix_hit_tokens += seq.num_computed
            self.running.append(seq)
            self._chunk(seq, n)
            if fresh:
                self.leaders.setdefault(seq.key(), seq)
        return list(self.chunks.values())

    def _take(self, seq: Sequence, n: int) -> bool:
        """Blocks for seq's next n tokens, preempting the most recently admitted sequences (seq itself last)."""
        while not self.cache.reserve(seq.table, seq.num_computed, seq.num_computed + n):
            victim = next(s for s in reversed(self.running) if s.leader is None)
            self.preempt(victim)
            if victim is seq:
                return False
        self._chunk(seq, n)
        return True

    def _chunk(self, seq: Sequence, n: int):
        self.chunks[seq] = Chunk(seq, seq.num_computed, n)
        self.budget -= n

    def _adapter_fits(self, adapter: str | None) -> bool:
        if adapter is None or self.max_loras is None:
            return True
        active = {s.adapter for s in self.running if s.adapter is not None}
        return adapter in active or len(active) < self.max_loras

    # --- sequences leave ----------------------------------------------------------------------------------

    def preempt(self, seq: Sequence):
        """Free seq's blocks and put it (and whoever waited for its prefill) back at the front of the queue."""
        self.num_preemptions += 1
        back = [seq, *self._release(seq)]
        for s in reversed(back):
            self.waiting.appendleft(s)

    def finish(self, seq: Sequence):
        """seq is done: free its blocks; sequences waiting for its prefill go back to the queue."""
        for s in reversed(self._release(seq)):
            self.waiting.appendleft(s)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in [*self.running, *self.waiting]:
            if seq.request_id == request_id:
                if seq in self.waiting:
                    self.waiting.remove(seq)
                    self.cache.free(seq.table)
                    return seq
                if seq.leader is not None:
                    seq.leader.followers.remove(seq)
                    seq.leader = None
                    self.running.remove(seq)
                    return seq
                self.finish(seq)
                return seq
        return None

    def _release(self, seq: Sequence) -> list[Sequence]:
        """Take seq out of the running list and the cache; returns its followers, now on their own."""
        if seq in self.running:
            self.running.remove(seq)
        if getattr(self, "chunks", None) and seq in self.chunks:
            self.budget += self.chunks.pop(seq).n
        self.cache.free(seq.table)
        seq.num_computed = 0
        if self.leaders.get(seq.key()) is seq:
            del self.leaders[seq.key()]
        followers, seq.followers = seq.followers, []
        for f in followers:
            f.leader = None
            self.running.remove(f)
        return followers

    def fork_followers(self, seq: Sequence) -> list[Sequence]:
        """seq has just computed its whole prompt: its followers take its blocks and continue on their own."""
        if self.leaders.get(seq.key()) is seq:
            del self.leaders[seq.key()]
        followers, seq.followers = seq.followers, []
        for f in followers:
            f.table = self.cache.fork(seq.table)
            f.num_computed, f.leader = seq.num_computed, None
        return followers

    def stats(self) -> dict[str, int]:
        """The pool's counters (paged.py), with the running sequences' wasted slots."""
        live = [(s.table, s.num_computed) for s in self.running if s.table.blocks]
        return {**self.cache.stats(live), "running": len(self.running), "waiting": len(self.waiting),
                "preemptions": self.num_preemptions, "prefix_hit_tokens": self.prefix_hit_tokens}
