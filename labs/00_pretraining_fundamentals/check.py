"""Grade Lab 00's exercises (labs/00_pretraining_fundamentals/exercises.py).

    alignlab lab check 0                                              # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 0 2                                            # one of them
    python labs/00_pretraining_fundamentals/check.py 1 4 [--module my.py]   # the same, without the alignlab command

Each check runs the learner's functions on seeded random inputs and compares them with alignlab's own code: the
attention of alignlab/model/attention.py (and torch's fused kernel), lm_loss and its autograd gradient
(alignlab/objectives/lm.py), train_bpe's merges (alignlab/text/bpe.py), and the top-k / top-p filters of
alignlab/infer/sampling.py.
"""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from pathlib import Path

import regex
import torch
import torch.nn.functional as F

from alignlab.infer.sampling import top_k, top_p
from alignlab.lab import assert_close
from alignlab.model.attention import naive_attention
from alignlab.objectives.lm import IGNORE_INDEX, lm_loss
from alignlab.text.bpe import GPT2_PATTERN, _merge, train_bpe


def close(got, want: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    assert_close(got, want, what, atol, rtol=1e-4)

def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# The checks, one per exercise


def check_1(ex) -> str:
    # 1a: no mask. alignlab's naive_attention with q_offset = Tk puts every query after every key: nothing is masked
    for B, H, Tq, Tk, d in [(2, 3, 6, 6, 8), (1, 2, 3, 7, 4)]:
        q, k, v = randn(B, H, Tq, d, seed=10 + Tq), randn(B, H, Tk, d, seed=20 + Tk), randn(B, H, Tk, d, seed=30)
        what = f"naive_attention(q [{B}, {H}, {Tq}, {d}], k and v [{B}, {H}, {Tk}, {d}])"
        got = ex.naive_attention(q.clone(), k.clone(), v.clone())
        close(got, naive_attention(q, k, v, q_offset=Tk), what)
        close(got, F.scaled_dot_product_attention(q, k, v), f"{what} against torch's scaled_dot_product_attention")

    # 1b: causal, first the two properties a mask must give, then the values
    B, H, T, d = 2, 3, 7, 8
    q, k, v = randn(B, H, T, d, seed=1), randn(B, H, T, d, seed=2), randn(B, H, T, d, seed=3)
    what = f"causal_attention(q, k, v [{B}, {H}, {T}, {d}])"
    out = ex.causal_attention(q.clone(), k.clone(), v.clone())
    if not isinstance(out, torch.Tensor) or out.shape != q.shape:
        raise AssertionError(f"{what}: expected a tensor of shape {tuple(q.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    close(out[..., 0, :], v[..., 0, :], f"{what}: position 0 sees only key 0, so its output must be v[..., 0, :]")
    t0 = 4  # change every position from t0 on: the outputs before t0 must not move
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[..., t0:, :] += randn(B, H, T - t0, d, seed=4) * 3
    out2 = ex.causal_attention(q2, k2, v2)
    close(out2[..., :t0, :], out[..., :t0, :], f"{what}: positions 0..{t0 - 1} changed when only positions "
          f"{t0}..{T - 1} did (a query sees the future)", atol=1e-6)
    close(out, naive_attention(q, k, v), what)
    close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True),
          f"{what} against torch's scaled_dot_product_attention(is_causal=True)")
    return ("naive_attention on square and 3x7 problems, causal_attention on [2, 3, 7, 8]: equal to alignlab's "
            "naive_attention and torch's SDPA; position 0 = v[..., 0, :]; future tokens do not reach the past")


def check_2(ex) -> str:
    g = torch.Generator().manual_seed(2)
    cases = [  # (N, V, ignored rows, logit scale)
        (10, 7, [1, 4, 8], 1.0),
        (6, 5, [], 1.0),
        (5, 11, [0], 100.0),  # logits in the hundreds: exp overflows in float32 unless the max is subtracted first
        (1, 3, [], 1.0),
    ]
    for N, V, ignored, scale in cases:
        z = torch.randn(N, V, generator=g) * scale
        y = torch.randint(0, V, (N,), generator=g)
        y[ignored] = IGNORE_INDEX
        what = f"N={N}, V={V}, rows {ignored} labelled -100"
        if scale > 1:
            what += f", logits up to {z.abs().max():.0f}"
        # lm_loss takes [B, T, V] logits and labels already aligned with them (it does not shift): one row of N
        ref = z.clone().requires_grad_(True)
        want = lm_loss(ref[None], y[None])
        (want_grad,) = torch.autograd.grad(want, ref)
        got = ex.cross_entropy(z.clone(), y.clone())
        close(torch.as_tensor(got), want.detach(), f"cross_entropy({what}) against lm_loss")
        grad = ex.cross_entropy_grad(z.clone(), y.clone())
        if isinstance(grad, torch.Tensor) and grad.shape == z.shape and ignored and grad[ignored].abs().max() > 0:
            raise AssertionError(f"cross_entropy_grad({what}): rows {ignored} are ignored, their gradient must be 0, "
                                 f"got up to {grad[ignored].abs().max():.4g}")
        close(grad, want_grad, f"cross_entropy_grad({what}) against autograd of lm_loss", atol=1e-6)
    return "four cases (ignored rows, logits in the hundreds, one row): loss = lm_loss, gradient = autograd's"


