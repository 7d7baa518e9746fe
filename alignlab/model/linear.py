"""A Linear layer that decodes faster on the CPU: fp32 split across threads, bf16 weights laid out once for oneDNN."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

_state = threading.local()  # .store: the PackedWeights of the forward in progress (see packed_weights)


class PackedWeights:
    """Packed bf16 copies of weights for the products of generation, by the ids of their layers.

    Weights do not change during a generation, so a copy is looked up by key alone; `new_generation`, called
    before each one, drops the copies that may have gone stale. A trainable weight's copy lasts one generation:
    fused optimizers update weights in place without moving their version counter, so nothing else says when it
    went stale. A frozen weight's copy (requires_grad False: an inference model) is kept while its version and
    storage stay.
    """

    def __init__(self):
        self._packs: dict[tuple, tuple] = {}  # key -> (weights, versions, packed copy)

    def new_generation(self) -> None:
        self._packs = {k: v for k, v in self._packs.items()
                       if not any(w.requires_grad for w in v[0]) and _versions(v[0]) == v[1]}

    def get(self, key: tuple, weights: list[torch.Tensor]) -> torch.Tensor:
        """The packed bf16 copy of the weights stacked by rows (made on first use in a generation)."""
        hit = self._packs.get(key)
        if hit is None:
            with torch.no_grad():
                dense = weights[0] if len(weights) == 1 else torch.cat(weights)
                dense = dense.detach().to(torch.bfloat16).contiguous()
                hit = (weights, _versions(weights), torch.ops.mkldnn._reorder_linear_weight(dense, 1))
            self._packs[key] = hit
        return hit[2]

    def __len__(self) -> int:
        return len(self._packs)


def _versions(weights: list[torch.Tensor]) -> tuple:
    return tuple((w._version, w.data_ptr()) for w in weights)


@contextmanager
def packed_weights(store: PackedWeights) -> Iterator[None]:
    """Within this block, the CPU Linear layers of a no-gradient bf16 forward multiply by packed copies of their
    weights, kept in `store`; the engine keeps one store and calls store.new_generation() before each generation."""
    outer = getattr(_state, "store", None)
    _state.store = store
    try:
        yield
    finally:
        _state.store = outer


class Linear(nn.Linear):
    """nn.Linear with two CPU fast paths for the few-row products of decoding (one row per sequence).

    fp32, at most `max_split_rows` rows. With few rows, some BLAS builds compute x W^T on fewer cores than
    there are, and decoding is bound by how fast the weight streams from memory. Splitting W's output rows into
    one block per thread and multiplying the blocks as a batch (torch.bmm) gives every core its own block to
    stream:

        y^T = [W_1 x^T; W_2 x^T; ...; W_n x^T]

    Whether that pays depends on the processor and its BLAS (on a 2-core Intel Xeon with torch 2.13, F.linear is
    2-4x faster at 1-32 rows; the split was 1.2x faster decoding on a 2-core AMD EPYC), so it is measured, not
    assumed: `split_pays` times both once per process. `Linear.split` = True or False forces the choice.

    bf16 (bf16 weights, or fp32 weights under bf16 autocast) inside `packed_weights`, without gradients, at most
    `max_packed_rows` rows. oneDNN multiplies in a blocked layout of W; F.linear reorders W into it on every call,
    reading and writing the whole weight once more, which at decode shapes is most of the call. The engine
    reorders each weight once per generation instead (`torch.ops.mkldnn._reorder_linear_weight`; frozen weights
    once for good, see PackedWeights). Measured on 2 cores (AVX512-BF16), [1, 512] x [512, 8192]: 82 us packed
    vs 214 us with F.linear. The copy costs one more weight's memory in bf16; under autocast it is the bf16 cast
    of the fp32 weight and the output is bf16, as autocast's own F.linear gives. (The split is slower in bf16,
    and packing slower than the split in fp32 at one row: 105 vs 185 tok/s decoding a 27M model.)

    Both give F.linear's result up to float summation order; everything else takes F.linear.
    """

    max_split_rows = 32
    max_packed_rows = 256
    split: bool | None = None  # None: where split_pays measured that it does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _packs(self, x):
            return packed_linear(x, *packed([self]))
        n, w = torch.get_num_threads(), self.weight
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 0 < rows <= self.max_split_rows or n < 2 or self.out_features % n or x.device.type != "cpu" \
                or not w.is_contiguous() or w.dtype != torch.float32 or x.dtype != torch.float32 \
                or torch.is_autocast_enabled("cpu") or not (split_pays(n) if self.split is None else self.split):
            return F.linear(x, w, self.bias)
        y = split_product(x.reshape(rows, -1), w, n).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def split_product(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """x W^T for x [rows, in], W [out, in] (out divisible by n): W's rows in n blocks, multiplied as one batch."""
    out, rows = w.shape[0], x.shape[0]
    y = torch.bmm(w.view(n, out // n, w.shape[1]), x.t().expand(n, -1, -1))  # [n, out / n, rows]
    return y.view(out, rows).t().contiguous()


_split_pays: dict[int, bool] = {}  # threads -> whether the split beat F.linear here


def split_pays(threads: int) -> bool:
    """Whether Linear's fp32 split beats F.linear on this machine at `threads` threads: both are timed on a
    decode-shaped product, [1, 512] x [512, 2048], best of 20 calls each, once per process; the split is taken
    only when it is at least 1.2x faster, so that a close call does not flip between runs (the two differ in
    float summation order)."""
    if threads not in _split_pays:
        g = torch.Generator().manual_seed(0)  # not the global generator: a seeded run draws the same either way
        w, x = torch.randn(2048, 512, generator=g), torch.randn(1, 512, generator=g)
        _split_pays[threads] = 2048 % threads == 0 and (
            _fastest(lambda: split_product(x, w, threads)) * 1.2 <= _fastest(lambda: F.linear(x, w)))
    return _split_pays[threads]


@torch.no_grad()
def _fastest(f, calls: int = 20) -> float:
    """The shortest wall time of `calls` calls of f."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def fused_linear(x: torch.Tensor, layers: list[nn.Module]) -> list[torch.Tensor]:
    """[layer(x) for layer in layers], as one packed bf16 product where `Linear.forward` would pack each of them.

    Layers that read the same input (q, k and v; gate and up) then stream one concatenated weight in one call
    instead of several, which saves a call's fixed cost per layer at decode shapes. Elsewhere (fp32, training,
    other layer types such as LoRA or 4-bit layers) each layer runs on its own.
    """
    first = layers[0]
    ok = all(type(m) is Linear for m in layers) and _packs(first, x)
    has_bias = [m.bias is not None for m in layers] if ok else []
    if not ok or any(has_bias) != all(has_bias) or any(m.weight.dtype != first.weight.dtype for m in layers):
        return [m(x) for m in layers]
    y = packed_linear(x, *packed(layers))
    return list(y.split([m.out_features for m in layers], dim=-1))


def packed(layers: list[Linear], store: PackedWeights | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The packed bf16 weight of `layers` stacked by rows, from `store` (default: the one `packed_weights` set),
    and their biases as one bf16 vector (None without). Layers that read the same input share one product."""
    store = store if store is not None else _state.store
    key = (id(layers[0].weight),) if len(layers) == 1 else (id(layers[0]), len(layers))
    weight = store.get(key, [m.weight for m in layers])
    if layers[0].bias is None:
        return weight, None
    return weight, torch.cat([m.bias for m in layers]).to(torch.bfloat16)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b for a weight of `packed`, in bf16."""
    if x.dtype != torch.bfloat16 or not x.is_contiguous():
        x = x.to(torch.bfloat16).contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _packs(layer: Linear, x: torch.Tensor) -> bool:
    """Whether layer(x) takes the packed bf16 product (see Linear)."""
    w = layer.weight
    if getattr(_state, "store", None) is None or x.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or
                                    (layer.bias is not None and layer.bias.requires_grad)):
        return False
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    return packable(w, x.dtype, rows, layer.max_packed_rows)


def packable(weight: torch.Tensor, x_dtype: torch.dtype, rows: int, max_rows: int) -> bool:
    """Whether a product of `rows` rows of x_dtype by this CPU weight is one the packed bf16 path computes: bf16 by
    bf16, or an fp32 weight under bf16 autocast, at most max_rows rows, where oneDNN has bf16."""
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    bf16 = weight.dtype == torch.bfloat16 and x_dtype == torch.bfloat16
    cast = autocast and weight.dtype == torch.float32
    return weight.device.type == "cpu" and 0 < rows <= max_rows and (bf16 or cast) and mkldnn_bf16()


@functools.cache
def mkldnn_bf16() -> bool:
    """Whether oneDNN multiplies bf16 on this CPU (the packed path's condition)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
