"""A reference solution of the dpo_loss drill: DPO (Rafailov et al. 2023, arXiv:2305.18290) from logits."""

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (-100 where not an answer token) -> summed answer log-probs [B]."""
    logits, targets = logits[:, :-1], labels[:, 1:]  # logits at t predict the token at t + 1
    answer = targets != -100  # (B, T-1)
    logp = logits.float().log_softmax(dim=-1)  # (B, T-1, V); log_softmax subtracts the max: finite for large z
    token_logp = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T-1); -100 read as token 0 ...
    return torch.where(answer, token_logp, 0.0).sum(dim=-1)  # ... and zeroed here


def dpo_loss(policy_chosen_logits: torch.Tensor, policy_rejected_logits: torch.Tensor,
             ref_chosen_logits: torch.Tensor, ref_rejected_logits: torch.Tensor, chosen_labels: torch.Tensor,
             rejected_labels: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss scalar, chosen_rewards [B], rejected_rewards [B])."""
    with torch.no_grad():  # the reference is frozen
        ref_chosen = sequence_logps(ref_chosen_logits, chosen_labels)
        ref_rejected = sequence_logps(ref_rejected_logits, rejected_labels)
    chosen = sequence_logps(policy_chosen_logits, chosen_labels) - ref_chosen  # c_w (B,)
    rejected = sequence_logps(policy_rejected_logits, rejected_labels) - ref_rejected  # c_l (B,)
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()  # logsigmoid, not log(sigmoid(.)): finite for any margin
    return loss, (beta * chosen).detach(), (beta * rejected).detach()
