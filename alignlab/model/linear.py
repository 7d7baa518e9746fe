"""A Linear layer that decodes faster on the CPU: each weight laid out once for oneDNN per generation."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

_state = threading.local()  # .store: the PackedWeights of the forward in progress (see packed_weights)


class PackedWeights:
    """Packed copies of weights for the products of generation, by (ids, dtype).

    A trainable weight's copy lasts one generation (`new_generation` drops it): fused optimizers update weights in
    place without moving their version counter, so nothing else says when it went stale. A frozen weight's copy
    (requires_grad False: an inference model) is kept across generations while its version and storage stay.
    """

    def __init__(self):
        self._packs: dict[tuple, tuple] = {}  # key -> (frozen, versions, packed copy)

    def new_generation(self) -> None:
        self._packs = {k: v for k, v in self._packs.items() if v[0]}

    def get(self, key: tuple, weights: list[torch.Tensor]) -> torch.Tensor:
        """The packed copy of the weights stacked by rows (made on first use), in dtype key[-1]."""
        versions = tuple((w._version, w.data_ptr()) for w in weights)
        hit = self._packs.get(key)
        if hit is None or hit[1] != versions:
            with torch.no_grad():
                dense = (weights[0] if len(weights) == 1 else torch.cat(weights)).detach().to(key[-1]).contiguous()
                hit = (not any(w.requires_grad for w in weights), versions,
                       torch.ops.mkldnn._reorder_linear_weight(dense, 1))
            self._packs[key] = hit
        return hit[2]

    def __len__(self) -> int:
        return len(self._packs)


@contextmanager
def packed_weights(store: PackedWeights) -> Iterator[None]:
    """Within this block, the CPU Linear layers of a no-gradient forward multiply by packed copies of their
    weights, kept in `store`; the engine keeps one store and calls store.new_generation() before each generation."""
    outer = getattr(_state, "store", None)
    _state.store = store
    try:
        yield
    finally:
        _state.store = outer


class Linear(nn.Linear):
    """nn.Linear that, inside `packed_weights` on the CPU without gradients, multiplies by a pre-packed weight.

    oneDNN multiplies in a blocked layout of W. F.linear reorders W into that layout on every call, which
    reads and writes the whole weight once more: at decode shapes (a few rows) that reorder is most of the
    call. The engine reorders each weight once per generation instead (`torch.ops.mkldnn._reorder_linear_weight`;
    frozen weights once for good, see PackedWeights), so a decode step streams each weight once. Measured on 2
    cores (AVX512-BF16), bf16, [1, 512] x [512, 8192]: 82 us packed vs 214 us with F.linear; fp32 [16, 512] x
    [512, 1376]: 172 vs 212 us.

    Same result as F.linear up to float summation order. At most `max_packed_rows` input rows take it (prefill
    and decode of small batches); the copy costs one more weight's memory in the compute dtype. Under bf16
    autocast with fp32 weights the copy is the bf16 cast and the output bf16, as autocast's own F.linear gives.
    Outside `packed_weights`, and wherever a gradient is wanted, it is F.linear.
    """

    max_packed_rows = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _packed_dtype(self, x)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        packed = _state.store.get((id(self.weight), dtype), [self.weight])
        bias = None if self.bias is None else self.bias.to(dtype)
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype).contiguous(), packed, bias, "none", [], "")


def fused_linear(x: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers], as one packed product where `Linear.forward` would pack each of them.

    Layers that read the same input (q, k and v; gate and up) then stream one concatenated weight in one call
    instead of several, which saves a call's fixed cost per layer at decode shapes. Elsewhere (training, other
    layer types such as LoRA or 4-bit layers) each layer runs on its own.
    """
    first = layers[0]
    dtype = _packed_dtype(first, x) if all(type(m) is Linear for m in layers) else None
    has_bias = [m.bias is not None for m in layers] if dtype is not None else []
    if dtype is None or any(has_bias) != all(has_bias) or any(m.weight.dtype != first.weight.dtype for m in layers):
        return [m(x) for m in layers]
    packed = _state.store.get((id(first), len(layers), dtype), [m.weight for m in layers])
    bias = torch.cat([m.bias for m in layers]).to(dtype) if has_bias[0] else None
    y = torch.ops.mkldnn._linear_pointwise(x.to(dtype).contiguous(), packed, bias, "none", [], "")
    return list(y.split([m.out_features for m in layers], dim=-1))


def _packed_dtype(layer: Linear, x: torch.Tensor) -> torch.dtype | None:
    """The dtype to multiply in with a packed weight, or None for F.linear."""
    w = layer.weight
    if getattr(_state, "store", None) is None or x.device.type != "cpu" or w.device.type != "cpu" \
            or not torch.backends.mkldnn.is_available():
        return None
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or
                                    (layer.bias is not None and layer.bias.requires_grad)):
        return None
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    if not 0 < rows <= layer.max_packed_rows:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else w.dtype
    if x.dtype not in (torch.float32, dtype) or dtype not in (torch.float32, torch.bfloat16):
        return None
    if dtype == torch.bfloat16 and not _mkldnn_bf16():
        return None
    return dtype


@functools.cache
def _mkldnn_bf16() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()
