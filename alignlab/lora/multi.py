"""Many LoRA adapters over one base model, mixed in one batch: every row picks its own adapter (or none).

    adapters = MultiLora(model, max_loras=4, max_cpu_loras=32)       # kernel="grouped", "sgmv" or "bmm"
    adapters.load("sql", "adapters/sql")                              # PEFT format, checked against the model now
    adapters.load("chat", "adapters/chat")
    slots = adapters.activate(["sql", None, "chat", "sql"])           # e.g. [0, -1, 1, 0]; -1: the base model
    with adapters.rows(slots):
        logits = model(input_ids)                                     # row b uses the adapter in slot slots[b]

Serving many fine-tunes of one model, one copy of the base weights serves them all: the base product W x runs
once for the whole batch, and each token adds its own adapter's s B A x (S-LoRA, Sheng et al. 2023,
arXiv:2311.03285; Punica, Chen et al. 2023, arXiv:2310.18547). The adapters live in three tiers, as in S-LoRA
and vLLM:

    registered   every adapter `load` accepted (name -> directory): `names()`
    CPU pool     up to max_cpu_loras adapters' tensors in host memory. When full, the least recently activated
                 adapter not used by the current batch leaves it; its next `activate` reads its directory again
    slots        max_loras resident adapters, stacked into the tensors the kernels read (on the model's device).
                 `activate(names)` makes the batch's adapters resident, replacing the least recently used slots
                 that this batch does not need; a batch can mix at most max_loras adapters

Each target linear layer (the union of the loaded adapters' targets) is wrapped in a `MultiLoraLinear`:

    y = base(x) + delta(x, slot of each token)                 (see multi_kernels.py for delta's two kernels)

base(x) is the wrapped layer's own forward, so it keeps its fast paths (CPU packed weights, a quantized base).
On an adapter's tokens this equals its merged layer W + s B A; on a base token (slot -1) it is the base exactly.
Adapters may differ in rank and targets: a layer an adapter does not target adds nothing for its tokens.

State: the per-row slots set by `rows` live on this MultiLora instance (shared by its layers), not per thread,
so one thread runs the model's forwards at a time (the engine's). `load` and `unload` may come from another
thread: unload forgets the adapter at once (its next `activate` raises "unknown adapter") but leaves its slot's
tensors in place for a forward in flight; the slot is overwritten when another adapter needs it.

Scaling is LoraLinear's: s = α / r, or α / √r with use_rslora. DoRA and PiSSA adapters are refused: DoRA
rescales the whole output row by row, and PiSSA changes the base weights, so neither shares the base with others.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from alignlab.errors import CheckpointError, ConfigError, UserError
from alignlab.lora.inject import LoraConfig, find_targets, lora_layers
from alignlab.lora.multi_kernels import Segments, lora_bmm, lora_grouped, lora_sgmv, segments
from alignlab.lora.peft_io import CONFIG_NAME, LEGACY_WEIGHTS_NAME, PREFIX, WEIGHTS_NAME, read_adapter_config

KERNELS = ("grouped", "sgmv", "bmm")


@dataclass
class AdapterWeights:
    """One adapter in the CPU pool: its scale and, per target module name, A [r, in] and B [out, r]."""

    name: str
    path: Path
    r: int
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Plan:
    """The tokens' slots for one input shape, shared by every layer of a forward."""

    index: torch.Tensor  # [N] slot per token, -1 for the base
    segments: Segments | None = None  # made on first use by the sgmv and grouped kernels


