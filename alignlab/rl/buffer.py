"""The Trainer's data in on-policy RL: micro-batches cut from the current rollout batch, a new batch when it is used up.

    buffer = RolloutBuffer(collect, sampler, runner, monitor, parts=grad_accum, passes=num_iterations)
    batch = buffer.next_batch()          # the Trainer calls this grad_accum times per optimizer step

A rollout batch serves `passes` passes of `parts` micro-batches each (GRPO: num_iterations passes of grad_accum;
PPO: num_ppo_epochs passes of num_mini_batches * grad_accum, its rows shuffled at the start of each pass when
`shuffle` is set). `collect(rollout_index)` makes the next batch (alignlab/rl/collect.py). state_dict holds
everything a resumed run needs to continue exactly: the prompt sampler, the current batch, the position in it, the
reward functions' failure counts and the monitor's history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch

from alignlab.data.sampler import EpochSampler
from alignlab.rewards import RewardRunner, RewardStats
from alignlab.rl.collect import RolloutBatch
from alignlab.rl.monitor import RLMonitor


class RolloutBuffer:
    def __init__(self, collect: Callable[[list[int], int], RolloutBatch], sampler: EpochSampler,
                 runner: RewardRunner, monitor: RLMonitor, device: torch.device, parts: int, passes: int,
                 shuffle_seed: int | None = None):
        self.collect, self.sampler, self.runner, self.monitor = collect, sampler, runner, monitor
        self.device, self.parts, self.passes, self.shuffle_seed = device, parts, passes, shuffle_seed
        self.buffer: dict | None = None
        self.cursor = 0  # micro-batches taken from the current rollout batch
        self.rollouts = 0  # rollout batches collected so far
        self.zero_variance_batches = 0  # batches where every group's completions scored alike
        self.metrics: dict = {}  # the current rollout batch's metrics
        self.fresh = False  # the metrics are not logged yet

    def next_batch(self) -> dict:
        if self.buffer is None or self.cursor >= self.parts * self.passes:
            batch = self.collect(self.sampler.next_indices(), self.rollouts)
            self.rollouts += 1
            if batch.metrics["frac_reward_zero_std"] == 1.0:
                self.zero_variance_batches += 1
            self.buffer, self.metrics = batch.tensors, {**batch.metrics,
                                                        "zero_variance_batches": self.zero_variance_batches}
            self.cursor, self.fresh = 0, True
        if self.shuffle_seed is not None and self.cursor % self.parts == 0:  # a new pass: a new order of the rows
            g = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + self.rollouts * 1009
                                              + self.cursor // self.parts)
            order = torch.randperm(self.buffer["input_ids"].shape[0], generator=g).to(self.device)
            self.buffer = {k: v[order] for k, v in self.buffer.items()}
        part = self.cursor % self.parts
        self.cursor += 1
        return self.micro_batch(part)

    def micro_batch(self, part: int) -> dict:
        return micro_batch(self.buffer, part, self.parts)

    def step_metrics(self, step: int, out: dict) -> dict:
        """The Trainer's step_metrics: the rollout batch's metrics on the step that used it first, and what the
        monitor's alarms say."""
        extra = {}
        if self.fresh:
            extra, self.fresh = dict(self.metrics), False
        extra.update(self.monitor.observe(step, {**out, **extra}))
        return extra

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "cursor": self.cursor, "rollouts": self.rollouts,
                "buffer": None if self.buffer is None else {k: v.cpu() for k, v in self.buffer.items()},
                "metrics": self.metrics, "fresh": self.fresh, "zero_variance_batches": self.zero_variance_batches,
                "reward_stats": {k: asdict(s) for k, s in self.runner.stats.items()},
                "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.cursor, self.rollouts, self.fresh = state["cursor"], state["rollouts"], state["fresh"]
        self.buffer = None if state["buffer"] is None else {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.metrics, self.zero_variance_batches = dict(state["metrics"]), state["zero_variance_batches"]
        for k, s in state["reward_stats"].items():
            if k in self.runner.stats:
                self.runner.stats[k] = RewardStats(**s)
        self.monitor.load_state_dict(state["monitor"])


def micro_batch(batch: dict, part: int, parts: int) -> dict:
    """Rows part/parts of a rollout batch, trimmed to their own longest sequence and completion. A part may cut a
    group of G; the rows of it that the part holds still share their prompt's forward."""
    rows = torch.tensor_split(torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device), parts)[part]
    lengths = batch["completion_mask"][rows].sum(-1).long()
    T = int((batch["prompt_lens"][rows] + lengths).max())
    C = max(1, int(lengths.max()))
    out = {}
    for k, v in batch.items():
        v = v[rows]
        if k == "input_ids":
            v = v[:, :T]
        elif v.dim() == 2:
            v = v[:, :C]
        out[k] = v
    return out
