"""Generation: batched prefill + KV-cache decode, sampling processors, streaming."""

from alignlab.infer.engine import Completion, Engine, SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
