"""How much memory does a training step need? `alignlab memory` and the "LoRA memory math".

A training step holds five kinds of tensors. With P parameters, N of them trainable:

    weights       P x bytes per weight             4 (fp32), 2 (bf16), 0.516 (NF4 + double quantisation)
    gradients     N x bytes per gradient           one per trainable parameter
    optimizer     N x 8 bytes                      AdamW's m and v in fp32 (+ 4: an fp32 master copy in bf16)
    activations   what forward keeps for backward  grows with batch x sequence (attention: x sequence again)
    working       short-lived buffers              a chunk of logits, a block's backward, ...

Full fine-tuning trains everything (N = P). LoRA freezes W and trains B A: r (in + out) numbers per adapted
Linear, so gradients and optimizer states shrink to the adapters. QLoRA also stores the frozen W in 4 bits.
What neither shrinks is the activations: backward still runs through every block.

The LoRA memory math, worked through for a 7B model
---------------------------------------------------
Llama-2-7B (P = 6.74e9: 32 layers, D = 4096, MLP width 11008, vocabulary 32000), one sequence of 2048 tokens,
bf16 on a GPU, AdamW, LoRA rank 16 on all seven Linears of each block. The numbers come from
`estimate_memory("llama-2-7b", ...)` (tests/test_memory.py checks them); 1 GB = 1e9 bytes.

1. Weights. bf16 is 2 bytes a parameter: 13.5 GB before anything is trained. NF4 stores 4 bits a weight
   plus one scale per block of 64 weights; double quantisation stores those scales in 8 bits, plus one fp32
   per 256 of them: 0.5 + 1/64 + 4/16384 = 0.516 bytes (4.127 bits) a weight. The 6.48e9 weights of the
   blocks' Linears take 3.34 GB; embeddings and head stay in bf16 (0.52 GB): 3.87 GB in all, 3.5x less.
2. LoRA parameters. Per layer r (in + out) over q, k, v, o (4 x 8192) and gate, up, down
   (3 x (4096 + 11008)): 16 x 78,080 = 1.25e6, times 32 layers = 40.0e6, 0.59% of the model. In fp32 (PEFT
   keeps adapters in fp32): 0.16 GB.
3. Gradients and optimizer states exist for those 40e6 parameters only: 0.16 GB and 0.32 GB. Full
   fine-tuning needs a bf16 gradient (13.5 GB) and fp32 master weights, m and v (80.9 GB) for all 6.74e9: the
   16 bytes a parameter of mixed precision (Rajbhandari et al. 2020, ZeRO), 108 GB before any activation,
   against 4.5 GB for QLoRA.
4. Activations. Without checkpointing each layer keeps 0.38 GB at 2048 tokens (two norms with their fp32
   copies, the q/k/v input, q, k, v, the attention output, four MLP-wide tensors of SwiGLU): 12.2 GB for 32
   layers, three times the 4-bit model, and linear in batch x sequence. Checkpointing keeps only each block's
   input (B T D x 2 bytes = 16.8 MB a layer, 0.59 GB with the final norm) and recomputes one block at a time
   in backward (0.38 GB more): one more forward of compute for 11.7 GB less.
5. The logits. [B, T, V] is 2048 x 32000 x 2 bytes = 0.13 GB in bf16, and a plain cross-entropy keeps
   fp32 log-probabilities of the same shape (0.26 GB); with Llama 3's 128256-token vocabulary, 0.5 + 1 GB.
   alignlab never builds them: `objectives.linear_cross_entropy` computes the loss and its gradients for 2^23
   logits at a time (under 0.1 GB), so the table lists them as "if materialised", uncounted.

Peak: QLoRA 5.5 GB with checkpointing (16.8 GB without), LoRA 15.0 GB, full fine-tuning 108 GB. At 8192
tokens the checkpointed QLoRA run needs 8.7 GB and 53.8 GB without checkpointing: past a few thousand tokens
the activations, not the weights, decide what fits.

Published figures this reproduces (tests/test_memory.py; GiB = 2^30 bytes)
--------------------------------------------------------------------------
- torchtune's README (github.com/pytorch/torchtune at commit 0031bfb, "Memory and training speed"):
  Llama 3.1 8B on one RTX 4090, "batch size 2 (without gradient accumulation), a dataset packed to sequence
  length 2048, and torch compile enabled": peak memory QLoRA 7.4 GiB, LoRA 16.2 GiB. The recipes' configs
  (recipes/configs/llama3_1/8B_qlora_single_device.yaml and 8B_lora_single_device.yaml): rank 8, QLoRA on
  q/k/v/output + MLP, LoRA on q/v/output + MLP, activation checkpointing, bf16, CEWithChunkedOutputLoss
  (`loss="chunked"` here). This module: 7.97 GiB (+7.7%) and 17.5 GiB (+8.0%); the test's tolerance is 10%.
  The LoRA figure is lower than bf16 weights (14.96 GiB) + checkpointed block inputs (1.0 GiB) + bf16 logits
  (0.98 GiB), which all exist when the loss is computed, so the published run kept less than its stated
  setup implies (torch.compile's partitioner recomputes pointwise results rather than keeping them; torchtune
  also keeps adapters and their AdamW states in bf16, where this module counts fp32).
- QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, section 2): for LLaMA-7B, LoRA weights of "0.2% of
  the original model weights" take 26 MB (0.002 x 6.74e9 x 2 bytes = 27 MB), and "the 4-bit base model
  consumes 5,048 MB". This module puts the 4-bit weights at 3.87 GB (4.39 GB with embeddings and head upcast
  to fp32, as peft's prepare_model_for_kbit_training does); the paper does not say what else that measured
  figure holds, so it is quoted, not claimed.

Measured on this CPU (benchmarks/bench_memory.py; the slow test asserts 20%)
-----------------------------------------------------------------------------
Peak resident memory of a fresh process while it holds the model and runs two fp32 training steps (VmHWM -
the baseline before the model was built), against the estimate. LoRA: rank 8 on every Linear of the blocks
(alignlab.lora); QLoRA: the same over NF4 Linears (alignlab.quant).

    model   params  method       B x T      estimate   measured (RSS)   estimate/measured
    tiny    0.17M   full         4 x 256     21.7 MiB     23.5 MiB          0.93
    tiny    0.17M   LoRA         4 x 256     20.7 MiB     22.0 MiB          0.94
    tiny    0.17M   QLoRA        4 x 256     20.4 MiB     21.9 MiB          0.93
    small   1.31M   full         2 x 512    107.2 MiB    111.5 MiB          0.96
    small   1.31M   LoRA         2 x 512     97.4 MiB    102.0 MiB          0.95
    small   1.31M   QLoRA        2 x 512     95.1 MiB     99.7 MiB          0.95
    medium  5.05M   full         1 x 1024   236.1 MiB    242.2 MiB          0.97
    medium  5.05M   LoRA         1 x 1024   195.1 MiB    202.6 MiB          0.96
    medium  5.05M   QLoRA        1 x 1024   186.4 MiB    192.4 MiB          0.97
    medium  5.05M   full+ckpt    1 x 1024   112.0 MiB    123.3 MiB          0.91
    medium  5.05M   LoRA+ckpt    1 x 1024    68.0 MiB     78.3 MiB          0.87
    medium  5.05M   QLoRA+ckpt   1 x 1024    59.2 MiB     68.6 MiB          0.86

The allocator's own count (torch's profiler, the allocation events of one step) is within 4% of every
estimate; the rest of RSS is memory that is not tensors (page tables, malloc's own, checkpointing's).

And the activation formula is exact: for full fine-tuning, LoRA and QLoRA (all-linear or attention targets,
with or without dropout; Llama, Qwen3 and GPT-2 blocks; kept probabilities and flash attention) the bytes
autograd saves for backward equal "activations" + "loss buffers" to the byte (tests/test_memory.py).

Conventions (printed under the table)
-------------------------------------
- dtype "fp32" is alignlab on a CPU: fp32 everything; attention keeps its probabilities up to T = 1024
  (model/attention.py), torch's flash kernel beyond. dtype "bf16" is a GPU: bf16 weights and activations,
  flash attention (O(T) memory), mixed precision as in ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054):
  bf16 weights and gradients + fp32 master weights, m and v = 16 bytes a trainable parameter. LoRA adapters
  are fp32 in both (PEFT's default), so they need no master copy: also 16 bytes a parameter.
- adamw8bit: bitsandbytes' 8-bit AdamW, m and v in a byte each plus an fp32 scale per block of 2048
  (Dettmers et al. 2022, arXiv:2110.02861); bitsandbytes keeps tensors under 4096 numbers in 32 bits.
- QLoRA quantises every Linear of the blocks (bitsandbytes' default: not the head, not the embeddings).
- The peak. Gradients and activations do not peak together: forward builds the activations, backward frees
  each block's activations as it creates that block's gradients, and zero_grad(set_to_none=True) frees the
  gradients before the next forward. So the peak is the fixed part (weights, adapters, optimizer states) plus
  the larger of the activation side and the gradient side. With gradient accumulation the gradients of the
  earlier micro-batches are there during the next forward, and the two add.
- Not counted: the CUDA context and the caching allocator's slack (nvidia-smi shows 0.3-2 GB more than
  torch's peak), the batch itself, fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignlab.errors import CheckpointError, ConfigError
from alignlab.model.attention import TRAIN_ATTENTION_MAX_LEN
from alignlab.model.config import ModelConfig
from alignlab.objectives.lm import CHUNK_LOGITS

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit")
LOSSES = ("fused", "chunked", "logits")
NF4_BLOCK, DQ_BLOCK = 64, 256  # QLoRA: one scale per 64 weights; double quantisation: one fp32 per 256 scales
ADAM8_BLOCK = 2048  # bitsandbytes' 8-bit optimizers: one fp32 absmax per 2048 state values
ATTN_BLOCK = 64  # query block of model.attention.causal_attention_train
LOSS_CHUNKS = 8  # torchtune's CEWithChunkedOutputLoss
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")

# Configs of a few models the published figures are about, as in their Hugging Face config.json (so this
# module works offline). Any local model directory or Hub id works too (see load_config).
KNOWN_CONFIGS = {
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         tie_word_embeddings=False),
}
KNOWN_CONFIGS["llama-7b"] = {**KNOWN_CONFIGS["llama-2-7b"], "max_position_embeddings": 2048}  # LLaMA 1


def load_config(name_or_path: str | Path) -> ModelConfig:
    """A ModelConfig from a model directory, a config.json, a name in KNOWN_CONFIGS, or a Hub id
    (only config.json is downloaded)."""
    from alignlab.model.hf import config_from_hf, read_config, read_config_file

    name = str(name_or_path)
    if name.lower() in KNOWN_CONFIGS:
        return config_from_hf(KNOWN_CONFIGS[name.lower()], name)
    p = Path(name).expanduser()
    if p.is_dir():
        return read_config(p)[1]
    if p.is_file():
        return read_config_file(p)[1]
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}: not a model directory, config.json, Hub id or one of "
                              f"{', '.join(sorted(KNOWN_CONFIGS))}")
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, "config.json")
    except Exception as e:  # offline, unknown or gated repository
        raise CheckpointError(f"{name}: no such local path, and downloading its config.json from the Hub failed "
                              f"({type(e).__name__})") from None
    return read_config_file(path, f"{name}/config.json")[1]


# --- the pieces --------------------------------------------------------------------------------------

def linear_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each Linear in one block, by its Hugging Face name."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {"q_proj": (c.dim, q), "k_proj": (c.dim, kv), "v_proj": (c.dim, kv), "o_proj": (q, c.dim)}
    if c.mlp == "gated":
        shapes["gate_proj"] = (c.dim, c.hidden_dim)
    shapes.update(up_proj=(c.dim, c.hidden_dim), down_proj=(c.hidden_dim, c.dim))
    return shapes


def parse_targets(targets: str | list[str] | tuple[str, ...], c: ModelConfig) -> tuple[str, ...]:
    """"all-linear" (every Linear of a block, as PEFT's all-linear: never the head), "attn", "mlp", or
    Linear names ("q_proj,v_proj"); returned in the order a block runs them."""
    shapes = linear_shapes(c)
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    chosen: set[str] = set()
    for n in (n.strip() for n in names):
        group = {"all-linear": list(shapes), "attn": [t for t in ATTN_LINEARS if t in shapes],
                 "mlp": [t for t in MLP_LINEARS if t in shapes]}.get(n, [n])
        for g in group:
            if g not in shapes:
                raise ConfigError(f"unknown LoRA target {g!r}; this model's Linears: {', '.join(shapes)}")
            chosen.add(g)
    return tuple(t for t in shapes if t in chosen)  # in the order a block runs them


def lora_params(c: ModelConfig, rank: int, targets) -> int:
    """r (in + out) for every adapted Linear: A is [r, in], B is [out, r]."""
    shapes = linear_shapes(c)
    return c.n_layers * sum(rank * sum(shapes[t]) for t in parse_targets(targets, c))


def nf4_bytes_per_param(double_quant: bool = True) -> float:
    """4 bits + the block scales: fp32 per 64 weights, or (double quantisation) 8 bits per 64 weights
    plus an fp32 per 256 scales: 4 + 8/64 + 32/(64*256) = 4.127 bits (QLoRA paper, §3)."""
    scales = 1 / NF4_BLOCK + 4 / (NF4_BLOCK * DQ_BLOCK) if double_quant else 4 / NF4_BLOCK
    return 0.5 + scales


def attention_probs(T: int, block: int = ATTN_BLOCK) -> int:
    """Probabilities kept per (batch row, head) by causal_attention_train: query block [s, e) keeps
    [e - s, e]. Equals T (T + block) / 2 when block divides T."""
    return sum((min(T, s + block) - s) * min(T, s + block) for s in range(0, T, block))


def norm_bytes(c: ModelConfig, a: int) -> tuple[int, str]:
    """Bytes one norm keeps per token. fp32: alignlab's fused RMSNorm keeps x / rms(x) and 1 / rms (D + 1
    floats; LayerNorm keeps x, mean and 1/std). 16-bit: the norm upcasts to fp32 and keeps that copy, its
    1 / rms and the 16-bit result (as transformers' LlamaRMSNorm does)."""
    extra = 1 if c.norm == "rmsnorm" else 2
    if a == 4:
        return 4 * (c.dim + extra), f"4(D+{extra})"
    return 4 * (c.dim + extra) + a * c.dim, f"4(D+{extra}) + {a}D"


def _layer0_unrecorded(targets, nb, qkv, out, attn, qk_norm, a, D, mask, dropout) -> float:
    """Bytes per token that layer 0 of a LoRA model does not keep. Its input (frozen embeddings) needs no
    gradient, so autograd records nothing before the first adapter: not the first norm, not the dropout masks
    of inputs that need no gradient, and, with adapters on o_proj or the MLP only, not the attention before
    them. (With MLP adapters only, what the MLP keeps is counted as if all of it were recorded.)"""
    n_qkv = sum(t in targets for t in ("q_proj", "k_proj", "v_proj"))
    skip = nb + dropout * mask * D * n_qkv
    if n_qkv:
        return skip
    skip += qkv + qk_norm + attn  # the attention ran without a gradient
    o_adapted = "o_proj" in targets
    if dropout or not o_adapted:  # its output is kept only as the input of o_proj's adapter
        skip += out
    if o_adapted:
        return skip + dropout * mask * out // a  # o_proj's dropout mask: its input needs no gradient
    return skip + nb + dropout * mask * D * sum(t in targets for t in ("gate_proj", "up_proj"))  # + second norm


@dataclass
class Component:
    name: str
    formula: str
    bytes: float
    counted: bool = True  # False: shown for comparison, not part of the total


@dataclass
class MemoryBreakdown:
    """The estimate: one row per component, the peak total, and the assumptions it rests on."""

    components: list[Component]
    total: float
    total_formula: str
    symbols: dict[str, int | float]
    assumptions: list[str] = field(default_factory=list)
    setup: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        for comp in self.components:
            if comp.name == name:
                return comp.bytes
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"setup": self.setup, "symbols": self.symbols,
                "components": [{**asdict(c), "gb": c.bytes / 1e9} for c in self.components],
                "total": {"bytes": self.total, "gb": self.total / 1e9, "gib": self.total / 2**30,
                          "formula": self.total_formula},
                "assumptions": self.assumptions}

    def table(self) -> str:
        """component, bytes, GB, GiB, formula; uncounted rows in parentheses; the total last."""
        rows = [(c.name if c.counted else f"({c.name})", c.bytes, c.formula) for c in self.components]
        rows.append(("total (peak)", self.total, self.total_formula))
        cells = [("component", "bytes", "GB", "GiB", "formula")]
        cells += [(name, f"{b:,.0f}", f"{b / 1e9:.3f}", f"{b / 2**30:.3f}", f) for name, b, f in rows]
        w = [max(len(r[i]) for r in cells) for i in range(4)]

        def line(r):
            return f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}"

        rule = "-" * (sum(w) + 8 + len("formula"))
        return "\n".join([line(cells[0]), rule, *map(line, cells[1:-1]), rule, line(cells[-1])])


