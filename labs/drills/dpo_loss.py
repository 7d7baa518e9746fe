"""The DPO loss from logits: answer log-probs under the policy and the reference, then -log sigmoid(beta * margin).

Write two functions.

sequence_logps(logits [B, T, V], labels [B, T]) -> [B]: each row's summed log-prob of its answer tokens.
    labels are the input token ids with -100 on the prompt and on the padding (Hugging Face's convention), so the
    logits at position t predict the token at position t + 1:
        logp[b] = sum over t = 0 .. T-2 with labels[b, t+1] != -100 of  log softmax(logits[b, t])[labels[b, t+1]]
    (0 for a row without answer tokens). The logits may be large (|z| up to ~100): the result must stay finite.

dpo_loss(policy_chosen_logits, policy_rejected_logits, ref_chosen_logits, ref_rejected_logits, chosen_labels,
         rejected_labels, beta=0.1) -> (loss, chosen_rewards, rejected_rewards)
    Each *_logits is [B, T, V], each *_labels [B, T] as above (chosen and rejected may have different T).
        c_w = log pi(y_w | x) - log pi_ref(y_w | x)       c_l the same for the rejected answer y_l
        loss = mean over the B pairs of  -log sigmoid(beta * (c_w - c_l))       (Rafailov et al. 2023, Eq. 7)
        chosen_rewards = beta * c_w,  rejected_rewards = beta * c_l              [B] each, detached (for logging)
    The loss must be differentiable with respect to the policy's logits; the reference is a constant.

The check compares values and gradients with alignlab's sequence_logps and dpo_loss on seeded random batches.

Target: 15 minutes.

Rules: no alignlab imports; torch and the standard library only. Grade it with `alignlab lab drill dpo_loss
--check` (it prints the time since you started); `alignlab lab drill dpo_loss --solution` shows a reference
solution.
"""

import torch


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (-100 where not an answer token) -> summed answer log-probs [B]."""
    raise NotImplementedError


def dpo_loss(policy_chosen_logits: torch.Tensor, policy_rejected_logits: torch.Tensor,
             ref_chosen_logits: torch.Tensor, ref_rejected_logits: torch.Tensor, chosen_labels: torch.Tensor,
             rejected_labels: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss scalar, chosen_rewards [B], rejected_rewards [B])."""
    raise NotImplementedError
