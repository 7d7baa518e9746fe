"""Post-training quantisation of a whole model: which layers, in what order, with what calibration data.

    method   weights                     calibration   how
    int8     int8 per output row          none          LLM.int8(): vector-wise absmax, outliers in float (int8.py)
    nf4      NF4, blocks of 64            none          QLoRA's 4-bit NormalFloat + double quant (nf4.py)
    rtn      4/8-bit groups, min-max      none          round each group to nearest (intq.py)
    gptq     4/8-bit groups, min-max      Hessians      block by block: H of each Linear's inputs, then GPTQ (gptq.py)
    awq      4-bit groups, asymmetric     activations   scale input channels, fold them into the op before,
                                                        then RTN (awq.py)

Every Linear inside the decoder blocks is quantised; the embeddings, norms and the output head stay in float,
as in bitsandbytes, AutoGPTQ and AutoAWQ. GPTQ runs block by block: the Hessians of block i come from the
calibration batches run through the model whose blocks 0..i-1 are already quantised, so each block corrects the
error the earlier ones left (the forward stops after block i). AWQ needs one pass on the float model: scaling
leaves every function unchanged, so the activations it searches on are the same before and after the folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from alignlab.quant.awq import fold, search_scale
from alignlab.quant.gptq import gptq, hessian, output_error
from alignlab.quant.int8 import Int8Linear
from alignlab.quant.intq import QuantLinear, dequantize_groups, rtn, rtn_weight
from alignlab.quant.linear4bit import quantize_model as quantize_nf4_model

METHODS = ("int8", "nf4", "rtn", "gptq", "awq")
CALIBRATED = ("gptq", "awq")


@dataclass
class QuantConfig:
    method: str = "gptq"
    bits: int = 4
    group_size: int = 128  # -1: one group per row
    sym: bool = True  # gptq/rtn: symmetric grid (GPTQConfig's default); awq is always asymmetric (zero_point)
    act_order: bool = False  # gptq: desc_act
    damp: float = 0.01  # gptq: damp_percent
    block_size: int = 128  # gptq: columns per lazy batch update
    threshold: float = 6.0  # int8: llm_int8_threshold (0 = no outlier decomposition)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method in ("rtn", "gptq") and self.bits not in (4, 8):
            raise ValueError(f"{self.method} takes --bits 4 or 8, got {self.bits}")
        if self.method == "awq" and self.bits != 4:
            raise ValueError(f"awq is 4-bit only (its checkpoint format packs 4-bit codes), got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or -1, got {self.group_size}")
        if not 0 < self.damp < 1:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")
        if self.method == "awq":
            self.sym = False

    def to_dict(self) -> dict:
        return asdict(self)


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """The Linear layers of one decoder block by their names inside it (self_attn.q_proj, mlp.down_proj, ...)."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def check_shapes(model: nn.Module, cfg: QuantConfig) -> None:
    """A clear error when a layer's width does not fit the group size (before any work is done)."""
    if cfg.method not in ("rtn", "gptq", "awq") or cfg.group_size == -1:
        return
    for i, block in enumerate(model.model.layers):
        for name, m in block_linears(block).items():
            if m.in_features % cfg.group_size:
                raise ValueError(f"layers.{i}.{name}: in_features {m.in_features} is not a multiple of group_size "
                                 f"{cfg.group_size}; pick a group size that divides it (or -1)")


def _quant_layer(linear: nn.Module, codes, cfg: QuantConfig) -> QuantLinear:
    return QuantLinear.from_codes(*codes, bits=cfg.bits, group_size=cfg.group_size, bias=linear.bias, sym=cfg.sym)


class _StopForward(Exception):
    """Raised by a hook after the block being calibrated: the rest of the model is not needed."""


def _run(model: nn.Module, batches: list[torch.Tensor]) -> None:
    for ids in batches:
        try:
            model(ids)
        except _StopForward:
            pass