class _Batch:
    """What the MultiLoraLinear layers of one MultiLora read during a forward: the kernel and the slots set by
    `MultiLora.rows` (None outside a rows block: the base alone), with the per-shape plans made from them."""

    def __init__(self, kernel: str, n_slots: int):
        self.kernel, self.n_slots = kernel, n_slots
        self.slots: torch.Tensor | None = None  # [B] per row, or [B, T] per token
        self._plans: dict[tuple, _Plan | None] = {}

    def set(self, slots: torch.Tensor | None):
        self.slots, self._plans = slots, {}

    def plan(self, x: torch.Tensor) -> _Plan | None:
        """The slot of each of x's tokens (x: [B, T, in] or [B, in]); None when no token uses an adapter."""
        if self.slots is None:
            return None
        lead = tuple(x.shape[:-1])
        key = (lead, x.device)
        if key not in self._plans:
            slots = self.slots.to(x.device)
            if slots.dim() == 2 and tuple(slots.shape) != lead:
                raise ValueError(f"adapters.rows got per-token slots of shape {tuple(slots.shape)}, the layer's "
                                 f"input has {lead} tokens")
            if slots.dim() == 1 and (len(lead) not in (1, 2) or lead[0] != slots.shape[0]):
                raise ValueError(f"adapters.rows got {slots.shape[0]} row slots, the layer's input has shape {lead}")
            if slots.dim() == 1:  # row b's tokens all take slots[b]
                slots = slots[:, None].expand(lead[0], math.prod(lead[1:]))
            index = slots.reshape(-1)  # [N]
            self._plans[key] = _Plan(index) if bool((index >= 0).any()) else None
        plan = self._plans[key]
        if plan is not None and self.kernel != "bmm" and plan.segments is None:
            plan.segments = segments(plan.index, self.n_slots)
        return plan


