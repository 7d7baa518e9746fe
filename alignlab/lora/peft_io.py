"""Adapters in PEFT's format: adapter_config.json + adapter_model.safetensors.

PEFT wraps the model twice (PeftModelForCausalLM.base_model = LoraModel, LoraModel.model = the HF model) and
drops the adapter name when it saves, so a tensor named `model.layers.0.self_attn.q_proj.lora_A.weight` here
is saved as `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, and DoRA's magnitude as
`base_model.model.<module>.lora_magnitude_vector`. alignlab's Llama-family names are Hugging Face's, so only
the prefix changes; its GPT-2 splits HF's fused c_attn into q/k/v, so GPT-2 adapters are refused.

A PiSSA adapter (init_lora_weights "pissa") only makes sense on the residual base, so loading it redoes the
SVD on the original weights (which leaves the residual in the base) before reading A and B, as PEFT does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from alignlab.errors import CheckpointError
from alignlab.lora.inject import LoraConfig, apply_lora, find_targets, load_lora_state_dict, lora_state_dict

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."

# PEFT options this reader does not implement: loading a config that sets one of them is refused
UNSUPPORTED = ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "exclude_modules",
               "modules_to_save", "lora_bias", "fan_in_fan_out", "trainable_token_indices", "target_parameters",
               "layer_replication", "use_qalora", "use_bdlora", "alora_invocation_tokens", "megatron_config")
# inits that leave the base weights alone, so the loaded A, B (and m) are all that matter
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


def _check_arch(model: nn.Module, action: str):
    arch = getattr(getattr(model, "config", None), "arch", None)
    if arch == "gpt2":
        raise ValueError(f"cannot {action} a PEFT adapter for GPT-2: alignlab splits HF's fused c_attn into "
                         "q/k/v_proj, so the module names and shapes differ from the PEFT keys")


def peft_config(config: LoraConfig, targets: list[str], base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json as peft 0.21 writes it (its defaults for every option alignlab does not use)."""
    if config.all_linear:  # PEFT resolves "all-linear" to the module names before saving
        target_modules = sorted(targets)
    elif isinstance(config.target_modules, str):
        target_modules = config.target_modules
    else:
        target_modules = sorted(set(config.target_modules))
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.r, "lora_alpha": config.lora_alpha, "target_modules": target_modules,
        "lora_dropout": config.lora_dropout, "use_rslora": config.use_rslora, "use_dora": config.use_dora,
        "init_lora_weights": config.init_lora_weights, "bias": config.bias, "fan_in_fan_out": False,
        "modules_to_save": None, "exclude_modules": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "lora_bias": False, "inference_mode": True, "revision": None,
        "auto_mapping": None, "layer_replication": None, "loftq_config": {}, "megatron_config": None,
        "megatron_core": "megatron.core", "target_parameters": None, "trainable_token_indices": None,
        "use_qalora": False, "qalora_group_size": 16, "ensure_weight_tying": False,
    }


def save_adapter(model: nn.Module, directory: str | Path, config: LoraConfig | None = None,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the model's adapter as PEFT does; `PeftModel.from_pretrained(hf_model, directory)` loads it.
    config defaults to the one apply_lora used."""
    _check_arch(model, "save")
    config = config or getattr(model, "lora_config", None)
    state = lora_state_dict(model)
    if config is None or not state:
        raise ValueError("the model has no LoRA layers to save (apply_lora or load_adapter first)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    targets = sorted({k.split(".lora_")[0] for k in state})
    tensors = {PREFIX + k: v.contiguous() for k, v in state.items()}
    save_file(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    cfg = peft_config(config, targets, base_model_name_or_path)
    (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def read_adapter_config(directory: str | Path) -> LoraConfig:
    """adapter_config.json -> LoraConfig; options alignlab does not implement are a ValueError."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no adapter config (is {directory} a PEFT adapter directory?)")
    raw = json.loads(path.read_text())
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported (only LORA)")
    used = [k for k in UNSUPPORTED if raw.get(k)]
    if used:
        raise CheckpointError(f"{path}: PEFT options {used} are set; alignlab's LoRA does not implement them")
    if not raw.get("target_modules"):
        raise CheckpointError(f"{path}: target_modules is not set")
    init = raw.get("init_lora_weights", True)
    if init not in (*PLAIN_INITS, "pissa"):
        raise CheckpointError(f"{path}: init_lora_weights={init!r} changes the base weights in a way alignlab does not "
                         "reproduce; only True, 'gaussian' and 'pissa' adapters can be loaded")
    return LoraConfig(r=raw["r"], lora_alpha=raw["lora_alpha"], target_modules=raw["target_modules"],
                      lora_dropout=raw.get("lora_dropout", 0.0), use_rslora=raw.get("use_rslora", False),
                      use_dora=raw.get("use_dora", False), bias=raw.get("bias", "none"),
                      init_lora_weights="pissa" if init == "pissa" else True)


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply a PEFT-format LoRA adapter (made by PEFT or by save_adapter) to the model, in place."""
    _check_arch(model, "load")
    directory = Path(directory)
    config = read_adapter_config(directory)
    if (directory / WEIGHTS_NAME).is_file():
        tensors = load_file(directory / WEIGHTS_NAME)
    elif (directory / LEGACY_WEIGHTS_NAME).is_file():
        tensors = torch.load(directory / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME})")
    bad = [k for k in tensors if not k.startswith(PREFIX)]
    if bad:
        raise CheckpointError(f"{directory}: tensor names must start with {PREFIX!r}, found {bad[:3]}")
    state = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    _check_tensors(model, config, state, directory)  # before touching the model
    apply_lora(model, config)
    load_lora_state_dict(model, state)
    return model


def _check_tensors(model: nn.Module, config: LoraConfig, state: dict[str, torch.Tensor], where: Path):
    """The adapter's tensors must be exactly those its config puts on this model, with the right shapes."""
    expected = {}
    for name in find_targets(model, config):
        m = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (config.r, m.in_features)
        expected[f"{name}.lora_B.weight"] = (m.out_features, config.r)
        if config.use_dora:
            expected[f"{name}.lora_magnitude_vector"] = (m.out_features,)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"{where}: the adapter does not fit this model: {len(missing)} missing tensors "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{where}: {key} has shape {tuple(state[key].shape)}, this model needs {shape}")
