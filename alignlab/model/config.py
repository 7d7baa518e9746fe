"""One config for every decoder-only transformer alignlab runs.

GPT-2 and the Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3) differ only in a handful of switches:
how positions enter (learned table vs RoPE), which norm, which MLP, where biases are, QK-norm, and
whether the output head shares the embedding matrix. `hf.py` maps Hugging Face configs onto this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ATTN_IMPLS = ("sdpa", "naive", "tiled")


@dataclass
class ModelConfig:
    arch: str = "llama"  # gpt2 | llama | mistral | qwen2 | qwen3 (the HF model_type on export)
    vocab_size: int = 8192
    dim: int = 256  # hidden size
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (multi-head); fewer = grouped-query attention
    head_dim: int | None = None  # None = dim // n_heads (Qwen3 sets it explicitly)
    hidden_dim: int | None = None  # MLP width; None = 4*dim (plain) or the Llama rule (gated)
    max_seq_len: int = 2048
    # block structure
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5
    mlp: str = "gated"  # gated (SwiGLU: down(act(gate x) * up x)) | plain (down(act(up x)))
    act: str = "silu"  # silu | gelu_tanh | gelu
    pos: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2, GPT-2)
    o_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each head's q and k before RoPE (Qwen3)
    tie_embeddings: bool = False
    sliding_window: int | None = None  # Mistral: each query sees at most this many keys
    attn_impl: str = "sdpa"  # sdpa | naive | tiled (see attention.py)
    init_std: float = 0.02
    # special tokens, carried into the HF config on export
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.hidden_dim is None:
            if self.mlp == "gated":  # Llama: 2/3 of 4*dim, rounded up to a multiple of 64
                self.hidden_dim = 64 * ((int(8 * self.dim / 3) + 63) // 64)
            else:
                self.hidden_dim = 4 * self.dim
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        for name, allowed in (("norm", ("rmsnorm", "layernorm")), ("mlp", ("gated", "plain")),
                              ("act", ("silu", "gelu_tanh", "gelu")), ("pos", ("rope", "learned"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    # --- sizes ------------------------------------------------------------------------------------

    def _matmul_params(self) -> tuple[int, int]:
        """Weights of the matrices one block multiplies by, and the rest of its parameters (biases, norms)."""
        d, hd, h = self.dim, self.head_dim, self.hidden_dim
        q, kv = self.n_heads * hd, self.n_kv_heads * hd
        n_mats = 3 if self.mlp == "gated" else 2
        matmul = d * q + 2 * d * kv + q * d + n_mats * d * h
        norm = d * (2 if self.norm == "layernorm" else 1)
        other = (q + 2 * kv) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        other += self.mlp_bias * ((n_mats - 1) * h + d) + 2 * norm
        return matmul, other

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count computed from the config (equals sum(p.numel()) of the built model)."""
        matmul, other = self._matmul_params()
        final_norm = self.dim * (2 if self.norm == "layernorm" else 1)
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        emb = self.vocab_size * self.dim + (self.max_seq_len * self.dim if self.pos == "learned" else 0)
        return self.n_layers * (matmul + other) + final_norm + head + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Matmul FLOPs to process one token with `seq_len` tokens of context (default: max_seq_len).

        A matmul by a weight matrix costs 2 FLOPs per weight (multiply + add): 2 * (block matrices + head).
        Attention adds QK^T and AV: 2 * 2 * n_heads * head_dim per context token and layer; with a causal
        mask a token sees seq_len / 2 keys on average, so 2 * n_layers * seq_len * n_heads * head_dim.
        Training costs 3x the forward (the backward computes gradients for inputs and for weights).
        Kaplan et al. 2020 (arXiv:2001.08361), Chowdhery et al. 2022 (PaLM, appendix B).
        """
        T = self.max_seq_len if seq_len is None else seq_len
        matmul, _ = self._matmul_params()
        weights = 2 * (self.n_layers * matmul + self.vocab_size * self.dim)
        attn = 2 * self.n_layers * T * self.n_heads * self.head_dim
        return 3 * (weights + attn) if training else weights + attn

    def kv_cache_bytes(self, batch: int, seq_len: int, bytes_per_elem: int = 4) -> int:
        """Memory of the KV cache: 2 (K and V) * layers * kv heads * head_dim * tokens."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * batch * seq_len * bytes_per_elem

    # --- (de)serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


def preset(arch: str, **overrides) -> ModelConfig:
    """The block structure of each supported family; sizes come from `overrides`."""
    families = {
        "gpt2": dict(norm="layernorm", mlp="plain", act="gelu_tanh", pos="learned", qkv_bias=True,
                     o_bias=True, mlp_bias=True, tie_embeddings=True),
        "llama": dict(),
        "mistral": dict(),
        "qwen2": dict(qkv_bias=True, norm_eps=1e-6, rope_theta=1e6),
        "qwen3": dict(qk_norm=True, norm_eps=1e-6, rope_theta=1e6),
    }
    if arch not in families:
        raise ValueError(f"unknown architecture {arch!r}; supported: {sorted(families)}")
    return ModelConfig(arch=arch, **{**families[arch], **overrides})