class MultiLoraLinear(nn.Module):
    """A linear layer plus the LoRA updates of up to `n_slots` resident adapters, picked token by token.

    base_layer: the wrapped module (called as is). Buffers (not saved with the model), read as lora_A [S, r_max, in]
    and lora_B [S, out, r_max] (views of their transposes, which are stored), slot i holding its adapter's A_i, B_i
    in the first r_i rows/columns and zeros past them (r_max grows to the largest rank written, rounded up to a
    multiple of 8); scaling [S]. Host lists `ranks` and `scalings` give r_i and s_i per slot (0 where the slot's
    adapter does not target this layer).
    """

    def __init__(self, base_layer: nn.Module, n_slots: int, batch: _Batch):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.batch = batch
        w = getattr(base_layer, "weight", None)
        float_weight = isinstance(w, torch.Tensor) and w.is_floating_point()
        ref = next(base_layer.parameters(), next(base_layer.buffers(), torch.empty(0)))
        dtype = w.dtype if float_weight else torch.float32  # a quantized base: the update in fp32
        # stored as the products read them, A_iᵀ [in, r] and B_iᵀ [r, out] (grouped_mm is fastest on these)
        self.register_buffer("lora_At", torch.zeros(n_slots, self.in_features, 0, dtype=dtype, device=ref.device),
                             persistent=False)
        self.register_buffer("lora_Bt", torch.zeros(n_slots, 0, self.out_features, dtype=dtype, device=ref.device),
                             persistent=False)
        self.register_buffer("scaling", torch.zeros(n_slots, device=ref.device), persistent=False)
        self.ranks = [0] * n_slots
        self.scalings = [0.0] * n_slots

    @property
    def lora_A(self) -> torch.Tensor:
        return self.lora_At.transpose(1, 2)  # [S, r_max, in], a view

    @property
    def lora_B(self) -> torch.Tensor:
        return self.lora_Bt.transpose(1, 2)  # [S, out, r_max], a view

    @torch.no_grad()
    def set_slot(self, slot: int, A: torch.Tensor, B: torch.Tensor, scaling: float):
        """Slot `slot` holds A [r, in], B [out, r] with scale s; r_max grows (zero-padded) if r exceeds it."""
        r = A.shape[0]
        if r > self.lora_At.shape[2]:
            pad = -(-r // 8) * 8 - self.lora_At.shape[2]  # r_max a multiple of 8: grouped_mm wants 16-byte strides
            self.lora_At = torch.cat([self.lora_At, self.lora_At.new_zeros(len(self.ranks), self.in_features, pad)], 2)
            self.lora_Bt = torch.cat([self.lora_Bt, self.lora_Bt.new_zeros(len(self.ranks), pad, self.out_features)], 1)
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.lora_A[slot, :r] = A
        self.lora_B[slot, :, :r] = B
        self.scaling[slot] = scaling
        self.ranks[slot], self.scalings[slot] = r, scaling

    @torch.no_grad()
    def clear_slot(self, slot: int):
        """The slot adds nothing here (its adapter does not target this layer)."""
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scaling[slot] = 0.0
        self.ranks[slot], self.scalings[slot] = 0, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        plan = self.batch.plan(x)
        if plan is None or not any(self.ranks):
            return y
        flat, A, B, kernel = x.reshape(-1, self.in_features), self.lora_A, self.lora_B, self.batch.kernel  # [N, in]
        # under autocast the products take bf16 x as is; grouped_mm does not autocast: it runs in the weights' dtype
        if kernel == "grouped" or not torch.is_autocast_enabled(x.device.type):
            flat = flat.to(A.dtype)
        if kernel == "bmm":
            delta = lora_bmm(flat, A, B, self.scaling, plan.index)
        elif kernel == "grouped":
            delta = lora_grouped(flat, A, B, self.scaling, plan.segments)
        else:
            delta = lora_sgmv(flat, A, B, self.scalings, self.ranks, plan.segments)
        return y + delta.view(*x.shape[:-1], self.out_features).to(y.dtype)

    def extra_repr(self) -> str:
        return f"slots={len(self.ranks)}, r_max={self.lora_A.shape[1]}, ranks={self.ranks}"


class MultiLora:
    """A base model plus many PEFT adapters, served in mixed batches (see the module docstring).

    model: an alignlab CausalLM (no LoraLinear layers: merge_and_unload first); its target layers are wrapped
        in place as adapters are loaded.
    max_loras: resident slots, the most distinct adapters one batch can mix (vLLM's max_loras).
    max_cpu_loras: adapters kept in host memory (>= max_loras, vLLM's max_cpu_loras).
    kernel: "grouped" (tokens sorted into one segment per adapter, all segments in one grouped product, at the
        largest rank), "sgmv" (the same segments, a pair of products each at the adapter's own rank) or "bmm"
        (every token's A and B gathered, padded to the largest rank); all compute the same update. None (the
        default): "grouped" on a CPU, where torch's grouped_mm takes fp32 and bf16, else "sgmv". Settable later.
    Raises ConfigError for bad sizes or kernel.
    """

    def __init__(self, model: nn.Module, max_loras: int = 8, max_cpu_loras: int = 64, kernel: str | None = None):
        if not isinstance(max_loras, int) or max_loras < 1:
            raise ConfigError(f"max_loras must be a positive integer, got {max_loras!r}")
        if not isinstance(max_cpu_loras, int) or max_cpu_loras < max_loras:
            raise ConfigError(f"max_cpu_loras ({max_cpu_loras!r}) must be an integer >= max_loras ({max_loras})")
        if lora_layers(model):
            raise ValueError("the model already has LoRA layers; merge_and_unload it before serving adapters")
        if getattr(getattr(model, "config", None), "arch", None) == "gpt2":
            raise ConfigError("PEFT adapters for GPT-2 do not fit alignlab's GPT-2 (it splits HF's fused c_attn)")
        self.model = model
        self.max_loras, self.max_cpu_loras = max_loras, max_cpu_loras
        self._batch = _Batch("sgmv", max_loras)
        if kernel is None:
            device = next(model.parameters(), torch.empty(0)).device
            kernel = "grouped" if device.type == "cpu" else "sgmv"
        self.kernel = kernel
        self._paths: dict[str, Path] = {}  # registered adapters
        self._pool: OrderedDict[str, AdapterWeights] = OrderedDict()  # least recently activated first
        self._slots: list[str | None] = [None] * max_loras  # the adapter resident in each slot
        self._last_used = [0] * max_loras  # activation tick of each slot (LRU)
        self._tick = 0
        self._in_use: set[str] = set()  # the adapters of the latest activate (the running batch)
        self._layers: dict[str, MultiLoraLinear] = {}  # wrapped layers by module name
        self._lock = threading.RLock()

    @property
    def kernel(self) -> str:
        return self._batch.kernel

    @kernel.setter
    def kernel(self, kernel: str):
        if kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self._batch.kernel = kernel

    # --- the adapter registry and the CPU pool ----------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return list(self._paths)

    def pooled(self) -> list[str]:
        """The adapters in the CPU pool, least recently activated first."""
        with self._lock:
            return list(self._pool)

    def load(self, name: str, path: str | Path) -> None:
        """Register the PEFT adapter in directory `path` as `name`, after reading and checking it against the
        model (CheckpointError naming the file: no directory, a bad config, DoRA/PiSSA, a target the model
        lacks, a missing or mis-shaped tensor). Its target layers are wrapped now; it joins the CPU pool."""
        if not isinstance(name, str) or not name:
            raise UserError(f"an adapter needs a non-empty name, got {name!r}")
        with self._lock:
            if name in self._paths:
                raise UserError(f"adapter {name!r} is already loaded; unload it first to replace it")
        adapter = self._read(name, Path(path))
        with self._lock:
            if name in self._paths:
                raise UserError(f"adapter {name!r} is already loaded; unload it first to replace it")
            for module in adapter.weights:
                self._wrap(module)
            self._paths[name] = adapter.path
            self._put(adapter)

    def unload(self, name: str) -> None:
        """Forget the adapter: out of the registry, the pool and its slot (whose tensors stay until reused)."""
        with self._lock:
            if name not in self._paths:
                raise UserError(f"unknown adapter {name!r}; loaded: {sorted(self._paths)}")
            del self._paths[name]
            self._pool.pop(name, None)
            self._in_use.discard(name)
            self._slots = [None if s == name else s for s in self._slots]

    def _put(self, adapter: AdapterWeights):
        """Into the CPU pool, first making room: the least recently activated adapters the running batch does not
        use leave it. If every pooled adapter is in use, the new one stays out (activate reads it again)."""
        while len(self._pool) >= self.max_cpu_loras:
            victim = next((n for n in self._pool if n not in self._in_use), None)
            if victim is None:
                return
            del self._pool[victim]
        self._pool[adapter.name] = adapter

    def _read(self, name: str, path: Path) -> AdapterWeights:
        """The adapter's config and tensors, checked against the model's modules (CheckpointError, file named)."""
        if not path.is_dir():
            raise CheckpointError(f"{path}: adapter {name!r}: no such directory")
        try:
            config = read_adapter_config(path)
        except (ValueError, KeyError, TypeError) as e:  # CheckpointError is a ValueError
            raise CheckpointError(e if isinstance(e, CheckpointError) else f"{path / CONFIG_NAME}: {e}") from None
        if config.use_dora:
            raise CheckpointError(f"{path / CONFIG_NAME}: DoRA adapters (use_dora) are not supported in mixed "
                                  "batches; merge it into its own model instead")
        if config.init_lora_weights == "pissa":
            raise CheckpointError(f"{path / CONFIG_NAME}: a PiSSA adapter changes the base weights, so it cannot "
                                  "share the base with other adapters; merge it into its own model instead")
        file = path / WEIGHTS_NAME
        try:
            if file.is_file():
                tensors = load_file(file)
            elif (path / LEGACY_WEIGHTS_NAME).is_file():
                file = path / LEGACY_WEIGHTS_NAME
                tensors = torch.load(file, map_location="cpu", weights_only=True)
            else:
                raise CheckpointError(f"{path}: no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME})")
        except (OSError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"{file}: cannot read the adapter's tensors: {e}") from None
        targets = self._targets(config, path / CONFIG_NAME)
        expected = {}
        for module in targets:
            m = self.model.get_submodule(module)
            expected[f"{PREFIX}{module}.lora_A.weight"] = (config.r, m.in_features)
            expected[f"{PREFIX}{module}.lora_B.weight"] = (m.out_features, config.r)
        missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
        if missing or unexpected:
            raise CheckpointError(f"{file}: the adapter does not fit this model: {len(missing)} missing tensors "
                                  f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
        for key, shape in expected.items():
            if tuple(tensors[key].shape) != shape:
                raise CheckpointError(f"{file}: {key} has shape {tuple(tensors[key].shape)}, this model needs "
                                      f"{shape} (another model, or r in {CONFIG_NAME} differs from the tensors?)")
        scaling = config.lora_alpha / math.sqrt(config.r) if config.use_rslora else config.lora_alpha / config.r
        weights = {m: (tensors[f"{PREFIX}{m}.lora_A.weight"], tensors[f"{PREFIX}{m}.lora_B.weight"])
                   for m in targets}
        return AdapterWeights(name, path, config.r, scaling, weights)

    def _targets(self, config: LoraConfig, where: Path) -> list[str]:
        """The modules the config targets, as apply_lora picks them, ignoring the layers inside our wrappers."""
        with self._lock:
            try:
                names = find_targets(self.model, config)
            except ValueError as e:
                raise CheckpointError(f"{where}: {e}") from None
            return [n for n in names if not (n.endswith(".base_layer") and n.rpartition(".")[0] in self._layers)]

    def _wrap(self, module: str):
        if module in self._layers:
            return
        layer = MultiLoraLinear(self.model.get_submodule(module), self.max_loras, self._batch)
        self.model.set_submodule(module, layer)
        self._layers[module] = layer

    # --- slots -------------------------------------------------------------------------------------

    def activate(self, names: list[str | None]) -> list[int]:
        """Make every named adapter resident and return each name's slot (-1 for None, the base).

        Adapters already resident keep their slot; the others go to empty slots, else to the least recently used
        slots that this call does not need. UserError for an unknown adapter or more than max_loras distinct ones.
        """
        wanted = list(dict.fromkeys(n for n in names if n is not None))
        with self._lock:
            unknown = [n for n in wanted if n not in self._paths]
            if unknown:
                raise UserError(f"unknown adapter {unknown[0]!r}; loaded: {sorted(self._paths)}")
            if len(wanted) > self.max_loras:
                raise UserError(f"a batch mixes {len(wanted)} adapters, more than max_loras={self.max_loras}")
            self._in_use = set(wanted)
            for n in wanted:
                if n in self._pool:
                    self._pool.move_to_end(n)  # most recently activated
            slot_of = {}
            for n in wanted:
                self._tick += 1
                if n in self._slots:
                    slot = self._slots.index(n)
                else:
                    slot = self._victim_slot(wanted)
                    self._write_slot(slot, self._pool.get(n) or self._reread(n))
                self._last_used[slot] = self._tick
                slot_of[n] = slot
            return [-1 if n is None else slot_of[n] for n in names]

    def resident(self) -> list[str | None]:
        """The adapter in each slot (None: empty)."""
        with self._lock:
            return list(self._slots)

    def _victim_slot(self, wanted: list[str]) -> int:
        free = [i for i, s in enumerate(self._slots) if s is None]
        if free:
            return free[0]
        return min((i for i, s in enumerate(self._slots) if s not in wanted), key=lambda i: self._last_used[i])

    def _reread(self, name: str) -> AdapterWeights:
        """An adapter that left the CPU pool: read from its directory again, and back into the pool."""
        adapter = self._read(name, self._paths[name])
        self._put(adapter)
        return adapter

    def _write_slot(self, slot: int, adapter: AdapterWeights):
        for module, layer in self._layers.items():
            if module in adapter.weights:
                A, B = adapter.weights[module]
                layer.set_slot(slot, A, B, adapter.scaling)
            else:
                layer.clear_slot(slot)
        self._slots[slot] = adapter.name

    @contextmanager
    def rows(self, slots) -> Iterator[None]:
        """Inside the block the model's forwards use adapter slot slots[b] for every token of row b (-1: the
        base). slots: list[int] or LongTensor [B] (from activate); a [B, T] tensor gives each token its own slot.
        Blocks nest; the outer slots come back on exit."""
        t = torch.as_tensor(slots, dtype=torch.long)
        if t.dim() not in (1, 2):
            raise ValueError(f"adapters.rows takes slots [B] or [B, T], got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= self.max_loras):
            raise ValueError(f"slots must be in [-1, {self.max_loras}), got {t.tolist()}")
        outer = self._batch.slots
        self._batch.set(t)
        try:
            yield
        finally:
            self._batch.set(outer)
