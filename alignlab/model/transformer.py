"""A decoder-only transformer: GPT-2 and the Llama family (Llama 2/3, Mistral, Qwen2, Qwen3) in one file.

    x = embed(tokens) [+ learned positions]
    for each block:
        x = x + attn(norm(x))     causal self-attention, RoPE on q and k, grouped-query K/V
        x = x + mlp(norm(x))      SwiGLU (Llama) or GELU (GPT-2)
    logits = head(norm(x))

Module names follow the Hugging Face Llama layout (model.layers.N.self_attn.q_proj, ...), so checkpoints
and PEFT adapters map onto them without renaming. Everything is fp32-safe; norms compute in fp32.

bf16 comes two ways: bf16 weights (`model.to(torch.bfloat16)`, inference), or fp32 weights under
torch.autocast(dtype=torch.bfloat16) (training: fp32 master weights, bf16 matmuls). Under autocast the residual
stream x stays fp32 and each norm hands its sublayer bf16, the dtype autocast would cast it to anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from alignlab.model.attention import ATTENTION, documents, matmul_dtype
from alignlab.model.config import ModelConfig
from alignlab.model.kv_cache import CacheRows, KVCache, SharedPrefix, SharedPrefixCache
from alignlab.model.linear import Linear, fused_linear
from alignlab.model.rope import inv_frequencies, rope_cos_sin, rope_tables, rotate


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.  Zhang & Sennrich 2019, arXiv:1910.07467."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dev = x.device.type
        cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None  # what the next matmul takes
        if self.weight.dtype == torch.float32 and torch.is_grad_enabled() and x.dtype in (torch.float32, cast):
            return _RMSNormFunction.apply(x, self.weight, self.eps, cast or x.dtype)
        y = rms_norm(x, self.weight, self.eps)
        return y if cast is None else y.to(cast)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without gradients: computed in fp32, rounded to x's dtype, then scaled by the weight (as
    transformers does). Few ops: decoding one token per row is bound by their count."""
    xf = x.float()
    return weight * (xf * xf.square().mean(-1, keepdim=True).add_(eps).rsqrt_()).to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm in fp32 with its backward written out, in fewer passes over x than autograd's record of
    pow, mean, rsqrt and two products. With r = 1 / sqrt(mean(x^2) + eps), n = x r, y = n w (D channels):

        dL/dw = sum_rows g * n,        dL/dx = r (g w - n mean(g w * n))

    x and g may be bf16 (autocast); the sums and products run in fp32 all the same, and y is rounded once
    to out_dtype.
    """

    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        xf = x.float()
        r = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        n = xf * r
        ctx.save_for_backward(n, r, weight)
        ctx.x_dtype = x.dtype
        return (n * weight).to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        n, r, weight = ctx.saved_tensors
        with torch.autocast(g.device.type, enabled=False):  # vecdot is a bf16 op under autocast
            g = g.float()
            gw = g * weight
            mean = torch.linalg.vecdot(gw, n, dim=-1).unsqueeze(-1).div_(n.shape[-1])
            dx = gw.addcmul_(n, mean, value=-1.0).mul_(r)
            dw = (g * n).sum(dim=tuple(range(g.dim() - 1))) if ctx.needs_input_grad[1] else None
        return dx.to(ctx.x_dtype), dw, None, None


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.dim
    if config.norm == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps)
    return RMSNorm(dim, eps=config.norm_eps)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h, bias = config.dim, config.hidden_dim, config.mlp_bias
        self.gated = config.mlp == "gated"
        if self.gated:
            self.gate_proj = Linear(d, h, bias=bias)
        self.up_proj = Linear(d, h, bias=bias)
        self.down_proj = Linear(h, d, bias=bias)
        self.act = ACTIVATIONS[config.act]

    def forward(self, x):
        if self.gated:  # SwiGLU, Shazeer 2020 arXiv:2002.05202
            gate, up = fused_linear(x, [self.gate_proj, self.up_proj])
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.up_proj(x)))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d, q_dim, kv_dim = config.dim, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj = Linear(d, q_dim, bias=config.qkv_bias)
        self.k_proj = Linear(d, kv_dim, bias=config.qkv_bias)
        self.v_proj = Linear(d, kv_dim, bias=config.qkv_bias)
        self.o_proj = Linear(q_dim, d, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm
        self.window = config.sliding_window
        self.config = config

    def forward(self, x, rope, cache, q_offset: int | torch.Tensor, key_valid, docs=None):
        B, T, _ = x.shape
        q, k, v = fused_linear(x, [self.q_proj, self.k_proj, self.v_proj])
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None and cache.paged:  # the cache reads its blocks itself (infer/paged.py: PagedRows.attend)
            y = cache.attend(self.layer_idx, q, k, v, lambda q, k, v, offset: self.attend(q, k, v, offset, None))
        else:
            if cache is not None:
                k, v = cache.append(self.layer_idx, k, v)
            y = self.attend(q, k, v, q_offset, key_valid, docs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def attend(self, q, k, v, q_offset, key_valid, docs=None):
        attend = ATTENTION[self.config.attn_impl]
        if k.dtype == q.dtype:
            return attend(q, k, v, q_offset, key_valid, self.window, docs)
        # the CPU's fp32 cache (see new_cache): attention in fp32, autocast off, the output back in q's dtype
        with torch.autocast(q.device.type, enabled=False):
            return attend(q.to(k.dtype), k, v, q_offset, key_valid, self.window, docs).to(q.dtype)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache, q_offset, key_valid, docs=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, q_offset, key_valid, docs)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        if config.pos == "learned":
            self.embed_positions = nn.Embedding(config.max_seq_len, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config)


class CausalLM(nn.Module):
    """The language model: token ids in, next-token logits out."""

    gradient_checkpointing = False  # trade compute for memory in training (Chen et al. 2016, arXiv:1604.06174)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if config.pos == "rope":
            self.register_buffer("inv_freq", self.rope_frequencies(), persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scaled init: residual projections shrink with depth so the residual stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))

    def rope_frequencies(self, device=None) -> torch.Tensor:
        c = self.config
        return inv_frequencies(c.head_dim, c.rope_theta, c.rope_scaling).to(device)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's tables for `rotate` at position_ids [B, T]: cos, signed sin [B, 1, T, d] in `dtype`, from fp32
        frequencies (even after .to(bf16))."""
        inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self.rope_frequencies(position_ids.device)
        return rope_tables(*rope_cos_sin(inv_freq, position_ids, dtype))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | CacheRows | None = None,
                last_only: bool = False, head: bool = True, shared_prefix: SharedPrefix | None = None
                ) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with last_only) for input_ids [B, T].

        attention_mask: [B, past + T], 1 for real tokens and 0 for padding, covering the cached slots
            too (as in Hugging Face; past = the longest row's cache length). Positions default to "count of
            real tokens before this one", so left-padded rows get the same positions as unpadded ones.
        position_ids: [B or 1, T]. Given without attention_mask and cache, it may describe packed rows
            (padding-free training, as in transformers): positions restart at 0 where a new document
            begins, and each document attends only to its own earlier tokens, as if it ran alone.
        cache: a KVCache (or some of its rows, `cache.rows(index)`); row b's new tokens go to its slots
            [lengths[b], lengths[b] + T), so rows of different lengths decode in one batch, each at its
            own positions.
        head: False returns the final hidden states [B, T, dim] instead of logits (see `hidden_states`);
            training uses this so the loss can apply the head chunk by chunk, through the same call
            that DDP/FSDP wrap.
        shared_prefix: GRPO's groups. input_ids are B prompts, left-padded (attention_mask), prompt i
            continued by group_sizes[i] rows of continuations [N, C]; returns [N, 1 + C, ...], computing each
            prompt once (see `shared_prefix_hidden_states`).
        """
        if shared_prefix is not None:
            hidden = self.shared_prefix_hidden_states(input_ids, attention_mask, shared_prefix)
            return self.lm_head(hidden) if head else hidden
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, cache, last_only)
        return self.lm_head(hidden) if head else hidden

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | CacheRows | None = None,
                      last_only: bool = False) -> torch.Tensor:
        """The final normed hidden states [B, T, dim] that `forward` multiplies by the head; arguments as
        in `forward`. Training takes these to `objectives.linear_cross_entropy(h, self.lm_head.weight, ...)`,
        which never builds the [B, T, vocab] logits."""
        B, T = input_ids.shape
        lengths = cache.lengths if cache is not None else [0]  # each row's cached slots
        # the slot of each row's first new token: one int when the rows agree (the fast paths), else [B]
        past = lengths[0] if min(lengths) == max(lengths) else torch.tensor(lengths, device=input_ids.device)
        key_valid = None
        if attention_mask is not None:
            if attention_mask.shape[1] != max(lengths) + T:
                raise ValueError(f"attention_mask covers {attention_mask.shape[1]} slots, "
                                 f"expected {max(lengths) + T}")
            key_valid = attention_mask.bool()
            if bool(key_valid.all()):
                key_valid = None  # no padding anywhere: take the fast path
        docs = None  # packed rows: the documents side by side in each row (attention.documents)
        if position_ids is not None and attention_mask is None and cache is None:
            docs = documents(position_ids.expand(B, T))
        if position_ids is None:  # each row from its own slot
            real = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if isinstance(past, int):
                position_ids = (torch.arange(past, past + T, device=input_ids.device).expand(B, T) if real is None
                                else real[:, past:])
            else:
                slots = past[:, None] + torch.arange(T, device=input_ids.device)  # [B, T]
                position_ids = slots if real is None else real.gather(1, slots)

        x = self.model.embed_tokens(input_ids)
        rope = None
        if self.config.pos == "learned":
            x = x + self.model.embed_positions(position_ids)
        else:
            rope = self.rope(position_ids, matmul_dtype(x))  # in the dtype of q and k (bf16 under autocast)
        for block in self.model.layers:
            if self.gradient_checkpointing and self.training and (cache is None or cache.differentiable):
                # keep only each block's input; recompute its activations during backward
                x = checkpoint(block, x, rope, cache, past, key_valid, docs, use_reentrant=False)
            else:
                x = block(x, rope, cache, past, key_valid, docs)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.model.norm(x)

    def shared_prefix_hidden_states(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None,
                                    shared: SharedPrefix) -> torch.Tensor:
        """Hidden states of N rows [prompt i, continuation] that share B prompts, each prompt computed once.

        GRPO samples G completions of every prompt, so its N = B * G rows repeat each prompt G times, and a plain
        forward of them computes every prompt G times. Here the B prompts run once, as a batch left-padded so that
        they all end at slot P (prompt_ids [B, P], prompt_mask [B, P] 0 on padding, None when there is none); each
        layer keeps their K and V (`SharedPrefixCache`). Then shared.continuations [N, C] run alone at slots P .. P +
        C - 1, row r attending to its prompt's K, V, repeated for the group_sizes[i] rows that continue prompt i (rows
        in order: the first group_sizes[0] rows continue prompt 0, ...), and causally to its own tokens.

        Every token sees the same keys at the same positions as in the plain forward of the row [prompt,
        continuation] (positions count real tokens, so the left padding moves nothing), so the hidden states are
        the same. The repeats are part of the graph: in backward the rows' gradients add up into their prompt's
        activations, which gives the plain forward's parameter gradients.

        Returns [N, 1 + C, dim], final-normed: at the prompt's last token (it predicts the first continuation
        token), then at each continuation token.
        """
        continuations, group_sizes = shared.continuations, shared.group_sizes
        N = continuations.shape[0]
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids)
        cache = SharedPrefixCache(prompt_ids.shape[0])
        last = self.hidden_states(prompt_ids, prompt_mask, cache=cache, last_only=True)  # [B, 1, dim]
        last = last.repeat_interleave(group_sizes, dim=0, output_size=N)
        if continuations.shape[1] == 0:
            return last
        # the rows' mask over [prompt slots, continuation slots]: the prompt's padding, then every token
        mask = torch.cat([prompt_mask.repeat_interleave(group_sizes, dim=0, output_size=N),
                          prompt_mask.new_ones(continuations.shape)], dim=1)
        hidden = self.hidden_states(continuations, mask, cache=cache.for_rows(group_sizes, N))  # [N, C, dim]
        return torch.cat([last, hidden], dim=1)

    def cache_dtype(self) -> torch.dtype:
        """What a KV cache of this model holds: the keys' dtype (the weights', or autocast's when autocast is on),
        except on the CPU, where it is fp32 whatever the weights: torch's CPU attention kernels are several times
        slower in bf16 at decode shapes (one query per row; measured on 2 cores, AVX512-BF16, 8 query and 4 kv heads
        of 64, 96 keys: 0.84 ms in bf16 vs 0.18 ms in fp32 at 16 rows, 3.0 vs 0.54 ms at 64). bf16 keys and values
        are exact in fp32, so the cache holds the same numbers at twice the bytes; attention then runs in fp32."""
        p = self.lm_head.weight
        return torch.float32 if p.device.type == "cpu" else matmul_dtype(p)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A cache for `batch` rows of up to `max_len` tokens, in `cache_dtype()`."""
        return KVCache.for_model(self.config, batch, max_len, dtype=self.cache_dtype(),
                                 device=self.lm_head.weight.device)
