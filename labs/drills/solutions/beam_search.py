"""A reference solution of the beam_search drill: beam search without a length penalty, finished beams kept."""

from collections.abc import Callable

import torch


def beam_search(step_logprobs_fn: Callable[[list[list[int]]], torch.Tensor], bos: int, eos: int, beam_width: int,
                max_len: int) -> tuple[list[int], float]:
    """The best finished sequence (its generated tokens, without bos) and its total log-prob."""
    live = [([bos], 0.0)]  # (prefix, score): the beams still growing
    finished = []  # (sequence, score): every sequence that ended, kept to the end
    while live:
        logprobs = step_logprobs_fn([prefix for prefix, _ in live])  # (n, V), one call per step
        candidates = []
        for (prefix, score), row in zip(live, logprobs.tolist()):
            for token, lp in enumerate(row):
                seq = prefix + [token]
                done = token == eos or len(seq) - 1 == max_len  # generated tokens exclude bos
                (finished if done else candidates).append((seq, score + lp))
        candidates.sort(key=lambda c: c[1], reverse=True)  # best first
        live = candidates[:beam_width]
    best, score = max(finished, key=lambda f: f[1])
    return best[1:], score
