"""GGUF export: a CausalLM and its vocabulary as one file that llama.cpp (and Ollama, LM Studio, ...) loads.

A GGUF file (version 3) is: the magic "GGUF", a list of typed key-value metadata (the architecture's
hyper-parameters, the tokenizer), a list of tensor infos (name, shape, type, offset) and the tensor data,
each tensor aligned to 32 bytes. The `gguf` package writes the container; this module decides what goes in:

    metadata    general.architecture = "llama" | "qwen2" | "qwen3", general.file_type,
                {arch}.context_length, .embedding_length, .block_count, .feed_forward_length,
                .attention.head_count, .attention.head_count_kv (u32), .attention.layer_norm_rms_epsilon,
                .rope.freq_base (f32), .rope.dimension_count (= head_dim, u32)
    vocabulary  tokenizer.ggml.model = "gpt2" (byte-level BPE), .pre (which pre-tokenizer regex), .tokens
                (GPT-2's printable form of each token's bytes: " the" is "Ġthe"), .token_type (i32: 1 normal,
                3 control = special tokens, 5 unused = padding rows), .merges ("Ġ t"), bos/eos/pad ids,
                add_bos_token, and tokenizer.chat_template
    tensors     token_embd, output_norm, output (absent when tied to token_embd), and per block N:
                blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.weight
                (+ attn_{q,k,v}.bias for qwen2, attn_{q,k}_norm.weight for qwen3)

GGUF writes shapes innermost first, so an [out, in] Linear weight is a tensor of `out` rows of `in` values,
and a quantized type cuts each row into blocks. The two block formats here (32 weights per block, one fp16
scale d per block):

    Q8_0   d = max|x| / 127            q = round(x / d)  (half away from zero)   in [-127, 127]   34 bytes
    Q4_0   d = m / -8, m = the x of largest |x| (with its sign)
                                       q = min(15, floor(x / d + 8.5))          in [0, 15]       18 bytes
           byte j of the 16 packed bytes = q_j | q_{j+16} << 4 (first half in the low nibbles)

and both dequantize as x ~= d * q (Q4_0: d * (q - 8)). Q4_0 puts the extreme value exactly on the code -8
(x = m gives q = 0), so each block's largest weight is reproduced up to d's fp16 rounding. The scale is
computed in fp32 and used as 1/d (a multiply), the way llama.cpp's reference quantizer does, so the bytes
are identical to `gguf.quants.quantize` (the tests check this).

Rotary embeddings: Hugging Face's Llama rotates dimension i with i + head_dim/2 (rotate_half); llama.cpp's
"llama" rope rotates 2i with 2i + 1. So q_proj and k_proj rows are permuted inside each head, row
i -> 2i and i + head_dim/2 -> 2i + 1 (`hf_to_interleaved`). Qwen2 and Qwen3 use llama.cpp's NeoX rope, which
is the half-split layout already: no permutation.

Supported: Llama and Mistral (as "llama": RMSNorm, SwiGLU, RoPE, no biases, no sliding window shorter than
the context), Qwen2 ("qwen2": q/k/v biases) and Qwen3 ("qwen3": QK-norm). Refused with a CheckpointError:
GPT-2 (LayerNorm, learned positions, Conv1D biases), biases the architecture has no tensor for, other
activations, RoPE scaling, and a real sliding window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from alignlab.errors import CheckpointError, ConfigError
from alignlab.model.config import ModelConfig

QK = 32  # weights per block, Q8_0 and Q4_0
TYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_F16, ...
QUANTIZATION_VERSION = 2  # the block layouts above (GGML_QNT_VERSION)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


# --- block quantization --------------------------------------------------------------------------------

def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: to the nearest integer, halves away from zero (torch.round sends halves to even)."""
    r = torch.round(x)
    half = (x - torch.trunc(x)).abs() == 0.5  # exact in fp32
    return torch.where(half, torch.trunc(x) + torch.sign(x), r)


