"""A pre-allocated key/value cache.

Decoding one token at a time would recompute every earlier key and value at each step; instead each
layer writes its new K and V into a fixed buffer and attends over the filled prefix. The buffer is
allocated once for the whole generation ([layers, batch, kv_heads, max_len, head_dim] for K and for V),
so no step allocates or copies the history.

`SharedPrefix` is the training-time counterpart for GRPO's groups (G completions of one prompt): no buffer,
nothing written in place, so gradients flow through it (see CausalLM.shared_prefix_hidden_states).
"""

from __future__ import annotations

import torch


class KVCache:
    differentiable = False  # written in place: for generation under no_grad

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        # uninitialised: every slot is written (update) before it is read (only [:end] is returned), so
        # zero-filling would only cost a first touch of every page
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # slots [0, pos) are filled

    @classmethod
    def for_model(cls, config, batch: int, max_len: int, dtype=torch.float32, device=None) -> KVCache:
        return cls(config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim, dtype, device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, Hkv, T, d] at slots [pos, pos+T) and return the filled prefix of this layer."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int):
        """Called once per forward, after every layer has written its n new slots."""
        self.pos += n

    def reorder(self, index: torch.Tensor):
        """Keep only the batch rows in `index` (e.g. drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


class SharedPrefix:
    """The keys and values of B prompts, read by the N rows that continue them: group_sizes[i] rows after prompt i.

    First forward (the prompts): `update` keeps each layer's K, V [B, Hkv, P, d] and returns them unchanged.
    Then `for_rows(group_sizes)` gives the cache of the second forward (the continuations, [N, T] at slots P..),
    whose `update` returns [prompt K, V repeated for the rows of its group ; the rows' own K, V] along the slots.

    The repeat is an ordinary autograd op, so in backward the gradients of a group's rows add up into its prompt's
    K and V, as they would if every row computed the prompt itself. Nothing is written in place and each forward
    has its own object, so activation checkpointing may run any block again in backward (the prompts' blocks then
    store equal K, V again, in a dict the continuations no longer read).
    """

    differentiable = True

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.group_sizes: torch.Tensor | None = None  # None: this is the prompts' forward
        self.pos = 0  # slots [0, pos) are filled (the prompts' P after the first forward)

    def for_rows(self, group_sizes: torch.Tensor) -> SharedPrefix:
        """The continuations' cache: these prompts' K, V, each read by group_sizes[i] rows ([B] counts, in order)."""
        rows = SharedPrefix()
        rows.k, rows.v, rows.pos, rows.group_sizes = dict(self.k), dict(self.v), self.pos, group_sizes
        return rows

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.group_sizes is None:  # the prompts
            self.k[layer], self.v[layer] = k, v
            return k, v
        n = k.shape[0]
        k0 = self.k[layer].repeat_interleave(self.group_sizes, dim=0, output_size=n)
        v0 = self.v[layer].repeat_interleave(self.group_sizes, dim=0, output_size=n)
        return torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)

    def advance(self, n: int):
        self.pos += n
