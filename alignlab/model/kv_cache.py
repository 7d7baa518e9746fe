"""Key/value caches: what the attention layers append their new keys and values to, and read back.

Decoding one token at a time would recompute every earlier key and value at each step; instead each layer
appends its new K and V to a cache and attends over everything the row holds. The model and the engine talk
to a cache through these methods only, so another layout (a paged cache) can stand in for `KVCache`:

    lengths              filled slots of each row (host ints: read without waiting for the device)
    append(layer, k, v)  write k, v [B, Hkv, T, d] after each row's filled slots; return the layer's K, V
    advance(n)           once per forward, after every layer has appended its n slots
    paged                False here; True for infer/paged.py's rows, whose attend(layer, q, k, v, attention)
                         the layers call instead of append (attention over the pool's blocks)
    next_slot()          a one-token step that writes the buffers itself (model/decode.py): its slot, K, V
    rows(index)          the cache seen as its rows `index`, for a forward over some of them (a prefill)
    copy_rows(src, dst)  row dst[i] becomes a copy of row src[i] (one prompt prefilled for several requests)
    keep_rows(index)     keep only the rows `index`, in that order (drop finished rows)
    truncate(length)     forget every slot from `length` on (speculative decoding's rejected tokens)

Rows may hold different lengths: row b's new tokens go to its slots [lengths[b], lengths[b] + T), and `append`
returns slots [0, max(lengths) + T) of every row; the causal mask hides a row's slots past its own tokens.

`SharedPrefixCache` is the training-time counterpart for GRPO's groups (G completions of one prompt, described by
a `SharedPrefix`): no buffer, nothing written in place, so gradients flow through it (see
CausalLM.shared_prefix_hidden_states).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Buffers [layers, B, Hkv, max_len, d] for K and for V, allocated once for the whole generation, so no step
    allocates or copies the history; row b holds its tokens at slots [0, lengths[b])."""

    differentiable = False  # written in place: for generation under no_grad
    paged = False  # the model appends and attends itself (a paged cache's `attend` does both: infer/paged.py)

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        # uninitialised: zero-filling would cost a first touch of every page. A read covers slots [0, written),
        # which hold keys or zeros (a masked key must still be finite: its weight 0 times NaN is NaN)
        self._k = torch.empty(shape, dtype=dtype, device=device)
        self._v = torch.empty(shape, dtype=dtype, device=device)
        self._lengths = [0] * batch
        self._written = 0  # slots [0, written) of every row hold finite values
        self.max_len = max_len

    @classmethod
    def for_model(cls, config, batch: int, max_len: int, dtype=torch.float32, device=None) -> KVCache:
        return cls(config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim, dtype, device)

    @property
    def lengths(self) -> list[int]:
        return list(self._lengths)

    def rows(self, index: list[int]) -> CacheRows:
        return CacheRows(self, list(index))

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: list[int] | None = None):
        """Write k, v [B, Hkv, T, d] at slots [lengths[b], lengths[b] + T) of each row b (of `rows`, else of all
        rows) and return this layer's K, V over slots [0, max(lengths) + T) of those rows."""
        lengths = self._lengths if rows is None else [self._lengths[i] for i in rows]
        T, start = k.shape[2], lengths[0]
        end = max(lengths) + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens > max_len {self.max_len}")
        even = min(lengths) == max(lengths)  # every row writes the same slots
        if end > self._written:
            if not (even and rows is None):  # some row's new slots do not reach `end`: zero them first (all layers)
                self._k[:, :, :, self._written:end].zero_()
                self._v[:, :, :, self._written:end].zero_()
            self._written = end
        K, V = self._k[layer], self._v[layer]  # [rows, Hkv, max_len, d]
        if rows is None and even:  # the engine's usual step: one slice, and a view of the history
            K[:, :, start:end], V[:, :, start:end] = k, v  # the copy casts (bf16 into the CPU's fp32 cache: exact)
            return K[:, :, :end], V[:, :, :end]
        k, v = k.to(K.dtype), v.to(V.dtype)
        index = torch.tensor(rows if rows is not None else list(range(len(lengths))), device=k.device)
        if even:
            K[index, :, start:end], V[index, :, start:end] = k, v
        else:  # row b at its own slots: [B, T] (row, slot) pairs
            slots = torch.tensor(lengths, device=k.device)[:, None] + torch.arange(T, device=k.device)
            K[index[:, None], :, slots] = k.transpose(1, 2)  # indexed as [B, T, Hkv, d]
            V[index[:, None], :, slots] = v.transpose(1, 2)
        if rows is None:
            return K[:, :, :end], V[:, :, :end]
        if end == T:  # nothing before: the new keys are all there is
            return k, v
        return K[index, :, :end], V[index, :, :end]  # a copy of these rows' history

    def next_slot(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """For a caller that writes one token of every row itself (model/decode.py): the slot n it goes to, and
        the buffers K, V [layers, B, Hkv, max_len, d]. Rows must hold equal lengths; call advance(1) after."""
        n = self._lengths[0]
        if min(self._lengths) != max(self._lengths):
            raise ValueError("next_slot needs rows of equal lengths")
        if n >= self.max_len:
            raise ValueError(f"KV cache is full: {n + 1} tokens > max_len {self.max_len}")
        self._written = max(self._written, n + 1)
        return n, self._k, self._v

    def advance(self, n: int, rows: list[int] | None = None):
        """Called once per forward, after every layer has written its n new slots."""
        for i in range(len(self._lengths)) if rows is None else rows:
            self._lengths[i] += n

    def copy_rows(self, src: list[int], dst: list[int]):
        """Row dst[i] becomes a copy of row src[i], e.g. one prompt's keys for each request that asked for it."""
        n = self._written
        dst_t, src_t = torch.tensor(dst, device=self._k.device), torch.tensor(src, device=self._k.device)
        self._k[:, dst_t, :, :n] = self._k[:, src_t, :, :n]
        self._v[:, dst_t, :, :n] = self._v[:, src_t, :, :n]
        for s, d in zip(src, dst):
            self._lengths[d] = self._lengths[s]

    def keep_rows(self, index: list[int]):
        """Keep only the rows `index`, in that order (e.g. drop finished sequences); copies their filled slots."""
        n = max((self._lengths[i] for i in index), default=0)
        shape = (self._k.shape[0], len(index), *self._k.shape[2:])
        k = torch.empty(shape, dtype=self._k.dtype, device=self._k.device)
        v = torch.empty(shape, dtype=self._v.dtype, device=self._v.device)
        rows = torch.tensor(index, dtype=torch.long, device=self._k.device)
        k[:, :, :, :n], v[:, :, :, :n] = self._k[:, rows, :, :n], self._v[:, rows, :, :n]
        self._k, self._v = k, v
        self._lengths = [self._lengths[i] for i in index]
        self._written = n

    def truncate(self, length: int):
        """Every row keeps its slots [0, length) and forgets the rest, e.g. the keys of draft tokens that speculative
        decoding rejected; the next append overwrites them. No copy: only the lengths move back."""
        if not 0 <= length <= min(self._lengths, default=0):
            raise ValueError(f"cannot truncate rows of lengths {self._lengths} to {length}")
        self._lengths = [length] * len(self._lengths)


class CacheRows:
    """Some rows of a KVCache, as the model sees a cache: a forward over them reads and writes those rows only."""

    differentiable = False
    paged = False

    def __init__(self, cache: KVCache, rows: list[int]):
        self.cache, self.index = cache, rows

    @property
    def lengths(self) -> list[int]:
        lengths = self.cache.lengths
        return [lengths[i] for i in self.index]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.cache.append(layer, k, v, self.index)

    def advance(self, n: int):
        self.cache.advance(n, self.index)


@dataclass
class SharedPrefix:
    """GRPO's groups for CausalLM.forward: the input_ids are B prompts, prompt i continued by group_sizes[i]
    consecutive rows of `continuations`."""

    continuations: torch.Tensor  # [N, C] token ids
    group_sizes: torch.Tensor  # [B] counts summing to N


class SharedPrefixCache:
    """The keys and values of B prompts, read by the N rows that continue them: group_sizes[i] rows after prompt i.

    First forward (the prompts): `append` keeps each layer's K, V [B, Hkv, P, d] and returns them unchanged.
    Then `for_rows(group_sizes)` gives the cache of the second forward (the continuations, [N, T] at slots P..),
    whose `append` returns [prompt K, V repeated for the rows of its group ; the rows' own K, V] along the slots.

    The repeat is an ordinary autograd op, so in backward the gradients of a group's rows add up into its prompt's
    K and V, as they would if every row computed the prompt itself. Nothing is written in place and each forward
    has its own object, so activation checkpointing may run any block again in backward (the prompts' blocks then
    store equal K, V again, in a dict the continuations no longer read).
    """

    differentiable = True
    paged = False

    def __init__(self, n_rows: int):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.group_sizes: torch.Tensor | None = None  # None: this is the prompts' forward
        self.n_rows = n_rows
        self.pos = 0  # slots [0, pos) of every row are filled (the prompts' P after the first forward)

    @property
    def lengths(self) -> list[int]:
        return [self.pos] * self.n_rows

    def for_rows(self, group_sizes: torch.Tensor, n_rows: int) -> SharedPrefixCache:
        """The continuations' cache: these prompts' K, V, each read by group_sizes[i] rows ([B] counts, in order)."""
        rows = SharedPrefixCache(n_rows)
        rows.k, rows.v, rows.pos, rows.group_sizes = dict(self.k), dict(self.v), self.pos, group_sizes
        return rows

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.group_sizes is None:  # the prompts
            self.k[layer], self.v[layer] = k, v
            return k, v
        n = k.shape[0]
        k0 = self.k[layer].repeat_interleave(self.group_sizes, dim=0, output_size=n)
        v0 = self.v[layer].repeat_interleave(self.group_sizes, dim=0, output_size=n)
        return torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)

    def advance(self, n: int):
        self.pos += n
