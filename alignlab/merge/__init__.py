"""Model merging: linear, task arithmetic, TIES, DARE and SLERP on tensors (methods.py), applied to whole models
and to LoRA adapters (models.py); `alignlab merge` is the command.

    merged = ties(base, [a, b], weights=[1, 1], density=0.5)                 # one tensor
    merged, counts = merge_state_dicts(MergeOptions("dare_ties", density=0.5, seed=0), [sd_a, sd_b], base=sd_0)
    merge_directories(MergeOptions("linear"), [("a/adapter", 1), ("b/adapter", 1)], "out", base="base/model")
"""

from alignlab.merge.methods import (
    METHODS,
    combine,
    dare_linear,
    dare_ties,
    drop,
    elect_sign,
    linear,
    merge_deltas,
    merge_tensor,
    slerp,
    task_arithmetic,
    ties,
    trim,
)
from alignlab.merge.models import (
    MergeOptions,
    concat_adapters,
    merge_adapter_deltas,
    merge_directories,
    merge_state_dicts,
    read_adapter_deltas,
)

__all__ = ["METHODS", "MergeOptions", "combine", "concat_adapters", "dare_linear", "dare_ties", "drop", "elect_sign",
           "linear", "merge_adapter_deltas", "merge_deltas", "merge_directories", "merge_state_dicts", "merge_tensor",
           "read_adapter_deltas", "slerp", "task_arithmetic", "ties", "trim"]
