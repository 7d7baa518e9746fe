"""Beam search: the most likely sequence of a step-by-step model, keeping only the beam_width best prefixes.

Write `beam_search(step_logprobs_fn, bos, eos, beam_width, max_len) -> (tokens, logprob)`.

The model. step_logprobs_fn(prefixes) takes a list of n prefixes (each a list of token ids starting with bos) and
returns a tensor [n, V] of next-token log-probs: row i is log p(. | prefixes[i]).

The sequences. A sequence is bos followed by generated tokens. It is finished when its last token is eos, or when
it has max_len generated tokens. Its score is the sum of the log-probs of its generated tokens (no length penalty).

The search. Start with the single live prefix [bos] (score 0). At each step:
    1. call step_logprobs_fn once with all the live prefixes (never with a finished sequence);
    2. extend every live prefix by every token v of the vocabulary, score + log p(v | prefix);
    3. the extensions that are finished join the finished list, and stay there to the end (finished beams are
       kept, even when better live prefixes come along);
    4. the beam_width best of the other extensions (by score) are the new live prefixes.
Stop when no prefix is live. (You may stop earlier once the best finished score is at least the best live score:
a score can only go down as a prefix grows.)
Return the best finished sequence: its generated tokens as a list of ints (without bos, with the eos when it ended
with one) and its score as a float.

With beam_width >= V ** max_len nothing is ever pruned and beam search is exact: the check compares it with an
exhaustive search over every sequence on small random models (V = 4, max_len up to 4), checks a case where greedy
decoding and a beam of 2 disagree, and watches what step_logprobs_fn is called with.

Target: 25 minutes.

Rules: no alignlab imports; torch and the standard library only. Grade it with `alignlab lab drill beam_search
--check` (it prints the time since you started); `alignlab lab drill beam_search --solution` shows a reference
solution.
"""

from collections.abc import Callable

import torch


def beam_search(step_logprobs_fn: Callable[[list[list[int]]], torch.Tensor], bos: int, eos: int, beam_width: int,
                max_len: int) -> tuple[list[int], float]:
    """The best finished sequence (its generated tokens, without bos) and its total log-prob."""
    raise NotImplementedError
