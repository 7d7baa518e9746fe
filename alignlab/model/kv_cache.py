"""A pre-allocated key/value cache.

Decoding one token at a time would recompute every earlier key and value at each step; instead each
layer writes its new K and V into a fixed buffer and attends over the filled prefix. The buffer is
allocated once for the whole generation ([layers, batch, kv_heads, max_len, head_dim] for K and for V),
so no step allocates or copies the history.
"""

from __future__ import annotations

import torch


class KVCache:
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