def bpe_corpus() -> str:
    """600 words of 40 random spellings over six letters (~3,200 characters): many pairs, and ties among them."""
    rng = random.Random(3)
    spellings = ["".join(rng.choice("aehnst") for _ in range(rng.randint(2, 6))) for _ in range(40)]
    return " ".join(rng.choice(spellings) for _ in range(600))


def check_3(ex) -> str:
    # 3b: merge_pair on hand cases, then against train_bpe's _merge on random words
    for word, pair, want in [((1, 2, 1, 2), (1, 2), (9, 9)), ((1, 1, 1), (1, 1), (9, 1)), ((2, 1), (1, 2), (2, 1)),
                             ((3,), (3, 3), (3,)), ((), (1, 2), ())]:
        got = ex.merge_pair(word, pair, 9)
        if got != want:
            raise AssertionError(f"merge_pair({word}, {pair}, 9): got {got}, expected {want}")
    rng = random.Random(33)
    for _ in range(200):
        word = tuple(rng.choice((1, 2, 3)) for _ in range(rng.randint(0, 9)))
        a, b = rng.choice((1, 2, 3)), rng.choice((1, 2, 3))
        got, want = ex.merge_pair(word, (a, b), 7), tuple(_merge(list(word), a, b, 7))
        if got != want:
            raise AssertionError(f"merge_pair({word}, ({a}, {b}), 7): got {got}, expected {want} (bpe._merge)")

    # 3a: most_frequent_pair on hand cases
    for words, want, why in [
        ({(1, 2, 3): 2, (2, 3): 1}, (2, 3), "(2, 3) occurs 2 + 1 times, (1, 2) twice"),
        ({(3, 4): 5, (1, 2, 1, 2, 1, 2): 1}, (3, 4), "counts are weighted by the word's frequency: (3, 4) 5 times"),
        ({(7, 7, 7): 1, (1, 2): 1}, (7, 7), "(7, 7, 7) holds (7, 7) twice"),
        ({(5, 6): 2, (1, 2): 2}, (1, 2), "a tie: the smaller pair"),
        ({(4, 2): 1, (4, 1): 1, (3, 9): 1}, (3, 9), "a three-way tie: the smallest pair"),
    ]:
        got = ex.most_frequent_pair(dict(words))
        if tuple(got) != want:
            raise AssertionError(f"most_frequent_pair({words}): got {got}, expected {want}: {why}")

    # both together: the first merges of train_bpe on a seeded corpus
    text, n_merges = bpe_corpus(), 25
    tok = train_bpe(text, 256 + n_merges, special_tokens=(), eos_token=None, pad_token=None, progress=False)
    words = Counter(tuple(w.encode()) for w in regex.findall(GPT2_PATTERN, text))
    vocab = [bytes([i]) for i in range(256)]
    ids = {t: i for i, t in enumerate(vocab)}
    merges = []
    while len(vocab) < 256 + n_merges:
        a, b = ex.most_frequent_pair(dict(words))
        merges.append((vocab[a], vocab[b]))
        new = vocab[a] + vocab[b]
        if new not in ids:  # as train_bpe does: two pairs that spell the same bytes share one id
            ids[new] = len(vocab)
            vocab.append(new)
        merged = Counter()
        for word, n in words.items():
            merged[tuple(ex.merge_pair(word, (a, b), ids[new]))] += n
        words = merged
    for i, (got, want) in enumerate(zip(merges, tok.merges)):
        if got != want:
            raise AssertionError(f"BPE on a seeded {len(text)}-character corpus: merge {i} is {got}, train_bpe's is "
                                 f"{want} (merges before it: {tok.merges[:i]})")
    if len(merges) != len(tok.merges):
        raise AssertionError(f"BPE on a seeded {len(text)}-character corpus: {len(merges)} merges, train_bpe made "
                             f"{len(tok.merges)}")
    return (f"merge_pair on 5 hand cases and 200 random words (= bpe._merge); most_frequent_pair on 5 hand cases "
            f"with ties; together they give train_bpe's first {n_merges} merges")


