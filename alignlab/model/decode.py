"""One decoding step written flat: CausalLM.forward for one new token per row, in fewer Python-level operations.

At decode shapes on a CPU a forward spends about as long around its products as in them: on 2 cores a 27M model's
33 products stream its bf16 weights in about 3 ms a step, and CausalLM.forward's module calls, dtype checks and
per-layer bookkeeping take nearly as long again. `DecodeStep` looks up once per generation what stays fixed within
one (each product's packed weight and bias, the norms' weights), then runs, per layer:

    h = norm(x);  [q, k, v] = h W_qkv             one product; the heads side by side, [B, 1, heads, d]
    [q, k] = rope([q, k])                          q and k rotated as one tensor
    K[:, :, n], V[:, :, n] = k, v                  slot n of every row (rows hold equal lengths)
    x = x + attention(q, K[:, :, :n + 1], V[:, :, :n + 1]) W_o
    [g, u] = norm(x) W_gu;  x = x + (silu(g) * u) W_down

and logits = norm(x) W_head. These are the forward's operations on the same values, so the logits are equal to
the forward's (tests/test_decode.py). It serves the engine's usual case on a CPU: a Llama-family model (RMSNorm,
RoPE, gated MLP, no q/k norm) whose products all take model/linear.py's packed bf16 path (bf16 weights, or fp32
weights under bf16 autocast; plain `Linear` layers, so no LoRA or 4-bit layers) and a KVCache. For anything else
`DecodeStep.plan` returns None and the engine runs CausalLM.forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.model.kv_cache import KVCache
from alignlab.model.linear import Linear, PackedWeights, packable, packed, packed_linear
from alignlab.model.rope import rotate
from alignlab.model.transformer import CausalLM, RMSNorm, rms_norm


class _Layer:
    """What one block's step reads: norms' (weight, eps), products' (packed weight, bias), the activation."""

    def __init__(self, block, store: PackedWeights):
        attn, mlp = block.self_attn, block.mlp
        self.norm1 = (block.input_layernorm.weight, block.input_layernorm.eps)
        self.norm2 = (block.post_attention_layernorm.weight, block.post_attention_layernorm.eps)
        self.qkv = packed([attn.q_proj, attn.k_proj, attn.v_proj], store)
        self.o = packed([attn.o_proj], store)
        self.gate_up = packed([mlp.gate_proj, mlp.up_proj], store)
        self.down = packed([mlp.down_proj], store)
        self.hidden = mlp.up_proj.out_features
        self.act = mlp.act


class DecodeStep:
    """model's forward for tokens [B, 1] at the cache's next slot; build one per generation with `plan`."""

    def __init__(self, model, store: PackedWeights):
        c = model.config
        self.model, self.heads, self.window = model, (c.n_heads, c.n_kv_heads, c.head_dim), c.sliding_window
        self.layers = [_Layer(block, store) for block in model.model.layers]
        self.norm = (model.model.norm.weight, model.model.norm.eps)
        self.head = packed([model.lm_head], store)
        self.embed = model.model.embed_tokens.weight

    @classmethod
    def plan(cls, model, cache, store: PackedWeights) -> DecodeStep | None:
        """The step for this model and cache, or None where CausalLM.forward has to run (see the module doc)."""
        if not isinstance(model, CausalLM):
            return None
        c, blocks = model.config, model.model.layers
        if type(cache) is not KVCache or c.pos != "rope" or c.mlp != "gated" or c.qk_norm or torch.is_grad_enabled():
            return None
        norms = [model.model.norm] + [n for b in blocks for n in (b.input_layernorm, b.post_attention_layernorm)]
        products = [model.lm_head] + [m for b in blocks for m in (b.self_attn.q_proj, b.self_attn.k_proj,
                                                                  b.self_attn.v_proj, b.self_attn.o_proj,
                                                                  b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)]
        rows, dtype = len(cache.lengths), model.lm_head.weight.dtype  # one dtype, as fused_linear's groups want
        ok = all(type(n) is RMSNorm for n in norms) and all(  # each product's input: a norm's bf16 output
            type(m) is Linear and m.weight.dtype == dtype and packable(m.weight, torch.bfloat16, rows,
                                                                       m.max_packed_rows) for m in products)
        return cls(model, store) if ok else None

    def fits(self, cache) -> bool:
        """Whether this step computes what the forward would at the cache's next slot (a sliding window that
        starts to cut keys needs the forward's mask)."""
        return self.window is None or cache.lengths[0] + 1 <= self.window

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                 key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 1, vocab] for tokens [B, 1] at positions [B, 1]; key_valid [B, n + 1] marks the cache
        slots that are not padding (None: none is). Writes slot n of every row and advances the cache."""
        Hq, Hkv, d = self.heads
        B = tokens.shape[0]
        if key_valid is not None and bool(key_valid.all()):
            key_valid = None  # as the forward does: no padding, no mask
        mask = None if key_valid is None else key_valid[:, None, None, :]  # [B, 1, 1, n + 1]
        with torch.autocast("cpu", enabled=False):  # every dtype below is explicit (bf16 products, fp32 cache)
            n, K, V = cache.next_slot()
            cos, sin = self.model.rope(positions, torch.bfloat16)  # [B, 1, 1, d]: for [B, 1, heads, d] too
            x = F.embedding(tokens, self.embed)
            for i, layer in enumerate(self.layers):
                qkv = packed_linear(rms_norm(x, *layer.norm1), *layer.qkv).view(B, 1, Hq + 2 * Hkv, d)
                qk = rotate(qkv[:, :, :Hq + Hkv], cos, sin)
                k, v = K[i], V[i]
                k[:, :, n], v[:, :, n] = qk[:, 0, Hq:], qkv[:, 0, Hq + Hkv:]
                q = qk[:, :, :Hq].transpose(1, 2).to(k.dtype)
                y = F.scaled_dot_product_attention(q, k[:, :, :n + 1], v[:, :, :n + 1], attn_mask=mask,
                                                   enable_gqa=Hq != Hkv)
                x = x + packed_linear(y.transpose(1, 2).reshape(B, 1, Hq * d), *layer.o)
                gate, up = packed_linear(rms_norm(x, *layer.norm2), *layer.gate_up).split(layer.hidden, dim=-1)
                x = x + packed_linear(layer.act(gate) * up, *layer.down)
            cache.advance(1)
            return packed_linear(rms_norm(x, *self.norm), *self.head)
