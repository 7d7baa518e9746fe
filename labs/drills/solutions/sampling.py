"""A reference solution of the sampling drill: temperature -> top-k -> top-p -> softmax -> draw."""

import torch


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> [B, V]: temperature, then top-k, then top-p; removed tokens at -inf."""
    V = logits.shape[-1]
    logits = logits / temperature  # < 1 sharpens, > 1 flattens
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))  # "<", not the topk indices: ties stay
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)  # removed tokens have probability 0
        mass_before = probs.cumsum(dim=-1) - probs  # sum_{j < i} pi_(j)
        drop_sorted = mass_before >= top_p  # the first token has mass_before 0, so it always stays
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> tokens [B]: argmax when temperature == 0, else a draw from the filtered distribution."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)  # (B, V), 0 where removed
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
