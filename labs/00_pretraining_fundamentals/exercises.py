"""Lab 00 exercises (pretraining fundamentals): fill in each function, then grade your work with

    alignlab lab check 0          # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 0 2        # only exercise 2
    alignlab lab solution 0 2     # the reference solution of exercise 2, once you have tried
    python labs/00_pretraining_fundamentals/check.py 2      # the same check without the alignlab command

The checker runs your functions on seeded random inputs and compares them with alignlab's own attention
(alignlab/model/attention.py), loss (alignlab/objectives/lm.py), BPE trainer (alignlab/text/bpe.py) and sampling
filters (alignlab/infer/sampling.py), values and gradients. Write each one from its docstring and the lab's README,
with torch and the standard library, not by calling the alignlab function it is checked against: that would pass
and teach nothing.
"""

from __future__ import annotations

import torch


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exercise 1a. Attention without a mask: every query sees every key.

        out = softmax(q k^T / sqrt(d)) v          (softmax over the keys)

    q [B, H, Tq, d], k and v [B, H, Tk, d] (Tq may differ from Tk). Returns [B, H, Tq, d].
    """
    raise NotImplementedError


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exercise 1b. Causal attention: query t sees keys 0..t only.

        out = softmax(q k^T / sqrt(d) + M) v        M[t, j] = 0 if j <= t else -inf

    q, k, v [B, H, T, d]. Returns [B, H, T, d]. So position 0 sees only itself (its output is v[..., 0, :]), and
    nothing a later position holds can change an earlier output.
    """
    raise NotImplementedError


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exercise 2a. The mean cross-entropy over the rows whose label is not -100.

        loss = -(1/n) sum_{i : y_i != -100} log softmax(z_i)[y_i],     n = number of rows with y_i != -100
        log softmax(z)[y] = z[y] - logsumexp(z),   logsumexp(z) = m + log sum_v exp(z_v - m),   m = max_v z_v

    logits z [N, V], labels y [N] (class ids, or -100 for a row that is not learned). Returns a scalar tensor.
    Subtract the max before exp: logits of 100 must not overflow.
    """
    raise NotImplementedError


def cross_entropy_grad(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exercise 2b. The gradient of cross_entropy with respect to the logits, by hand.

        d loss / d z_i = (softmax(z_i) - onehot(y_i)) / n    for a row with y_i != -100
                       = 0                                   for a row with y_i == -100

    with n the number of rows with y_i != -100. logits [N, V], labels [N]. Returns [N, V].
    """
    raise NotImplementedError


def most_frequent_pair(words: dict[tuple[int, ...], int]) -> tuple[int, int]:
    """Exercise 3a. The pair of adjacent token ids that BPE merges next.

    words maps each word (a tuple of token ids) to how often it occurs in the corpus. The count of a pair (a, b)
    is the sum, over every position i of every word with word[i] == a and word[i + 1] == b, of that word's count
    (so (7, 7, 7) holds (7, 7) twice). Return the pair with the highest count; among pairs with the same count,
    the smallest one, comparing (a, b) as tuples: (3, 9) before (4, 1) before (4, 2).
    """
    raise NotImplementedError


def merge_pair(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Exercise 3b. Replace every occurrence of `pair` in `word` by `new_id`, left to right.

    Scan from the left: where word[i], word[i + 1] == pair, emit new_id and skip both; else emit word[i]. So
    merging (1, 1) in (1, 1, 1) gives (new_id, 1). Returns the new word as a tuple.
    """
    raise NotImplementedError


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exercise 4a. Keep the k largest logits of each row, set the others to -inf.

        out[b, v] = logits[b, v]  if logits[b, v] >= (the k-th largest logit of row b)  else -inf

    so a logit tied with the k-th largest is kept (a row may keep more than k). k <= 0 or k >= V keeps everything.
    logits [B, V]. Returns a new [B, V] tensor.
    """
    raise NotImplementedError


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Exercise 4b. Nucleus (top-p) filtering: keep the most likely tokens until their probability reaches p.

    Per row, sort the probabilities softmax(logits) in decreasing order, pi_(1) >= pi_(2) >= ... (ties: the lower
    token index first), and

        keep token (i)  iff  pi_(1) + ... + pi_(i-1) < p

    so the token that crosses p is kept, and the most likely token always is. p >= 1 keeps everything. Removed
    tokens get logit -inf, kept ones keep their logit. logits [B, V]. Returns a new [B, V] tensor.
    """
    raise NotImplementedError


def decode_step(x_t: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                cache_k: torch.Tensor, cache_v: torch.Tensor, n_heads: int):
    """Exercise 5. One step of decoding with a KV cache: attend from the newest token to every token so far.

    x_t [B, 1, D]: the hidden vector of the new token. wq, wk, wv, wo [D, D] are weights in nn.Linear's layout
    (y = x @ w.T). cache_k, cache_v [B, H, T, d]: the keys and values of the T earlier tokens (T = 0 at the
    first step), with H = n_heads and d = D / H.

        q, k, v = x_t @ wq.T, x_t @ wk.T, x_t @ wv.T          each [B, 1, D] -> [B, H, 1, d] (split into heads)
        cache_k, cache_v = cache_k and cache_v with k and v appended along time       -> [B, H, T + 1, d]
        a = softmax(q cache_k^T / sqrt(d)) cache_v            [B, H, 1, d]; no mask: every cached key is in the past
        out = (a with the heads put back side by side) @ wo.T  [B, 1, D]

    No positional encoding (no RoPE): the check runs the same attention without one. Returns (out, cache_k,
    cache_v) with the grown caches.
    """
    raise NotImplementedError