@torch.no_grad()
def quantize_post_training(model: nn.Module, cfg: QuantConfig, calibration: list[torch.Tensor] | None = None,
                           progress=None) -> dict:
    """Quantise `model`'s decoder Linear layers in place. calibration: token id batches [B, T] (gptq, awq).
    progress(i, n): called after each block. Returns a summary (per-layer errors for gptq and awq)."""
    if cfg.method in CALIBRATED and not calibration:
        raise ValueError(f"{cfg.method} needs calibration batches")
    check_shapes(model, cfg)
    model.eval()
    blocks = model.model.layers
    summary: dict = {"method": cfg.method, "layers": 0, "errors": {}}
    if cfg.method == "nf4":
        summary["layers"] = sum(len(block_linears(b)) for b in blocks)
        quantize_nf4_model(blocks, skip=())
        return summary
    if cfg.method == "awq":
        _awq_scales(model, calibration, cfg, summary)
    for i, block in enumerate(blocks):
        layers = block_linears(block)
        if cfg.method == "gptq":
            codes = _gptq_block(model, block, layers, calibration, cfg, summary, i)
        for name, linear in layers.items():
            if cfg.method == "int8":
                new = Int8Linear.from_linear(linear, cfg.threshold)
            elif cfg.method == "gptq":
                new = _quant_layer(linear, codes[name], cfg)
            else:  # rtn, and awq after its scales were folded in
                new = _quant_layer(linear, rtn(linear.weight, cfg.bits, cfg.group_size, cfg.sym), cfg)
            block.set_submodule(name, new.to(linear.weight.device))
            summary["layers"] += 1
        if progress:
            progress(i + 1, len(blocks))
    return summary


def _gptq_block(model, block, layers, calibration, cfg, summary, i):
    """Hessians of block i's Linear inputs (earlier blocks already quantised), then GPTQ on each."""
    H = {name: None for name in layers}
    counts = dict.fromkeys(layers, 0)

    def collect(name):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            n = x.shape[0]
            h = hessian(x) * n
            H[name] = h if H[name] is None else H[name] + h
            counts[name] += n
        return hook

    def stop(module, args, output):
        raise _StopForward

    handles = [m.register_forward_hook(collect(name)) for name, m in layers.items()]
    handles.append(block.register_forward_hook(stop))
    try:
        _run(model, calibration)
    finally:
        for h in handles:
            h.remove()
    codes = {}
    for name, linear in layers.items():
        h = H[name] / counts[name]
        codes[name] = gptq(linear.weight, h, cfg.bits, cfg.group_size, cfg.sym, cfg.act_order, cfg.block_size,
                           cfg.damp)
        summary["errors"][f"layers.{i}.{name}"] = _layer_error(linear.weight, codes[name], h, cfg)
    return codes


def _layer_error(w, codes, H, cfg) -> dict:
    """GPTQ's objective for this layer's codes and for round-to-nearest on the same grid (the baseline)."""
    return {"gptq": output_error(w, dequantize_groups(*codes), H),
            "rtn": output_error(w, rtn_weight(w, cfg.bits, cfg.group_size, cfg.sym), H)}


MAX_AWQ_TOKENS = 2048  # activations kept per input for AWQ's search


def _awq_scales(model, calibration, cfg, summary) -> None:
    """One float pass to record each shared input, then per block: search s for (q, k, v), o (when v's width
    matches), (gate, up) and down, and fold each s into the op before."""
    blocks = model.model.layers
    inputs: dict[tuple[int, str], list[torch.Tensor]] = {}

    def record(key):
        def hook(module, args, output):
            inputs.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
        return hook

    handles = []
    for i, b in enumerate(blocks):
        mlp_in = b.mlp.gate_proj if b.mlp.gated else b.mlp.up_proj
        for key, m in (("qkv", b.self_attn.q_proj), ("o", b.self_attn.o_proj), ("mlp", mlp_in),
                       ("down", b.mlp.down_proj)):
            handles.append(m.register_forward_hook(record((i, key))))
    try:
        _run(model, calibration)
    finally:
        for h in handles:
            h.remove()
    for i, b in enumerate(blocks):
        att, mlp = b.self_attn, b.mlp
        x = {key: torch.cat(inputs[(i, key)])[:MAX_AWQ_TOKENS] for key in ("qkv", "o", "mlp", "down")}
        groups = [("qkv", b.input_layernorm, [att.q_proj, att.k_proj, att.v_proj]),
                  ("mlp", b.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj] if mlp.gated else [mlp.up_proj])]
        if att.v_proj.out_features == att.o_proj.in_features:
            groups.append(("o", att.v_proj, [att.o_proj]))
        if mlp.gated:
            groups.append(("down", mlp.up_proj, [mlp.down_proj]))
        for key, producer, consumers in groups:
            s, before, after = search_scale(x[key], [c.weight for c in consumers], cfg.bits, cfg.group_size, sym=False)
            bias = getattr(producer, "bias", None)
            fold(s, producer.weight.data, None if bias is None else bias.data, [c.weight.data for c in consumers])
            summary["errors"][f"layers.{i}.{key}"] = {"rtn": before, "awq": after}
