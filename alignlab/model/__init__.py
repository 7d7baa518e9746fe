"""The transformer, its config, attention forms, KV cache, and Hugging Face checkpoint I/O."""

from alignlab.model.config import ModelConfig, preset
from alignlab.model.kv_cache import KVCache, SharedPrefix
from alignlab.model.transformer import CausalLM

__all__ = ["CausalLM", "KVCache", "ModelConfig", "SharedPrefix", "preset"]
