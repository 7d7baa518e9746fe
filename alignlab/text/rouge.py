"""ROUGE-L (Lin 2004): how much of one text's word sequence another shares, in order, as Self-Instruct uses it to
drop near-duplicate instructions (a new one is kept only if its ROUGE-L with every instruction in the pool is < 0.7).

    rouge_l("Write a poem about the sea.", "Write a short poem about a sea")   # F-measure in [0, 1]

Words as the `rouge-score` package makes them (no stemming): lowercase, every run of characters other than a-z and
0-9 is a space. With LCS the length of the longest common subsequence of the two word lists,

    P = LCS / len(prediction),   R = LCS / len(reference),   F = 2 P R / (P + R)      (0 if either is empty)
"""

from __future__ import annotations

import re

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """The longest common subsequence of two lists, by dynamic programming over one row at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of `prediction` against `reference` (symmetric in the two)."""
    return rouge_l_words(words(prediction), words(reference))


def rouge_l_words(p: list[str], r: list[str]) -> float:
    """ROUGE-L of two texts already split by `words` (a pool of texts is split once)."""
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)
