"""alignlab: LLM post-training and alignment, from scratch in readable PyTorch."""

__version__ = "0.1.0"
