"""Learning-rate schedules: the multiplier applied to the peak learning rate at each optimizer step.

Every schedule warms up linearly from 0 over `warmup` steps (Goyal et al. 2017, arXiv:1706.02677), then:

    constant  1
    linear    1 - p                                       p = (step - warmup) / (total - warmup)
    cosine    r + (1 - r) * (1 + cos(pi * p)) / 2          (Loshchilov & Hutter 2016, arXiv:1608.03983)
    wsd       1 until the last `decay_frac` of training, then r + (1 - r) * (1 - sqrt(q)) over that part,
              q = progress through the decay (warmup-stable-decay: Hu et al. 2024, MiniCPM, arXiv:2404.06395;
              the 1-sqrt cool-down: Hägele et al. 2024, arXiv:2405.18392)

r = min_lr_ratio is the floor the decay ends at. With r = 0 these equal transformers'
get_{constant,linear,cosine}_schedule_with_warmup, and wsd equals get_wsd_schedule(decay_type="1-sqrt").
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine", "wsd")


def lr_factor(step: int, kind: str, warmup: int, total: int, min_lr_ratio: float = 0.0,
              decay_frac: float = 0.2) -> float:
    """The multiplier of the peak learning rate at optimizer step `step` (0-based) of `total`."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if step < warmup:
        return step / max(1, warmup)
    r = min_lr_ratio
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        decay_steps = int(decay_frac * total)
        decay_start = total - decay_steps
        if step < decay_start:
            return 1.0
        q = min(1.0, (step - decay_start) / max(1, decay_steps))
        return r + (1 - r) * (1 - math.sqrt(q))
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return r + (1 - r) * (1 - p)
    return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))
