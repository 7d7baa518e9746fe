"""Per-token log-probs from the final hidden states and the output head, a chunk of rows at a time.

    z_i      = (h_i W^T) / tau                          logits of row i at temperature tau
    logp_i   = z_i[y_i] - logsumexp(z_i)                = log softmax(z_i)[y_i]
    H_i      = -sum_v p_v log p_v,  p = softmax(z_i)    the entropy (no gradient)

The [N, V] logits are never held at once: `chunk` rows at a time (default CHUNK_ELEMENTS // V). DPO's
sequence log-probs (objectives.preference.linear_sequence_logps) and RL's per-token log-probs
(alignlab.rl.rollout.completion_logps) both call `chunked_token_logps`.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from alignlab.objectives.rl import token_entropy

# Head logits per chunk: rows * vocab (128 MiB of fp32; 220 rows of a 151,936-token vocabulary).
CHUNK_ELEMENTS = 2**25


def _head_logps(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, temperature: float,
                entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = (h @ weight.t()).float()  # [rows, V]
    if temperature != 1.0:
        logits = logits / temperature
    logp = logits.gather(1, y[:, None]).squeeze(1) - logits.logsumexp(-1)
    return logp, token_entropy(logits.detach()) if entropy else None


def chunked_token_logps(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                        entropy: bool = False, chunk: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax((h W^T) / temperature)[targets] per row, in value and gradients, without the [N, V] logits.

    h [N, D] (the hidden states that predict the targets, already selected: no prompt or padding rows),
    weight [V, D] (the output head), targets [N]. Returns (logps [N] float32, entropies [N] float32 without
    gradient, or None unless `entropy`).

    With gradients on and more than one chunk, each chunk runs under activation checkpointing: the forward
    keeps no logits, and the backward recomputes one chunk's logits at a time to form
    d logp / dz = onehot(y) - softmax(z), for one extra head matmul. A single chunk keeps its logits for the
    backward instead: the backward starts with the head, while every activation is still held, so recomputing
    that one chunk there would lower no peak and only cost the matmul. (The weights of the rows' gradients are
    only known in the backward, so the logits cannot be dropped early as `linear_cross_entropy` does.)
    """
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.shape[0])
    save_memory = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad) and len(targets) > chunk
    logps, entropies = [], []
    for s in range(0, len(targets), chunk) or [0]:  # [0]: one empty chunk when there are no rows, to keep the graph
        args = (h[s:s + chunk], weight, targets[s:s + chunk], temperature, entropy)
        lp, ent = checkpoint(_head_logps, *args, use_reentrant=False) if save_memory else _head_logps(*args)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies) if entropy else None
