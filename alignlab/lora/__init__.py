"""LoRA, rsLoRA, DoRA and PiSSA from scratch, with adapters in PEFT's format.

    model = apply_lora(load_model(dir), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    ...train: only the adapter's parameters require grad...
    save_adapter(model, "out/adapter")           # PeftModel.from_pretrained(hf_model, "out/adapter") loads it
    with disable_lora(model): ref = model(x)     # the base alone, e.g. DPO's reference
    plain = merge_and_unload(model)              # W + s B A folded in, LoRA layers gone
    adapters = MultiLora(base); adapters.load("a", dir)   # many adapters mixed in one batch (multi.py)
"""

from alignlab.lora.inject import (
    LoraConfig,
    apply_lora,
    count_parameters,
    disable_lora,
    find_targets,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from alignlab.lora.layer import LoraLinear
from alignlab.lora.multi import MultiLora, MultiLoraLinear
from alignlab.lora.options import LoraOptions
from alignlab.lora.peft_io import load_adapter, read_adapter_config, save_adapter

__all__ = ["LoraConfig", "LoraLinear", "LoraOptions", "MultiLora", "MultiLoraLinear", "apply_lora",
           "count_parameters", "disable_lora", "find_targets", "load_adapter", "load_lora_state_dict", "lora_layers",
           "lora_state_dict", "merge_and_unload", "merge_lora", "read_adapter_config", "save_adapter", "unmerge_lora"]
