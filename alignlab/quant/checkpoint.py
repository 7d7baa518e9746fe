"""Quantised checkpoints in the Hugging Face convention: config.json's `quantization_config` names the method,
and model.safetensors holds each quantised Linear in the tensor layout that method's loaders read.

    method     quantization_config                            tensors of a Linear `L`
    int8       bitsandbytes, load_in_8bit, llm_int8_threshold   L.weight int8 [out, in], L.SCB fp32 [out] (row absmax)
    nf4        bitsandbytes, load_in_4bit, nf4, double quant    L.weight uint8 [n/2, 1] and L.weight.absmax,
                                                                .quant_map, .nested_absmax, .nested_quant_map,
                                                                .quant_state.bitsandbytes__nf4 (the JSON rest)
    rtn, gptq  gptq (checkpoint_format "gptq"), bits,          L.qweight int32 [in * bits / 32, out],
               group_size, desc_act, sym                        L.qzeros int32 [groups, out * bits / 32] (zero - 1),
                                                                L.scales fp16 [groups, out], L.g_idx int32 [in]
    awq        awq, version "gemm", zero_point, group_size      L.qweight int32 [in, out / 8], L.qzeros int32
                                                                [groups, out / 8], L.scales fp16 [groups, out]

GPTQ packs 32 / bits codes into each int32 along the input dimension, code j at bits [bits j, bits (j+1)), and
stores zero - 1 (AutoGPTQ's original format, which its loaders undo). AWQ's GEMM layout packs 8 codes along the
output dimension in the order 0, 2, 4, 6, 1, 3, 5, 7. Everything else (embeddings, norms, the head) is saved as
usual. `load_quantized` reads any of these back into the layers alignlab runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from alignlab.model.hf import read_config, read_weights, resolve_model_dir, save_model
from alignlab.model.transformer import CausalLM
from alignlab.quant.int8 import Int8Linear
from alignlab.quant.intq import QuantLinear, group_index
from alignlab.quant.linear4bit import Linear4bit
from alignlab.quant.nf4 import DYNAMIC, NF4
from alignlab.quant.post_training import QuantConfig

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def quantization_config(cfg: QuantConfig) -> dict:
    """config.json's quantization_config for `cfg`, with the keys transformers' configs use."""
    if cfg.method == "int8":
        return {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False,
                "llm_int8_threshold": cfg.threshold, "llm_int8_skip_modules": ["lm_head"]}
    if cfg.method == "nf4":
        return {"quant_method": "bitsandbytes", "load_in_8bit": False, "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "float32", "llm_int8_skip_modules": ["lm_head"]}
    if cfg.method == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": cfg.group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": ["lm_head"]}
    return {"quant_method": "gptq", "bits": cfg.bits, "group_size": cfg.group_size, "desc_act": cfg.act_order,
            "sym": cfg.sym, "damp_percent": cfg.damp, "checkpoint_format": "gptq", "true_sequential": False}


# --- int32 packing ------------------------------------------------------------------------------------------

def pack_int32(codes: torch.Tensor, bits: int, dim: int, order: list[int] | None = None) -> torch.Tensor:
    """Pack `bits`-bit codes along `dim` into int32: word w holds codes [w k, (w+1) k) (k = 32 / bits), the i-th
    of them (in `order`, default 0..k-1) at bits [bits i, bits (i+1))."""
    k = 32 // bits
    c = codes.to(torch.int64).movedim(dim, -1)
    c = c.reshape(*c.shape[:-1], -1, k)[..., order or list(range(k))]
    words = (c << (bits * torch.arange(k))).sum(-1) & 0xFFFFFFFF
    words = torch.where(words >= 2**31, words - 2**32, words)  # the same 32 bits as a signed int32
    return words.to(torch.int32).movedim(-1, dim)


def unpack_int32(words: torch.Tensor, bits: int, dim: int, order: list[int] | None = None) -> torch.Tensor:
    """The inverse of pack_int32: uint8 codes."""
    k = 32 // bits
    w = words.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    c = (w[..., None] >> (bits * torch.arange(k))) & (2**bits - 1)
    if order:
        c = c[..., torch.argsort(torch.tensor(order))]
    return c.flatten(-2).movedim(-1, dim).to(torch.uint8)


# --- one Linear to and from its tensors ---------------------------------------------------------------------

def _nf4_tensors(layer: Linear4bit) -> dict[str, torch.Tensor]:
    q = layer.weight_nf4
    state = {"quant_type": "nf4", "blocksize": q.block, "dtype": "float32", "shape": list(q.shape),
             "nested_blocksize": q.dq_block, "nested_offset": float(q.absmax_offset), "nested_dtype": "float32"}
    return {"weight": q.data.reshape(-1, 1), "weight.absmax": q.absmax, "weight.quant_map": NF4.clone(),
            "weight.nested_absmax": q.absmax_scale, "weight.nested_quant_map": DYNAMIC.clone(),
            "weight.quant_state.bitsandbytes__nf4": torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)}


def layer_tensors(layer: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one quantised layer (names relative to it)."""
    out = {} if layer.bias is None else {"bias": layer.bias.detach().float()}
    if isinstance(layer, Int8Linear):
        return {**out, "weight": layer.weight, "SCB": layer.SCB}
    if isinstance(layer, Linear4bit):
        return {**out, **_nf4_tensors(layer)}
    q = layer.codes()
    zeros = layer.qzeros.t()  # [groups, out]
    scales = layer.scales.t().to(torch.float16)
    if method == "awq":
        return {**out, "qweight": pack_int32(q.t(), 4, dim=1, order=AWQ_ORDER),
                "qzeros": pack_int32(zeros, 4, dim=1, order=AWQ_ORDER), "scales": scales}
    stored_zeros = (zeros.to(torch.int64) - 1) & (2**layer.bits - 1)  # AutoGPTQ's zero - 1
    return {**out, "qweight": pack_int32(q, layer.bits, dim=1).t().contiguous(),
            "qzeros": pack_int32(stored_zeros, layer.bits, dim=1), "scales": scales, "g_idx": layer.g_idx}


