"""From next-token logits to a token: the logits processors and the draw.

Every function takes logits [B, V] (one row per request) and returns a new tensor of the same shape; a
parameter is either a number (the same for every row) or a tensor [B] (one value per row), so each
request in a batch can have its own settings. A filter removes a token by setting its logit to -inf.
The engine applies them in this order (the order Hugging Face uses):

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> softmax -> draw (or argmax)

Each draw uses the request's own torch.Generator, so a seed reproduces a request's tokens whatever else
shares its batch.
"""

from __future__ import annotations

import torch

Param = float | int | torch.Tensor


def _per_row(x: Param, logits: torch.Tensor) -> torch.Tensor:
    """A parameter as a column [B, 1] (or a scalar tensor) that broadcasts against logits [B, V]."""
    if isinstance(x, torch.Tensor):
        return x.to(logits.device).reshape(-1, 1) if x.dim() else x
    return torch.tensor(x, device=logits.device)


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Param) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019, arXiv:1909.05858) on every token already in the sequence:

        l'_v = l_v / penalty   if l_v > 0 and v was seen
        l'_v = l_v * penalty   if l_v <= 0 and v was seen
        l'_v = l_v             otherwise

    so penalty > 1 makes repeats less likely whatever the logit's sign. seen: bool [B, V] (see `seen_mask`).
    """
    p = _per_row(penalty, logits).to(logits.dtype)
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalized, logits)


def seen_mask(token_ids: torch.Tensor, vocab_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, V]: True where token v occurs in row b of token_ids [B, T] (counting only valid slots)."""
    hits = torch.ones_like(token_ids) if valid is None else valid.long()
    counts = torch.zeros(token_ids.shape[0], vocab_size, dtype=torch.long, device=token_ids.device)
    return counts.scatter_add_(1, token_ids, hits) > 0


def temperature(logits: torch.Tensor, t: Param) -> torch.Tensor:
    """l' = l / t.  t < 1 sharpens the distribution softmax(l'), t > 1 flattens it (t must be > 0)."""
    return logits / _per_row(t, logits).to(logits.dtype)


def top_k(logits: torch.Tensor, k: Param) -> torch.Tensor:
    """Keep the k most likely tokens:  l'_v = l_v if l_v >= (k-th largest logit) else -inf.

    Ties with the k-th logit are kept. k = 0 (or k >= V) keeps everything.
    """
    V = logits.shape[-1]
    if not isinstance(k, torch.Tensor):
        if k <= 0 or k >= V:
            return logits
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    else:
        k = k.to(logits.device).long()
        k = torch.where((k <= 0) | (k > V), V, k)
        kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: Param) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019, arXiv:1904.09751): keep the smallest set of most likely
    tokens whose total probability reaches p. With the tokens sorted by probability, pi_(1) >= pi_(2) >= ...,

        keep token (i)  iff  sum_{j < i} pi_(j) < p

    i.e. a token survives if the tokens more likely than it have not yet reached p; the most likely token
    always survives. p = 1 keeps everything.
    """
    if not isinstance(p, torch.Tensor) and p >= 1.0:
        return logits
    p = _per_row(p, logits)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = (mass_before >= p) & (p < 1.0)
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p(logits: torch.Tensor, m: Param) -> torch.Tensor:
    """Min-p filtering (Nguyen et al. 2024, arXiv:2407.01082): keep tokens at least m times as likely as
    the most likely one,

        keep v  iff  pi_v >= m * max_u pi_u,       pi = softmax(l)

    so the cut-off scales with the model's confidence. m = 0 keeps everything.
    """
    if not isinstance(m, torch.Tensor) and m <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = _per_row(m, logits) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row: argmax_v l_v. Returns [B]."""
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Draw one token per row from softmax(l), row b with generators[b]. Returns [B].

    One generator per row (not one for the batch) is what makes a request's draws independent of its
    neighbours: row b always consumes its own random stream, one draw per step.

    The draw is by the inverse CDF: with u_b ~ U[0, 1) from generators[b], the token is the first v whose
    cumulative probability exceeds u_b (a token of probability 0 is never drawn). One uniform per row and one
    cumsum over the batch: on a CPU this is about 20x faster than a torch.multinomial call per row.
    """
    cdf = logits.float().softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
    draws = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return draws.clamp(max=logits.shape[-1] - 1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(l)_token per row:  l_token - logsumexp_v l_v. Returns [B] in fp32."""
    logits = logits.float()
    return logits.gather(1, tokens[:, None])[:, 0] - logits.logsumexp(dim=-1)
