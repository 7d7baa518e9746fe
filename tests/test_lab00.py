"""Lab 00's grader: the untouched stubs are TODO, the reference solutions pass, and each planted bug fails its
exercise with a message."""

from __future__ import annotations

from .lab_check import assert_lab

PLANTED = {
    1: [("seen = torch.ones(T, T, dtype=torch.bool).tril()", "seen = torch.ones(T, T, dtype=torch.bool).triu()"),
        ("seen = torch.ones(T, T, dtype=torch.bool).tril()", "seen = torch.ones(T, T, dtype=torch.bool).tril(-1)"),
        ("scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]",
         "scores = q @ k.transpose(-2, -1)  # [B, H, Tq, Tk]"),
        ("scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, T, T]",
         "scores = q @ k.transpose(-2, -1) / q.shape[-1]  # [B, H, T, T]")],
    2: [("return -log_prob.sum() / keep.sum()", "return -log_prob.sum() / len(labels)"),
        ("m = z.max(dim=-1, keepdim=True).values", "m = torch.zeros_like(z[:, :1])"),
        ("return grad / n", "return grad"),
        ("    grad[~keep] = 0.0  # an ignored row is not in the loss\n", ""),
        ("return grad / n", "return grad / len(labels)")],
    3: [("return min(counts, key=lambda pair: (-counts[pair], pair))", "return max(counts, key=counts.get)"),
        ("return min(counts, key=lambda pair: (-counts[pair], pair))",
         "return max(counts, key=lambda pair: (counts[pair], pair))"),
        ("counts[pair] = counts.get(pair, 0) + freq", "counts[pair] = counts.get(pair, 0) + 1"),
        ("i += 2  # both tokens of the pair are consumed", "i += 1")],
    4: [("values[:, k - 1:k]", "values[:, k:k + 1]"),
        ("logits.masked_fill(logits < kth", "logits.masked_fill(logits <= kth"),
        ("drop_sorted = mass_before >= p", "drop_sorted = probs.cumsum(dim=-1) > p"),
        ("drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)", "drop = drop_sorted")],
    5: [("cache_k = torch.cat([cache_k, k], dim=2)", "cache_k = torch.cat([cache_k, k], dim=1)"),
        ("scores = q @ cache_k.transpose(-2, -1) / math.sqrt(d)", "scores = q @ cache_k.transpose(-2, -1)"),
        ("cache_v = torch.cat([cache_v, v], dim=2)", "cache_v = torch.cat([v, cache_v], dim=2)")],
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(0, PLANTED, tmp_path)
