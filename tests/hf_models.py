"""Tiny random-init Hugging Face models built from a config (no download), saved to a directory; and `require`, the
import of an optional oracle package (transformers, trl, peft) that skips only when the package is not installed."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

VOCAB = 128


def hf_config(arch: str, **kw):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return tf.GPT2Config(**{**common, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, **kw})
    llama_like = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, **common)
    classes = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "qwen3": tf.Qwen3Config}
    extra = {"head_dim": 32} if arch == "qwen3" else {}
    return classes[arch](**{**llama_like, **extra, **kw})


def make_hf_model(arch: str, seed: int = 0, **kw):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = hf_config(arch, **kw)
    cls = tf.GPT2LMHeadModel if arch == "gpt2" else tf.AutoModelForCausalLM
    model = cls(cfg) if arch == "gpt2" else cls.from_config(cfg)
    with torch.no_grad():  # random biases/norm weights so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.float().eval()


def installed(package: str) -> bool:
    """Whether the package (the top-level name of a module path) is installed at all."""
    return importlib.util.find_spec(package.partition(".")[0]) is not None


def require(module: str, reason: str = ""):
    """The module, imported; the test (or the test module) is skipped only when its package is not installed.
    Unlike pytest.importorskip, an installed package that lacks the module raises ImportError: a symbol that moved
    fails the parity test instead of silently skipping it."""
    if not installed(module):
        pytest.skip(reason or f"{module.partition('.')[0]} is not installed", allow_module_level=True)
    return importlib.import_module(module)
