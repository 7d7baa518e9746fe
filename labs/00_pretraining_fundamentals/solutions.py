"""Lab 00's reference solutions (pretraining fundamentals), written for learners: each one straight from the formula
in its exercise's docstring, with torch and the standard library only. Read one after trying it yourself:

    alignlab lab solution 0 2
"""

from __future__ import annotations

import math

import torch


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exercise 1a. Attention without a mask: every query sees every key."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
    return torch.softmax(scores, dim=-1) @ v  # [B, H, Tq, d]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exercise 1b. Causal attention: query t sees keys 0..t only."""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, T, T]
    seen = torch.ones(T, T, dtype=torch.bool).tril()  # seen[t, j] = j <= t: the diagonal and below
    scores = scores.masked_fill(~seen, float("-inf"))  # exp(-inf) = 0: future keys get no weight
    return torch.softmax(scores, dim=-1) @ v  # [B, H, T, d]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exercise 2a. The mean cross-entropy over the rows whose label is not -100."""
    keep = labels != -100
    z, y = logits[keep], labels[keep]  # [n, V], [n]: the rows that are learned
    m = z.max(dim=-1, keepdim=True).values  # [n, 1]: exp(z - m) <= 1 never overflows
    logsumexp = m[:, 0] + (z - m).exp().sum(dim=-1).log()  # [n]
    log_prob = z[torch.arange(len(y)), y] - logsumexp  # [n]: log softmax(z_i)[y_i]
    return -log_prob.sum() / keep.sum()


def cross_entropy_grad(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exercise 2b. The gradient of cross_entropy with respect to the logits, by hand."""
    keep = labels != -100
    n = keep.sum()
    grad = torch.softmax(logits, dim=-1)  # [N, V]
    rows = keep.nonzero()[:, 0]
    grad[rows, labels[rows]] -= 1.0  # softmax - onehot on the learned rows
    grad[~keep] = 0.0  # an ignored row is not in the loss
    return grad / n


def most_frequent_pair(words: dict[tuple[int, ...], int]) -> tuple[int, int]:
    """Exercise 3a. The pair of adjacent token ids that BPE merges next."""
    counts: dict[tuple[int, int], int] = {}
    for word, freq in words.items():
        for pair in zip(word, word[1:]):  # every adjacent position, overlapping ones too
            counts[pair] = counts.get(pair, 0) + freq
    # the highest count; on a tie the smallest pair, as train_bpe's heap of (-count, pair) pops it
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge_pair(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Exercise 3b. Replace every occurrence of `pair` in `word` by `new_id`, left to right."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2  # both tokens of the pair are consumed
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exercise 4a. Keep the k largest logits of each row, set the others to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits.clone()
    kth = logits.sort(dim=-1, descending=True).values[:, k - 1:k]  # [B, 1]: the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th largest survive


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Exercise 4b. Nucleus (top-p) filtering: keep the most likely tokens until their probability reaches p."""
    if p >= 1.0:
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # [B, V] each
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # [B, V]: the mass of the tokens more likely than this one
    drop_sorted = mass_before >= p  # the first token has 0 before it, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def decode_step(x_t: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                cache_k: torch.Tensor, cache_v: torch.Tensor, n_heads: int):
    """Exercise 5. One step of decoding with a KV cache: attend from the newest token to every token so far."""
    B, _, D = x_t.shape
    d = D // n_heads
    q = (x_t @ wq.T).view(B, 1, n_heads, d).transpose(1, 2)  # [B, H, 1, d]
    k = (x_t @ wk.T).view(B, 1, n_heads, d).transpose(1, 2)
    v = (x_t @ wv.T).view(B, 1, n_heads, d).transpose(1, 2)
    cache_k = torch.cat([cache_k, k], dim=2)  # [B, H, T + 1, d]: time is dim 2
    cache_v = torch.cat([cache_v, v], dim=2)
    scores = q @ cache_k.transpose(-2, -1) / math.sqrt(d)  # [B, H, 1, T + 1]: all in the past, no mask
    a = torch.softmax(scores, dim=-1) @ cache_v  # [B, H, 1, d]
    out = a.transpose(1, 2).reshape(B, 1, D) @ wo.T  # heads side by side again: [B, 1, D]
    return out, cache_k, cache_v