# --- the estimate ------------------------------------------------------------------------------------

def estimate_memory(config: ModelConfig | str | Path, method: str = "full", seq: int = 2048, batch: int = 1,
                    rank: int = 16, grad_ckpt: bool = False, optimizer: str = "adamw", dtype: str = "fp32",
                    lora_targets: str | list[str] = "all-linear", loss: str = "fused", grad_accum: int = 1,
                    lora_dropout: float = 0.0, double_quant: bool = True) -> MemoryBreakdown:
    """Memory of one training step of `config` (a ModelConfig, model directory, config.json, Hub id or a
    KNOWN_CONFIGS name), component by component, each with its formula.

    method       full | lora | qlora (LoRA on a 4-bit NF4 base)
    seq, batch   tokens per row and rows per micro-batch (T, B)
    rank         LoRA rank r; lora_targets: "all-linear", "attn", "mlp" or Linear names
    grad_ckpt    keep only each block's input and recompute the block in backward
    optimizer    adamw | adamw8bit
    dtype        fp32 (alignlab on a CPU) | bf16 (a GPU: mixed precision, flash attention)
    loss         fused (alignlab: linear_cross_entropy, no [B, T, V] logits) | chunked (logits kept in the
                 compute dtype, upcast to fp32 one chunk at a time: torchtune's compiled chunked loss) |
                 logits (logits plus fp32 log-probabilities kept: plain cross-entropy, as transformers does)
    grad_accum   micro-batches per optimizer step (> 1: gradients stay while the next forward runs)
    lora_dropout > 0 keeps a dropped copy of each adapted Linear's input and its mask (PEFT applies dropout
                 per adapter)
    """
    c = config if isinstance(config, ModelConfig) else load_config(config)
    for name, value, allowed in (("method", method, METHODS), ("optimizer", optimizer, OPTIMIZERS),
                                 ("dtype", dtype, tuple(DTYPE_BYTES)), ("loss", loss, LOSSES)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if min(seq, batch, grad_accum) < 1 or (method != "full" and rank < 1):
        raise ConfigError("seq, batch, grad_accum and rank must be >= 1")

    a = DTYPE_BYTES[dtype]  # bytes of a weight and of an activation
    B, T, L, D, H, V = batch, seq, c.n_layers, c.dim, c.hidden_dim, c.vocab_size
    Hq, Hkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
    BT = B * T
    P = c.num_params()
    shapes = linear_shapes(c)
    block_linear = L * sum(i * o for i, o in shapes.values())
    lora = method != "full"
    targets = parse_targets(lora_targets, c) if lora else ()
    n_lora = lora_params(c, rank, targets) if lora else 0
    N = n_lora if lora else P  # trainable parameters
    rows: list[Component] = []
    notes: list[str] = []

    # weights
    if method == "qlora":
        q = nf4_bytes_per_param(double_quant)
        weights = q * block_linear + a * (P - block_linear)
        rows.append(Component("weights", f"{q:.4f} B x {block_linear:,} (NF4 block Linears) + {a} B x "
                                         f"{P - block_linear:,} (embeddings, head, norms)", weights))
        notes.append(f"NF4 with{'' if double_quant else 'out'} double quantisation: {q:.4f} bytes/weight; "
                     "the head and embeddings stay in the compute dtype")
    else:
        weights = a * P
        rows.append(Component("weights", f"{a} B x P", weights))
    adapters = 4 * n_lora
    if lora:
        per = " + ".join(f"{rank}({shapes[t][0]}+{shapes[t][1]})" for t in targets)
        rows.append(Component("LoRA adapters", f"4 B x L x [{per}] = 4 B x {n_lora:,} params", adapters))

    # gradients and optimizer states (trainable parameters only)
    g_bytes = 4 if lora else a
    grads = g_bytes * N
    rows.append(Component("gradients", f"{g_bytes} B x {'N (adapters)' if lora else 'P'}", grads))
    master = 4 * N if (not lora and a < 4) else 0
    if optimizer == "adamw":
        opt, opt_f = 8 * N, "2 x 4 B x N (m, v)"
    else:
        opt, opt_f = (2 + 2 * 4 / ADAM8_BLOCK) * N, f"(2 x 1 B + 2 x 4 B/{ADAM8_BLOCK}) x N (8-bit m, v + scales)"
    if master:
        opt, opt_f = opt + master, opt_f + " + 4 B x N (fp32 master weights)"
    rows.append(Component("optimizer states", opt_f, opt))

    # activations kept for backward, per layer and token (bytes): each op keeps what its backward reads
    nb, nb_f = norm_bytes(c, a)
    adapted = set(targets) if lora else set(shapes)
    dropout = lora and lora_dropout > 0
    mask = 4 if a == 4 else 1  # dropout's mask: a float tensor on the CPU, a bool one in fused GPU kernels
    flash = not (a == 4 and T <= TRAIN_ATTENTION_MAX_LEN)  # else alignlab's CPU path, which keeps the probs

    def keeps_input(*names):  # a frozen Linear keeps nothing: its input is kept for a weight's (or A's) gradient
        return not dropout and bool(adapted & set(names))

    qkv = a * (Hq * hd + 2 * Hkv * hd)  # rotated q and k, and v
    out = a * Hq * hd  # the attention output
    attn = 4 * Hq if flash else 4 * Hq * B * attention_probs(T) / BT  # log-sum-exps, or the probabilities
    qk_norm = 4 * (Hq * hd + Hkv * hd + Hq + Hkv) if c.qk_norm else 0
    mlp_n = (4 if c.mlp == "gated" else 2) - (not keeps_input("down_proj"))  # SwiGLU: gate, silu, up, product
    parts = [(2 * nb, f"2 norms x ({nb_f})" if " + " in nb_f else f"2 norms x {nb_f}"),
             (a * D * keeps_input("q_proj", "k_proj", "v_proj"), f"{a}D (q/k/v input)"),
             (qkv + out, f"{a}(2 Hq hd + 2 Hkv hd) (q, k, v, attention output)"),
             (qk_norm, "4(Hq + Hkv)(hd + 1) (q/k norms)"),
             (attn, "4 Hq (logsumexp, flash attention)" if flash else
              f"4 Hq (T+{ATTN_BLOCK})/2 (attention probabilities)"),
             (a * D * keeps_input("gate_proj", "up_proj"), f"{a}D (MLP input)"),
             (a * mlp_n * H, f"{a} x {mlp_n}H (MLP)")]
    if lora:
        parts.append((a * rank * len(targets), f"{a} r x {len(targets)} (A x of each adapter)"))
        if dropout:
            parts.append((sum((a + mask) * shapes[t][0] for t in targets),
                          f"{a + mask} B x sum of in_features (each adapter's dropped input and mask)"))
    parts = [(b, f) for b, f in parts if b]
    layer = round(BT * sum(b for b, _ in parts))
    layer_f = "B T x [" + " + ".join(f for _, f in parts) + "]"
    # outside the blocks: the final norm, RoPE's cos and sin (shared by all layers), the embeddings' ids
    other, other_f = nb * BT, f"B T ({nb_f}) (final norm)" if " + " in nb_f else f"B T {nb_f} (final norm)"
    if c.pos == "rope":
        other, other_f = other + 2 * a * BT * hd, other_f + f" + 2 x {a} B T hd (RoPE cos, sin)"
    if not lora:  # a trainable embedding's backward keeps the token ids (and a learned table's position ids)
        other, other_f = other + 8 * BT, other_f + " + 8 B T (token ids)"
        if c.pos == "learned":
            other, other_f = other + 8 * T, other_f + " + 8 T (position ids)"
    if lora and not grad_ckpt:  # layer 0 records nothing before its first trainable op
        other -= round(BT * _layer0_unrecorded(targets, nb, qkv, out, attn, qk_norm, a, D, mask, dropout))
        other_f += " - what layer 0 runs before its first adapter (no gradient needed there)"
    if grad_ckpt:
        acts = a * BT * D * L + other
        rows.append(Component("activations", f"L x {a} B T D (each block's input) + {other_f}", acts))
        rows.append(Component("recomputed block", f"one block, during backward: {layer_f}", layer))
    else:
        acts = L * layer + other
        rows.append(Component("activations", f"L x {layer_f} + {other_f}", acts))

    # the loss: what it keeps and what it needs for a moment
    head_trainable = not lora
    if loss == "fused":
        rows_chunk = min(BT, max(1, CHUNK_LOGITS // V))
        kept = a * BT * D + (a * V * D if head_trainable else 0)
        kept_f = f"{a} B T D (dL/dh)" + (f" + {a} V D (dL/dW head)" if head_trainable else "")
        tmp = rows_chunk * V * (8 + (a if a < 4 else 0))
        tmp_f = f"{rows_chunk} rows x V x {8 + (a if a < 4 else 0)} B (one chunk: logits, log-probs)"
    elif loss == "chunked":
        kept, kept_f = a * BT * V, f"{a} B T V (logits)"
        tmp = 4 * math.ceil(BT / LOSS_CHUNKS) * V
        tmp_f = f"4 B x B T V / {LOSS_CHUNKS} (one chunk in fp32)"
    else:
        kept, kept_f = (a + 4) * BT * V, f"({a} + 4) B T V (logits + fp32 log-probs)"
        tmp, tmp_f = 4 * BT * V, "4 B T V (fp32 upcast, then the fp32 gradient)"
    if loss != "fused" and head_trainable:
        kept, kept_f = kept + a * BT * D, kept_f + f" + {a} B T D (head input)"
    rows.append(Component("loss buffers", kept_f, kept))
    if loss == "fused":
        rows.append(Component("logits if materialised", f"({a} + 4) B T V (never built by alignlab)",
                              (a + 4) * BT * V, counted=False))

    # working memory: the largest short-lived buffer at the peak
    bwd_tmp = 2 * a * BT * H  # two MLP-wide gradients alive at once in a block's backward
    work, work_f = max(tmp, bwd_tmp), f"max({tmp_f}, 2 x {a} B T H (a block's backward))"
    dequant = 0
    if method == "qlora":  # each NF4 weight is dequantised to the compute dtype just before its matmul
        big = max(i * o for i, o in shapes.values())
        per = a + 2 * (a == 4)  # on the CPU alignlab's dequantize also reads its codes as int32: 2 B a weight
        dequant = per * big
        work_f += f" + {per} B x {big:,} (one Linear dequantised)"
    work += dequant
    rows.append(Component("working memory", work_f, work))

    # the peak
    fixed = weights + adapters + opt
    fixed_f = "weights + adapters + optimizer" if lora else "weights + optimizer"
    if grad_ckpt:
        fwd = acts + kept + tmp + dequant
        bwd = acts + layer + a * BT * D + bwd_tmp + dequant  # + the gradient flowing down, [B, T, D]
        act_side = max(fwd, bwd)
        act_f = "activations + max(loss buffers + chunk, recomputed block + working)"
    else:
        act_side = acts + kept + work
        act_f = "activations + loss buffers + working"
    grad_side = grads + layer  # the first block's activations are still there while its gradients are made
    if grad_accum > 1:
        total = fixed + grads + act_side
        total_f = f"{fixed_f} + gradients + {act_f} (gradients persist: grad_accum > 1)"
    else:
        total = fixed + max(act_side, grad_side)
        total_f = f"{fixed_f} + max({act_f}, gradients + one block's activations)"

    notes.append("dtype fp32 = alignlab on a CPU (attention keeps its probabilities up to T = "
                 f"{TRAIN_ATTENTION_MAX_LEN}); bf16 = a GPU with flash attention and mixed precision "
                 "(bf16 weights and gradients, fp32 master weights for full fine-tuning; fp32 adapters)")
    notes.append("not counted: CUDA context and allocator cache, the batch itself, fragmentation")
    symbols = dict(P=P, N=N, L=L, D=D, H=H, V=V, Hq=Hq, Hkv=Hkv, hd=hd, B=B, T=T)
    if lora:
        symbols["r"] = rank
    setup = dict(model=c.arch, method=method, seq=seq, batch=batch, rank=rank if lora else None,
                 lora_targets=list(targets), grad_ckpt=grad_ckpt, optimizer=optimizer, dtype=dtype, loss=loss,
                 grad_accum=grad_accum, lora_dropout=lora_dropout if lora else None)
    return MemoryBreakdown(rows, total, total_f, symbols, notes, setup)
