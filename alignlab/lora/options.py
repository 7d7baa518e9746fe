"""LoraOptions: the `lora:` block of a recipe's config (sft, dpo, grpo, ppo), turned into a LoraConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.lora.inject import LoraConfig


@dataclass
class LoraOptions:
    r: int = 16
    alpha: float = 32  # scale = alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0
    targets: Any = "all-linear"  # a list of module names, a regex, or all-linear (every Linear but the head)
    rslora: bool = False
    dora: bool = False
    init: Any = True  # True (PEFT's default: B = 0), gaussian, pissa

    def to_config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=self.targets, lora_dropout=self.dropout,
                          use_rslora=self.rslora, use_dora=self.dora, init_lora_weights=self.init)
