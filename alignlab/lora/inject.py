"""Put LoRA layers into a model, and take them out: select targets, freeze, merge, disable, unload.

Targets are chosen as PEFT chooses them (module names as `model.named_modules()` gives them, e.g.
`model.layers.0.self_attn.q_proj`):

    ["q_proj", "v_proj"]   a list: names equal to an entry or ending with "." + an entry
    r".*\\.(q|v)_proj"      a string: a regex that must match the whole name
    "all-linear"           every linear layer except the output head (lm_head)
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from alignlab.lora.layer import INITS, LoraLinear


@dataclass
class LoraConfig:
    """What to adapt and how; the defaults are PEFT's (its default targets for the Llama family)."""

    r: int = 8
    lora_alpha: float = 8
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_dropout: float = 0.0
    use_rslora: bool = False  # s = α / √r instead of α / r (arXiv:2312.03732)
    use_dora: bool = False  # weight-decomposed LoRA (arXiv:2402.09353)
    init_lora_weights: bool | str = True  # True (B = 0), False, "gaussian", "pissa" (arXiv:2404.02948)
    bias: str = "none"  # biases stay frozen

    def __post_init__(self):
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise ValueError("LoraConfig.target_modules is empty")
        if self.bias != "none":
            raise ValueError(f"LoraConfig.bias={self.bias!r} is not supported; only 'none' (biases stay frozen)")
        if self.init_lora_weights not in INITS:
            raise ValueError(f"LoraConfig.init_lora_weights must be one of {INITS}, got {self.init_lora_weights!r}")
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def all_linear(self) -> bool:
        return isinstance(self.target_modules, str) and self.target_modules.lower() == "all-linear"


def is_linear(module: nn.Module) -> bool:
    """What LoRA can wrap: a module with in_features and out_features (nn.Linear, a quantized linear, ...)."""
    return isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int)


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules `apply_lora` would wrap; raises ValueError if none, or if one cannot be wrapped."""
    head = getattr(model, "lm_head", None)
    targets = config.target_modules
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        if config.all_linear:
            hit = is_linear(module) and module is not head
        elif isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = name in targets or any(name.endswith("." + t) for t in targets)
        if not hit:
            continue
        if module is head:
            raise ValueError(f"target_modules={targets!r} selects the output head {name!r}: LoRA on the head is not "
                             "supported (CausalLM reads lm_head.weight directly for the fused loss and the KV cache)")
        if not is_linear(module):
            raise ValueError(f"target_modules={targets!r} selects {name!r}, a {type(module).__name__}; LoRA wraps "
                             "linear layers only (modules with in_features and out_features)")
        names.append(name)
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and is_linear(m)})
        raise ValueError(f"target_modules={targets!r} matches no module of this model; its linear layers are "
                         f"named {linear}")
    return names


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap the target modules in LoraLinear, in place, and freeze every other parameter.

    Returns the model (with `model.lora_config = config`); `count_parameters(model)` gives the counts.
    """
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; merge_and_unload it before applying another adapter")
    names = find_targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        layer = LoraLinear(model.get_submodule(name), r=config.r, lora_alpha=config.lora_alpha,
                           lora_dropout=config.lora_dropout, use_rslora=config.use_rslora,
                           use_dora=config.use_dora, init_lora_weights=config.init_lora_weights)
        layer.train(model.training)
        model.set_submodule(name, layer)
    model.lora_config = config
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, as PEFT's get_nb_trainable_parameters (shared tensors once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (inference: no extra products). Undo with unmerge_lora."""
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


@contextmanager
def disable_lora(model: nn.Module):
    """Run the base model alone inside the block, e.g. as the frozen DPO reference without a second copy:

        with disable_lora(policy), torch.no_grad():
            ref_logits = policy(x)
    """
    layers = [layer for _, layer in lora_layers(model)]
    was_disabled = [layer.disabled for layer in layers]  # restored on exit, so blocks can nest
    merged = [layer for layer in layers if layer.merged]
    for layer in merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, was_disabled):
            layer.disabled = flag
        for layer in merged:
            layer.merge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors only, by module name: `model.layers.0.self_attn.q_proj.lora_A.weight`, ..."""
    out = {}
    for name, layer in lora_layers(model):
        for key, p in layer.named_parameters():
            if key.startswith("lora_"):
                out[f"{name}.{key}"] = p.detach()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an adapter (names as lora_state_dict gives them) into the model's LoRA layers; every key must match."""
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("unmerge_lora before loading adapter weights into a merged model")
    own = dict(model.named_parameters())
    expected = set(lora_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"adapter does not fit the model: {len(missing)} missing tensors {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}")
    for key, t in state.items():
        if own[key].shape != t.shape:
            raise ValueError(f"adapter tensor {key} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(own[key].shape)} (different r or model size?)")
    for key, t in state.items():
        own[key].copy_(t)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain base layers back: a model without LoRA, e.g. to save in HF format.
    Parameters stay frozen as apply_lora left them (as in PEFT)."""
    for name, layer in lora_layers(model):
        layer.merge()
        model.set_submodule(name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