def _blocks(w: torch.Tensor) -> torch.Tensor:
    """[rows, cols] float -> fp32 [rows * cols / 32, 32]; every row must be whole blocks."""
    if w.dim() != 2 or w.shape[1] % QK:
        raise ValueError(f"block quantization needs a 2-D tensor whose rows are a multiple of {QK}, "
                         f"got shape {list(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("cannot quantize a tensor with inf or nan")
    return w.detach().float().reshape(-1, QK)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 for an all-zero block (d = 0), so its codes are 0 (Q8_0) or 8 (Q4_0): exactly 0."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 1] -> its fp16 as 2 little-endian bytes [n, 2]."""
    return d.half().view(torch.uint8)


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> uint8 [rows, cols / 32 * 34]: per block the fp16 d = max|x| / 127, then 32 int8
    q = round(x / d)."""
    x = _blocks(w)  # (n, 32)
    d = x.abs().amax(dim=1, keepdim=True) / 127  # (n, 1)
    q = round_half_away(x * _inverse(d)).to(torch.int8)  # (n, 32) in [-127, 127]
    packed = torch.cat([_fp16_bytes(d), q.view(torch.uint8)], dim=1)  # (n, 34)
    return packed.reshape(w.shape[0], -1)


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, blocks * 34] -> fp32 [rows, blocks * 32]: x = d * q."""
    b = data.reshape(-1, BLOCK_BYTES["q8_0"])
    d = b[:, :2].contiguous().view(torch.float16).float()  # (n, 1)
    q = b[:, 2:].contiguous().view(torch.int8).float()  # (n, 32)
    return (d * q).reshape(data.shape[0], -1)


def quantize_q4_0(w: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> uint8 [rows, cols / 32 * 18]: per block the fp16 d = m / -8 (m: the value of largest
    magnitude, signed; the first one on a tie), then 16 bytes holding q = min(15, floor(x / d + 8.5)) two
    per byte, value j in the low nibble of byte j and value j + 16 in its high nibble."""
    x = _blocks(w)  # (n, 32)
    m = x.gather(1, x.abs().argmax(dim=1, keepdim=True))  # (n, 1), signed
    d = m / -8
    q = torch.floor(x * _inverse(d) + 8.5).clamp(0, 15).to(torch.uint8)  # (n, 32); x = m gives 0
    nibbles = q[:, : QK // 2] | (q[:, QK // 2 :] << 4)  # (n, 16)
    return torch.cat([_fp16_bytes(d), nibbles], dim=1).reshape(w.shape[0], -1)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, blocks * 18] -> fp32 [rows, blocks * 32]: x = d * (q - 8)."""
    b = data.reshape(-1, BLOCK_BYTES["q4_0"])
    d = b[:, :2].contiguous().view(torch.float16).float()  # (n, 1)
    nibbles = b[:, 2:]
    q = torch.cat([nibbles & 0xF, nibbles >> 4], dim=1).float() - 8  # (n, 32)
    return (d * q).reshape(data.shape[0], -1)


QUANTIZERS = {"q8_0": (quantize_q8_0, dequantize_q8_0), "q4_0": (quantize_q4_0, dequantize_q4_0)}


def fake_quantize(w: torch.Tensor, kind: str) -> torch.Tensor:
    """What a reader of the file gets back for `w` stored as `kind` (fp32; the round trip in one call)."""
    if kind in QUANTIZERS:
        quantize, dequantize = QUANTIZERS[kind]
        return dequantize(quantize(w))
    return w.detach().to(torch.float16 if kind == "f16" else torch.float32).float()


# --- rotary layout ---------------------------------------------------------------------------------------

def hf_to_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q_proj / k_proj rows from the half-split rotary layout to the interleaved one, head by head: within
    a head of size hd, row i -> 2i and row hd/2 + i -> 2i + 1. w: [n_head * hd, cols] (or a bias [n_head * hd])."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def interleaved_to_hf(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of `hf_to_interleaved`."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# --- what llama.cpp can run -----------------------------------------------------------------------------

def gguf_arch(c: ModelConfig) -> str:
    """llama.cpp's architecture name for a config, or a CheckpointError that says what it cannot express."""
    arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(c.arch)
    if arch is None:
        raise CheckpointError(f"GGUF export supports llama, mistral, qwen2 and qwen3 models, not {c.arch} "
                              "(GPT-2's LayerNorm, learned positions and biases need llama.cpp's gpt2 arch)")
    problems = []
    if (c.norm, c.mlp, c.act, c.pos) != ("rmsnorm", "gated", "silu", "rope"):
        problems.append(f"norm={c.norm}, mlp={c.mlp}, act={c.act}, pos={c.pos} (needs rmsnorm, gated, silu, rope)")
    if c.qkv_bias != (arch == "qwen2"):
        problems.append(f"qkv_bias={c.qkv_bias} (llama.cpp's {arch} has {'' if arch == 'qwen2' else 'no '}"
                        "q/k/v biases)")
    if c.o_bias or c.mlp_bias:
        problems.append("biases on o_proj or the MLP")
    if c.qk_norm != (arch == "qwen3"):
        problems.append(f"qk_norm={c.qk_norm} (only qwen3 has it)")
    if c.rope_scaling:
        problems.append(f"rope_scaling {c.rope_scaling.get('rope_type', c.rope_scaling.get('type'))} (not exported)")
    if c.sliding_window is not None and c.sliding_window < c.max_seq_len:
        problems.append(f"a sliding window of {c.sliding_window} < the context {c.max_seq_len}")
    if c.head_dim % 2:
        problems.append(f"odd head_dim {c.head_dim}")
    if problems:
        raise CheckpointError(f"cannot export this {c.arch} model to GGUF ({arch}): " + "; ".join(problems))
    return arch


# GGUF's name for each module of a block -> alignlab's (= Hugging Face's) name inside model.layers.N
BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
               "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
               "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_tensors(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """alignlab's state dict -> {GGUF name: fp32 tensor} in the order llama.cpp lists them, [out, in] as
    stored, q/k rows permuted for arch "llama"; lm_head is left out when tied."""
    permute = gguf_arch(c) == "llama"
    out = {"token_embd.weight": state["model.embed_tokens.weight"]}
    for i in range(c.n_layers):
        for name, ours in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                t = state.get(f"model.layers.{i}.{ours}.{kind}")
                if t is None:
                    continue
                if permute and name in ("attn_q", "attn_k"):
                    t = hf_to_interleaved(t, c.n_heads if name == "attn_q" else c.n_kv_heads)
                out[f"blk.{i}.{name}.{kind}"] = t
    out["output_norm.weight"] = state["model.norm.weight"]
    if not c.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def storage_type(t: torch.Tensor, kind: str) -> tuple[str, str | None]:
    """The type a tensor is stored in, and why it is not `kind` (None when it is). 1-D tensors (norms,
    biases) stay f32; a matrix whose rows are not whole blocks falls back to f16."""
    if t.dim() == 1:
        return "f32", None if kind == "f32" else "1-D"
    if kind in QUANTIZERS and t.shape[1] % QK:
        return "f16", f"rows of {t.shape[1]} are not a multiple of {QK}"
    return kind, None


def encode(t: torch.Tensor, kind: str) -> np.ndarray:
    """The array GGUFWriter.add_tensor takes: fp32/fp16 as is, quantized blocks as uint8 bytes."""
    if kind in QUANTIZERS:
        return QUANTIZERS[kind][0](t).numpy()
    return t.to(torch.float16 if kind == "f16" else torch.float32).numpy()


# --- the vocabulary and the file ---------------------------------------------------------------------

@dataclass
class Vocab:
    """A byte-level BPE vocabulary as GGUF stores it. tokens[i] is token i: GPT-2's printable string of its
    bytes for ordinary tokens, the text itself for special ones ("<|end|>"); merges are "left right" in
    rank order. pre names llama.cpp's pre-tokenizer regex ("gpt-2": GPT-2's, which alignlab's BPE uses)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int | None
    bos_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None  # the chat turn's end, when it differs from eos
    add_bos: bool = False
    pre: str = "gpt-2"
    chat_template: str | dict[str, str] | None = None  # one template, or named ones ("default", "tool_use")

    def padded(self, n: int) -> Vocab:
        """The vocabulary grown to n tokens (the embedding's rows) with unused placeholder tokens."""
        if len(self.tokens) > n:
            raise CheckpointError(f"the tokenizer has {len(self.tokens)} tokens but the model only {n} embeddings")
        extra = range(len(self.tokens), n)
        return replace(self, tokens=self.tokens + [f"<|unused_{i}|>" for i in extra],
                       token_types=self.token_types + [TOKEN_UNUSED] * len(extra))


@dataclass
class GGUFReport:
    path: Path
    n_bytes: int
    arch: str
    types: Counter = field(default_factory=Counter)  # storage type -> number of tensors
    kept: dict[str, str] = field(default_factory=dict)  # tensor -> "f16: why" for the ones not in the asked type


def write_gguf(model, vocab: Vocab, path: str | Path, kind: str = "f16", name: str = "alignlab") -> GGUFReport:
    """Write `model` (a CausalLM) and its vocabulary to `path` with every matrix in `kind` (f32, f16, q8_0,
    q4_0), except as `storage_type` says."""
    import gguf

    if kind not in TYPES:
        raise ConfigError(f"GGUF type must be one of {', '.join(TYPES)}, got {kind!r}")
    c = model.config
    arch = gguf_arch(c)
    vocab = vocab.padded(c.vocab_size)
    tensors = gguf_tensors(model.state_dict(), c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(FILE_TYPE[kind])
    if kind in QUANTIZERS:
        w.add_quantization_version(QUANTIZATION_VERSION)
    # hyper-parameters: the add_* helpers write u32 integers and f32 floats, the types llama.cpp checks
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    w.add_layer_norm_rms_eps(float(c.norm_eps))
    # the vocabulary
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    # llama.cpp's gpt2 defaults (bos = eos = 11) fit GPT-2 only: without a bos token, bos is eos, as in GPT-2
    eos = vocab.eos_id if vocab.eos_id is not None else vocab.bos_id
    bos = vocab.bos_id if vocab.bos_id is not None else eos
    if bos is not None:
        w.add_bos_token_id(bos)
        w.add_eos_token_id(eos)
    if vocab.pad_id is not None:
        w.add_pad_token_id(vocab.pad_id)
    if vocab.eot_id is not None:
        w.add_eot_token_id(vocab.eot_id)
    w.add_add_bos_token(vocab.add_bos and vocab.bos_id is not None)
    w.add_add_eos_token(False)
    if isinstance(vocab.chat_template, dict):
        w.add_chat_template([{"name": k, "template": v} for k, v in vocab.chat_template.items()])
    elif vocab.chat_template:
        w.add_chat_template(vocab.chat_template)

    report = GGUFReport(path, 0, arch)
    for tname, t in tensors.items():
        stored, why = storage_type(t, kind)
        raw = gguf.GGMLQuantizationType[stored.upper()] if stored in QUANTIZERS else None
        w.add_tensor(tname, encode(t, stored), raw_dtype=raw)
        report.types[stored] += 1
        if why:
            report.kept[tname] = f"{stored}: {why}"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    report.n_bytes = path.stat().st_size
    return report
