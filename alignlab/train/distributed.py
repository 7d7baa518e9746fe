"""Data-parallel training across processes, started by `torchrun --nproc_per_node N`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for every process. Each process holds a full copy of the
model and trains on its own slice of the global batch; after backward, DDP averages the gradients over
processes (an all-reduce), so every copy takes the same optimizer step (Li et al. 2020, arXiv:2006.15704).
gloo is the backend on CPU, NCCL on GPU. FSDP2 (`fully_shard`, Zhao et al. 2023, arXiv:2304.11277) instead
shards parameters, gradients and optimizer state across processes: use it when a model does not fit one GPU.

Without torchrun everything here is a no-op: rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (or return a world of 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Dist(rank=rank, local_rank=local_rank, world=world)


def wrap_model(model: torch.nn.Module, d: Dist, strategy: str = "ddp") -> torch.nn.Module:
    """DDP (replicate) or FSDP2 (shard each transformer block, then the whole model)."""
    if not d.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [d.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed strategy {strategy!r}; choose ddp or fsdp")


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
