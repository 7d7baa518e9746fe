"""A Linear layer whose weight is stored in NF4 (4 bits + block constants): the frozen base of QLoRA.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314, eq. 5) computes Y = X dequant(W_NF4) ^T + X L1 L2 s: the base
weight is dequantised on the fly in every forward and backward, gradients flow through it to the input (and to
LoRA's adapters) but never to the 4-bit weight itself. LoRA wraps a Linear4bit as it wraps any base: through
`in_features`, `out_features`, `forward(x)` and `dequantize()` (the fp32 weight [out, in]). Under bf16
(autocast, or bf16 inputs) the weight is dequantised to bf16 and the products run in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from alignlab.quant.nf4 import NF4Tensor, quantize_nf4


class _NF4Matmul(torch.autograd.Function):
    """y = x W^T with W dequantised from NF4. Backward dequantises W again (dL/dx = dL/dy W) instead of
    keeping the fp32 weight alive between forward and backward, as bitsandbytes' MatMul4Bit does.

    W is dequantised to the dtype the product runs in: autocast's under torch.autocast (bf16), else x's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: NF4Tensor) -> torch.Tensor:
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        ctx.q, ctx.dtype, ctx.x_dtype = q, dtype, x.dtype
        return F.linear(x.to(dtype), q.dequantize(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return (grad.to(ctx.dtype) @ ctx.q.dequantize(ctx.dtype)).to(ctx.x_dtype), None


class Linear4bit(nn.Module):
    """y = x dequant(W)^T + b with W [out, in] stored as NF4 buffers (no gradients) and b in fp32.

    Buffers (saved in the state dict, moved by .to()): weight_packed (uint8, two codes per byte),
    weight_absmax (fp32 per block, or uint8 with double quant), weight_absmax_scale and weight_absmax_offset
    (double quant only). See alignlab/quant/nf4.py for the layout.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block: int = 64,
                 double_quant: bool = True, dq_block: int = 256, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block, self.dq_block = block, dq_block
        n_blocks = math.ceil(in_features * out_features / block)
        self.register_buffer("weight_packed", torch.zeros(n_blocks * block // 2, dtype=torch.uint8, device=device))
        absmax_dtype = torch.uint8 if double_quant else torch.float32
        self.register_buffer("weight_absmax", torch.zeros(n_blocks, dtype=absmax_dtype, device=device))
        if double_quant:
            n_scales = math.ceil(n_blocks / dq_block)
            self.register_buffer("weight_absmax_scale", torch.zeros(n_scales, device=device))
            self.register_buffer("weight_absmax_offset", torch.zeros((), device=device))
        else:
            self.register_buffer("weight_absmax_scale", None)
            self.register_buffer("weight_absmax_offset", None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, double_quant: bool = True, block: int = 64,
                    dq_block: int = 256) -> Linear4bit:
        """Quantise an nn.Linear's weight to NF4; the bias is copied in fp32 (trainable if it was)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, block=block,
                    double_quant=double_quant, dq_block=dq_block, device=w.device)
        q = quantize_nf4(w, block=block, double_quant=double_quant, dq_block=dq_block)
        layer.weight_packed.copy_(q.data)
        layer.weight_absmax.copy_(q.absmax)
        if double_quant:
            layer.weight_absmax_scale.copy_(q.absmax_scale)
            layer.weight_absmax_offset.copy_(q.absmax_offset)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    @property
    def double_quant(self) -> bool:
        return self.weight_absmax_scale is not None

    @property
    def weight_nf4(self) -> NF4Tensor:
        """The buffers seen as an NF4Tensor (no copy)."""
        return NF4Tensor(self.weight_packed, self.weight_absmax, torch.Size((self.out_features, self.in_features)),
                         self.block, self.weight_absmax_scale, self.weight_absmax_offset, self.dq_block)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out_features, in_features]."""
        return self.weight_nf4.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4Matmul.apply(x, self.weight_nf4)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def nbytes(self) -> int:
        """Bytes of the stored weight: packed codes + absmax (+ its 8-bit scales and offset); bias excluded."""
        return self.weight_nf4.nbytes()

    def bytes_per_param(self) -> float:
        """nbytes() per weight: 0.5 + 4/64 = 0.5625 without double quant, ~0.5 + 1/64 + 4/(64*256) with it."""
        return self.nbytes() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block={self.block}, double_quant={self.double_quant}")


def _skipped(name: str, skip) -> bool:
    """True if a skip entry is a run of whole dotted parts of the module's name: "mlp", "layers.0" and
    "model.layers.0.mlp.up_proj" all skip "model.layers.0.mlp.up_proj" ("up" does not)."""
    return any(f".{s}." in f".{name}." for s in skip)


@torch.no_grad()
def quantize_model(model: nn.Module, skip=("lm_head",), double_quant: bool = True, block: int = 64,
                   dq_block: int = 256) -> nn.Module:
    """Replace every nn.Linear of `model` (alignlab's Linear included) by a Linear4bit, in place, and return it.

    Left in full precision: embeddings, norms, modules named in `skip` (by default the output head, as QLoRA
    does), LoRA adapter matrices (names starting with "lora_"; quantise before injecting LoRA), and a Linear
    whose weight is shared with another module (a tied head), so tying survives. `quant_stats(model)` then
    counts what was quantised and the bytes before and after.
    """
    uses = {}  # how many modules hold each parameter: > 1 means tied
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or _skipped(name, skip):
            continue
        if any(part.startswith("lora_") for part in name.split(".")) or uses[id(module.weight)] > 1:
            continue
        targets.append(name)
    for name in targets:
        model.set_submodule(name, Linear4bit.from_linear(model.get_submodule(name), double_quant, block, dq_block))
    return model


def quant_stats(model: nn.Module) -> dict:
    """Counts and bytes of a (partly) quantised model.

    n_linear4bit: Linear4bit modules; params_4bit: weights they hold; params_float: all other parameters
    (embeddings, norms, biases, the head); bytes_4bit: their NF4 storage; bytes_float: storage of the float
    parameters; bytes_total = bytes_4bit + bytes_float; bytes_fp32: the same model fully in fp32;
    bytes_per_param_4bit = bytes_4bit / params_4bit.
    """
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    params_4bit = sum(m.in_features * m.out_features for m in layers)
    bytes_4bit = sum(m.nbytes() for m in layers)
    floats = list(model.parameters())  # deduplicated: a tied weight counts once
    params_float = sum(p.numel() for p in floats)
    bytes_float = sum(p.numel() * p.element_size() for p in floats)
    return dict(n_linear4bit=len(layers), params_4bit=params_4bit, params_float=params_float,
                bytes_4bit=bytes_4bit, bytes_float=bytes_float, bytes_total=bytes_4bit + bytes_float,
                bytes_fp32=4 * (params_4bit + params_float),
                bytes_per_param_4bit=bytes_4bit / params_4bit if params_4bit else 0.0)