def layer_from_tensors(t: dict[str, torch.Tensor], qc: dict, in_f: int, out_f: int) -> nn.Module:
    """The alignlab layer for one Linear's checkpoint tensors under quantization_config `qc`."""
    bias = t.get("bias")
    method = qc["quant_method"]
    if method == "bitsandbytes" and qc.get("load_in_8bit"):
        layer = Int8Linear(in_f, out_f, bias is not None, qc.get("llm_int8_threshold", 6.0))
        layer.weight.copy_(t["weight"])
        layer.SCB.copy_(t["SCB"])
    elif method == "bitsandbytes":
        state = json.loads(bytes(t["weight.quant_state.bitsandbytes__nf4"].tolist()).decode())
        layer = Linear4bit(in_f, out_f, bias is not None, state["blocksize"], True, state["nested_blocksize"])
        layer.weight_packed.copy_(t["weight"].reshape(-1))
        layer.weight_absmax.copy_(t["weight.absmax"])
        layer.weight_absmax_scale.copy_(t["weight.nested_absmax"])
        layer.weight_absmax_offset.fill_(state["nested_offset"])
    elif method in ("gptq", "awq"):
        bits, g = qc["bits"], qc["group_size"]
        if method == "awq":
            q = unpack_int32(t["qweight"], 4, dim=1, order=AWQ_ORDER).t()
            zeros = unpack_int32(t["qzeros"], 4, dim=1, order=AWQ_ORDER)
            g_idx = group_index(in_f, g)
        else:
            q = unpack_int32(t["qweight"].t(), bits, dim=1)
            zeros = (unpack_int32(t["qzeros"], bits, dim=1).to(torch.int64) + 1) & (2**bits - 1)
            g_idx = t["g_idx"]
        return QuantLinear.from_codes(q, t["scales"].t(), zeros.t(), g_idx, bits, g, bias, qc.get("sym", False))
    else:
        raise ValueError(f"quant_method {method!r} is not one alignlab reads (bitsandbytes, gptq, awq)")
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer


QUANT_TYPES = (Int8Linear, Linear4bit, QuantLinear)


def save_quantized(model: CausalLM, out_dir, cfg: QuantConfig, tokenizer=None, meta: dict | None = None) -> Path:
    """Write the model directory with quantised layers in their checkpoint layout and config.json's
    quantization_config. Other files as `save_model` writes them."""
    from safetensors.torch import save_file

    out = save_model(model, out_dir, tokenizer, meta)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)}
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()
          if not any(k.startswith(n + ".") for n in quantized)}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    for name, layer in quantized.items():
        sd.update({f"{name}.{k}": v.contiguous() for k, v in layer_tensors(layer, cfg.method).items()})
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    hf = json.loads((out / "config.json").read_text())
    hf["quantization_config"] = quantization_config(cfg)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out


def is_quantized(model_dir) -> bool:
    path = Path(model_dir) / "config.json"
    return path.is_file() and "quantization_config" in json.loads(path.read_text())


@torch.no_grad()
def load_quantized(name_or_path) -> CausalLM:
    """A model directory with a quantization_config (bitsandbytes int8/nf4, gptq, awq) as alignlab layers."""
    model_dir = resolve_model_dir(name_or_path)
    hf, config = read_config(model_dir)
    qc = hf.get("quantization_config")
    if not qc:
        raise ValueError(f"{model_dir}/config.json has no quantization_config")
    sd = {k: t for k, (t, _) in read_weights(model_dir).items()}
    model = CausalLM(config)
    skip = set(qc.get("llm_int8_skip_modules") or qc.get("modules_to_not_convert") or [])
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.Linear) or name.split(".")[-1] in skip:
            continue
        prefix = name + "."
        mine = {k[len(prefix):]: sd.pop(k) for k in list(sd) if k.startswith(prefix)}
        if not {"qweight", "SCB", "weight.absmax"} & set(mine):  # left in float (or tied)
            sd.update({prefix + k: v for k, v in mine.items()})
            continue
        model.set_submodule(name, layer_from_tensors(mine, qc, m.in_features, m.out_features))
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(n + "." for n, m in model.named_modules()
                                                             if isinstance(m, QUANT_TYPES)))]
    if config.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: missing {missing[:3]} unexpected {unexpected[:3]}")
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)
