"""Generation: batched prefill + KV-cache decode, sampling processors, streaming; and LLMEngine, continuous
batching over a paged KV cache."""

from alignlab.infer.engine import Completion, Engine, SamplingParams
from alignlab.infer.llm_engine import LLMEngine, RequestOutput

__all__ = ["Completion", "Engine", "LLMEngine", "RequestOutput", "SamplingParams"]
