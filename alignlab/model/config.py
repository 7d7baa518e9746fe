"""One config for every decoder-only transformer alignlab runs.

GPT-2 and the Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3) differ only in a handful of switches:
how positions enter (learned table vs RoPE), which norm, which MLP, where biases are, QK-norm, and
whether the output head shares the embedding matrix. `hf.py` maps Hugging Face configs onto this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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
    extra: dict[str, Any] = field(default_factory=dict)  # HF keys we keep but do not use

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

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count computed from the config (matches sum(p.numel()) of the built model)."""
        d, hd, L = self.dim, self.head_dim, self.n_layers
        q, kv = self.n_heads * hd, self.n_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        attn += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + 2 * hd * self.qk_norm
        n_mats = 3 if self.mlp == "gated" else 2
        mlp = n_mats * d * self.hidden_dim + (self.mlp_bias * ((n_mats - 1) * self.hidden_dim + d))
        norm = d * (2 if self.norm == "layernorm" else 1)
        per_layer = attn + mlp + 2 * norm
        total = L * per_layer + norm  # + final norm
        emb = self.vocab_size * d + (self.max_seq_len * d if self.pos == "learned" else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return total + head + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Matmul FLOPs to process one token at context length `seq_len`.

        forward = 2 * (matmul parameters: every projection plus the output head)
                + 4 * n_layers * seq_len * n_heads * head_dim   (QK^T and AV, averaged over causal: /2 * 2)
        training = 3 * forward (backward costs twice the forward). (Kaplan et al. 2020; PaLM appendix B.)
        """
        T = self.max_seq_len if seq_len is None else seq_len
        matmul_params = self.num_params(include_embedding=False) - self._non_matmul_params()
        if self.tie_embeddings:
            matmul_params += self.vocab_size * self.dim  # the head still multiplies by the embedding
        attn = 2 * self.n_layers * T * self.n_heads * self.head_dim  # causal: half of 4*L*T*q
        fwd = 2 * matmul_params + attn
        return 3 * fwd if training else fwd

    def _non_matmul_params(self) -> int:
        d, L = self.dim, self.n_layers
        norm = d * (2 if self.norm == "layernorm" else 1)
        biases = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim * self.qkv_bias + d * self.o_bias
        n_mats = 3 if self.mlp == "gated" else 2
        biases += self.mlp_bias * ((n_mats - 1) * self.hidden_dim + d)
        return L * (2 * norm + biases + 2 * self.head_dim * self.qk_norm) + norm

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