def filtered(got, given: torch.Tensor, logits: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Exact comparison of a filter's output: the same logits kept, -inf elsewhere; its input (`given`, a copy of
    `logits`) left alone."""
    if not torch.equal(given, logits):
        raise AssertionError(f"{what}: your function changed its input tensor; return a new one")
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        raise AssertionError(f"{what}: expected a tensor of shape {tuple(want.shape)}")
    for b in range(want.shape[0]):
        if not torch.equal(got[b], want[b]):
            kept_got = torch.isfinite(got[b]).nonzero()[:, 0].tolist()
            kept_want = torch.isfinite(want[b]).nonzero()[:, 0].tolist()
            raise AssertionError(f"{what}, row {b} = {[round(x, 3) for x in logits[b].tolist()]}: kept tokens "
                                 f"{kept_got}, expected {kept_want}" +
                                 ("" if kept_got != kept_want else " (kept logits must keep their values)"))


def check_4(ex) -> str:
    g = torch.Generator().manual_seed(4)
    ties = torch.randint(-3, 4, (4, 10), generator=g).float()  # integer logits: many ties
    smooth = torch.randn(3, 10, generator=g) * 2
    for name, logits in (("tied integer logits", ties), ("random logits", smooth)):
        for k in (1, 3, 5, 9, 10, 0, 12):
            want = top_k(logits, k)
            x = logits.clone()
            filtered(ex.top_k_filter(x, k), x, logits, want, f"top_k_filter({name}, k={k})")

    nucleus = torch.randn(5, 12, generator=g) * 2
    # tied groups the cut never splits, so the order inside a tie does not matter
    tied = torch.tensor([[3.0, 1, 1, 0, -2, -2], [0, 3, 0, 3, -4, 1], [-1, 2, 2, -1, -1, 0], [4, 4, 1, 1, 0, 0]])
    for name, logits, ps in (("random logits", nucleus, (0.0001, 0.5, 0.9, 1.0)),
                             ("tied logits", tied, (0.5, 0.9))):
        for p in ps:
            want = top_p(logits, p)
            x = logits.clone()
            filtered(ex.top_p_filter(x, p), x, logits, want, f"top_p_filter({name}, p={p})")
    return "top_k_filter with k = 0..12 on tied and random logits, top_p_filter with p = 0.0001..1 (ties too): " \
           "equal to sampling.top_k and sampling.top_p"


def check_5(ex) -> str:
    for B, T, D, H, seed in [(2, 6, 12, 3, 5), (1, 5, 8, 4, 6)]:
        d = D // H
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, T, D, generator=g)
        wq, wk, wv, wo = (torch.randn(D, D, generator=g) / math.sqrt(D) for _ in range(4))

        # the whole sequence at once: causal attention over all T tokens with alignlab's naive_attention
        q_all, k_all, v_all = ((x @ w.T).view(B, T, H, d).transpose(1, 2) for w in (wq, wk, wv))  # [B, H, T, d]
        full = naive_attention(q_all, k_all, v_all).transpose(1, 2).reshape(B, T, D) @ wo.T  # [B, T, D]

        cache_k, cache_v = torch.zeros(B, H, 0, d), torch.zeros(B, H, 0, d)
        for t in range(T):
            what = f"decode_step at step {t} (B={B}, D={D}, n_heads={H})"
            out, cache_k, cache_v = ex.decode_step(x[:, t:t + 1].clone(), wq, wk, wv, wo, cache_k, cache_v, H)
            for name, cache, want in (("cache_k", cache_k, k_all), ("cache_v", cache_v, v_all)):
                if not isinstance(cache, torch.Tensor) or cache.shape != (B, H, t + 1, d):
                    shape = tuple(cache.shape) if isinstance(cache, torch.Tensor) else type(cache).__name__
                    raise AssertionError(f"{what}: {name} has shape {shape}, expected {(B, H, t + 1, d)} "
                                         f"[B, H, T, d]: one more token along time (dim 2) each step")
                close(cache, want[:, :, :t + 1], f"{what}: {name} against the keys/values of tokens 0..{t}")
            close(out, full[:, t:t + 1], f"{what}: output against full causal attention over tokens 0..{t}")
    return ("token-by-token decoding of 6 and 5 tokens equals full causal attention (alignlab's naive_attention); "
            "the caches grow by one token a step")


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5}


if __name__ == "__main__":
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
