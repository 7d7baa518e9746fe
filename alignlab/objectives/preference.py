"""Preference objectives: the DPO family, SimPO, ORPO, KTO, SafeDPO and the Bradley-Terry reward-model loss.

Every loss here works on per-sequence log-probs, the sum over a completion's tokens of log pi(y_t | x, y_<t):

    log pi(y | x) = sum_{t : labels_t != ignore} log softmax(z_t)[labels_t]

which `sequence_logps` computes from logits (or `linear_sequence_logps` from the final hidden states and the
output head, without ever holding the [B, T, V] logits). Length-normalised objectives (IPO, SimPO, ORPO) also
take the number of completion tokens of each sequence.

Notation, as in the papers: y_w / y_l are the chosen (winning) and rejected (losing) completions of a pair,
pi the policy, pi_ref the frozen reference, beta the inverse temperature, sigma the logistic function.

    c_w = log pi(y_w|x) - log pi_ref(y_w|x)      c_l likewise      Delta = c_w - c_l

The implicit reward of DPO is beta * (log pi - log pi_ref); the functions return it detached, as trl logs it.
Every loss returns a PreferenceLoss, whatever the variant: the mean loss, the losses per pair (or per example,
for a caller that normalises over a larger batch, as the recipes do), the chosen and rejected rewards, and
the metrics only that loss has.

Each function states which trl function it matches; tests/test_objectives_preference.py checks the match
on random inputs (trl 1.16).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from alignlab.objectives.lm import IGNORE_INDEX, head_weight
from alignlab.objectives.logprobs import chunked_token_logps

# ----------------------------------------------------------------------------------------------------------------
# Sequence log-probs


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the labels and the number of labelled tokens, per sequence.

    logits [B, T, V], labels [B, T] aligned as in `lm_loss`: labels[:, t] is the target of logits[:, t] (the
    inputs shifted left by one), IGNORE_INDEX (-100) on prompt and padding positions.

    Returns (sum_logps [B] float32, n_tokens [B] int64). A row with no labels gives (0, 0).
    """
    B, T, V = logits.shape
    # cross-entropy is -log softmax(z)[y], and exactly 0 where the label is ignored
    token_logps = -F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                   reduction="none")
    return token_logps.view(B, T).sum(-1), (labels != IGNORE_INDEX).sum(-1)


def linear_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """sequence_logps(hidden @ weight.T, labels), in value and gradients, without the [B, T, V] logits.

    hidden [B, T, D] (final normed hidden states), weight [V, D] (the output head), labels [B, T] as above.

    Only labelled rows get logits, `chunk` rows at a time (default CHUNK_ELEMENTS // V), through
    `chunked_token_logps`: with more than one chunk and gradients on, each chunk runs under activation
    checkpointing, so peak memory is one chunk of logits instead of B * T * V, for one extra head matmul in the
    backward.
    """
    B, T = labels.shape
    h, y = hidden.reshape(B * T, -1), labels.reshape(-1)
    rows = (y != IGNORE_INDEX).nonzero().squeeze(1)  # prompts and padding need no logits
    h, y, seq = h[rows], y[rows], rows // T
    token_logps, _ = chunked_token_logps(h, weight, y, chunk=chunk)
    sums = token_logps.new_zeros(B).index_add(0, seq, token_logps)
    return sums, torch.bincount(seq, minlength=B)


def row_logps(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs, completion lengths) of every row."""
    hidden = model(input_ids, head=False)
    return linear_sequence_logps(hidden, head_weight(model), labels)


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen logps, rejected logps, chosen lengths, rejected lengths) of a [chosen; rejected] batch
    (of a KTO batch: [completion; KL])."""
    logps, n = row_logps(model, batch["input_ids"], batch["labels"])
    b = logps.shape[0] // 2
    return logps[:b], logps[b:], n[:b], n[b:]



# ----------------------------------------------------------------------------------------------------------------
# One output for every loss


class PreferenceLoss(NamedTuple):
    """What every loss here returns, whatever the variant (as torchtune's rlhf/loss/dpo.py does).

    loss              scalar: the mean of `losses` over the pairs (KTO: examples) that count
    losses            [B] per pair (KTO: per example, in batch order), for a caller that normalises itself
    chosen_rewards    [B] the chosen answer's implicit reward, detached (trl's rewards/chosen); KTO: [n_D], its
                      desirable examples'; a reward model: its own rewards
    rejected_rewards  the same of the rejected answer; KTO: [n_U], its undesirable examples'
    metrics           what only this loss has, detached: SafeDPO `kept` and `swapped` (bool [B]), ORPO `log_odds`
                      [B], KTO `kl` (the reference point z); empty for the others
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None
    rejected_rewards: torch.Tensor | None
    metrics: dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# DPO and its pairwise variants


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None) -> PreferenceLoss:
    """DPO-family losses from summed log-probs, per pair.

    With c_w, c_l the policy/reference log-ratios of the chosen and rejected completions and Delta = c_w - c_l:

      sigmoid  DPO (Rafailov et al. 2023, arXiv:2305.18290):   -log sigma(beta Delta)
               With label_smoothing eps > 0 this is conservative DPO (cDPO, Mitchell 2023):
               -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta). trl <= 0.28 did this; trl 1.x
               ignores label_smoothing for "sigmoid" (identical at eps = 0).
      hinge    SLiC (Zhao et al. 2023, arXiv:2305.10425):     relu(1 - beta Delta)
      ipo      IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17), beta playing tau:
               (Delta_avg - 1 / (2 beta))^2,  Delta_avg = c_w / |y_w| - c_l / |y_l|
               The log-ratios are length-averaged as in trl (confirmed with the IPO authors, says trl), so
               chosen_len and rejected_len (completion token counts, clamped >= 1) are required.
      robust   robust DPO (Chowdhury et al. 2024, arXiv:2403.00409), unbiased under a label-flip rate eps:
               [-(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta)] / (1 - 2 eps),  0 <= eps < 1/2

    Rewards: beta * c_w and beta * c_l (trl's rewards/chosen|rejected); no metrics of its own.
    Matches the per-sequence loss of trl's DPOTrainer._compute_loss (f_divergence_type="reverse_kl").
    """
    chosen_logratios = policy_chosen - ref_chosen  # c_w
    rejected_logratios = policy_rejected - ref_rejected  # c_l
    logits = beta * (chosen_logratios - rejected_logratios)  # beta * Delta
    eps = label_smoothing
    if eps and loss_type in ("hinge", "ipo"):
        raise ValueError(f"label_smoothing has no meaning for loss_type={loss_type!r}")

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - logits)
    elif loss_type == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("loss_type='ipo' length-averages the log-ratios: pass chosen_len and rejected_len")
        delta_avg = chosen_logratios / chosen_len.clamp(min=1) - rejected_logratios / rejected_len.clamp(min=1)
        losses = (delta_avg - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected sigmoid, hinge, ipo or robust")

    return PreferenceLoss(losses.mean(), losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(),
                          {})


def safedpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                 ref_rejected: torch.Tensor, chosen_unsafe: torch.Tensor | None = None,
                 rejected_unsafe: torch.Tensor | None = None, beta: float = 0.1, delta: float = 10.0,
                 ) -> PreferenceLoss:
    """SafeDPO (Kim et al. 2025, arXiv:2505.20065): DPO on safety-reordered pairs with a safety margin.

    The data are helpfulness pairs (y_w preferred to y_l) with safety indicators h_w, h_l (1 = unsafe). The
    safety-constrained objective (reward r if safe, -inf if unsafe, KL to pi_ref) has the closed-form optimum
    pi* ~ pi_ref exp(r_c / beta) with zero mass on unsafe responses; the paper trains it as DPO on T(D):

      T:  h_w = 0           keep (y~_w, y~_l) = (y_w, y_l)
          h_w = 1, h_l = 0  swap (y~_w, y~_l) = (y_l, y_w): the safe response is preferred
          h_w = 1, h_l = 1  drop the pair: no safe response to prefer

      L(theta; Delta) = -E_T(D) log sigma( beta log pi(y~_w|x)/pi_ref(y~_w|x)
                                            - beta log pi(y~_l|x)/pi_ref(y~_l|x) - (h~_l - h~_w) Delta )

    After T the winner is always safe, so h~_l - h~_w is 1 exactly on safe-vs-unsafe pairs: there the policy
    must beat the unsafe response by the extra margin Delta >= 0 (the paper's default 10 with beta = 0.1; it
    leaves the optimum unchanged and speeds moving away from unsafe responses). Without safety labels
    (None) every response counts as safe and this is DPO.

    chosen_unsafe, rejected_unsafe: bool [B] (or 0/1). Everything returned is of T(D), the pairs after the swap:
    losses [B] are 0 on dropped pairs and `loss` is their mean over the kept ones; the rewards are beta times the
    log-ratios of y~_w and y~_l; metrics: `kept` and `swapped`, bool [B] (a caller that adds a term on the
    winner, such as RPO's NLL, takes y~_w = the rejected answer where `swapped`).
    """
    safe = torch.zeros_like(policy_chosen, dtype=torch.bool)
    h_w = safe if chosen_unsafe is None else chosen_unsafe.bool()
    h_l = safe if rejected_unsafe is None else rejected_unsafe.bool()

    # T: swap where only the chosen is unsafe, drop where both are
    swap = h_w & ~h_l
    kept = ~(h_w & h_l)
    win_logratios = torch.where(swap, policy_rejected - ref_rejected, policy_chosen - ref_chosen)
    lose_logratios = torch.where(swap, policy_chosen - ref_chosen, policy_rejected - ref_rejected)
    h_w_new, h_l_new = torch.where(swap, h_l, h_w), torch.where(swap, h_w, h_l)

    margin = (h_l_new.to(win_logratios.dtype) - h_w_new.to(win_logratios.dtype)) * delta
    losses = -F.logsigmoid(beta * (win_logratios - lose_logratios) - margin)
    losses = torch.where(kept, losses, torch.zeros_like(losses))
    return PreferenceLoss(losses.sum() / kept.sum().clamp(min=1), losses, beta * win_logratios.detach(),
                          beta * lose_logratios.detach(), {"kept": kept, "swapped": swap})


# ----------------------------------------------------------------------------------------------------------------
# Reference-free: SimPO and ORPO


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_len: torch.Tensor,
               rejected_len: torch.Tensor, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0,
               ) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, arXiv:2405.14734): reference-free, length-normalised, with a target margin.

        L = -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma )

    (with label_smoothing eps: -(1 - eps) log sigma(z) - eps log sigma(-z) of the same z). The implicit reward
    is the average log-prob times beta, so no reference model is needed; gamma is the margin in reward units.

    Matches trl's CPOTrainer.cpo_loss with loss_type="simpo" (trl.experimental.cpo), which writes the argument
    as beta * (Delta_avg - simpo_gamma / beta). trl's defaults are beta = 0.1, simpo_gamma = 0.5; the paper uses
    beta = 2 to 2.5 (up to 10) with gamma / beta = 0.3 to 0.8, and this function defaults to beta = 2,
    gamma = 0.5. Rewards: beta * average log-prob (what trl logs for SimPO); no metrics of its own.
    """
    chosen_avg = policy_chosen / chosen_len.clamp(min=1)
    rejected_avg = policy_rejected / rejected_len.clamp(min=1)
    logits = beta * (chosen_avg - rejected_avg) - gamma
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return PreferenceLoss(losses.mean(), losses, beta * chosen_avg.detach(), beta * rejected_avg.detach(), {})


LN2 = 0.6931471805599453


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012): log1p(-exp(x)) below -ln 2,
    log(-expm1(x)) above. Each branch gets its input clamped to its own side of -ln 2, so the branch that
    torch.where leaves out stays finite and its gradient (0 times a finite number) adds no NaN."""
    far = torch.log1p(-torch.exp(x.clamp(max=-LN2)))
    near = torch.log(-torch.expm1(x.clamp(min=-LN2)))
    return torch.where(x < -LN2, far, near)


def orpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_len: torch.Tensor,
              rejected_len: torch.Tensor, beta: float = 0.1, nll: torch.Tensor | None = None) -> PreferenceLoss:
    """ORPO (Hong et al. 2024, arXiv:2403.07691): SFT plus an odds-ratio preference term, no reference model.

    With P(y|x) = exp(log pi(y|x) / |y|) (the length-averaged likelihood) and odds(y|x) = P / (1 - P):

        log_odds = log odds(y_w|x) - log odds(y_l|x)
                 = (l_w - l_l) - (log(1 - e^l_w) - log(1 - e^l_l)),     l = log pi(y|x) / |y|   (fp32)
        L_OR     = -log sigma(log_odds)
        L        = L_SFT + lambda L_OR,                                   lambda = beta

      losses   = nll - beta * log sigma(log_odds), per pair. nll defaults to -l_w, the chosen completion's
                 per-token NLL. trl (ORPOTrainer.get_batch_loss_metrics) instead uses one scalar: the mean
                 cross-entropy over all prompt and chosen tokens of the batch; pass that as `nll` and
                 `loss` (the mean of losses) is trl's loss exactly.
      rewards  beta * l_w, beta * l_l.
      metrics  `log_odds` [B], the log odds ratio (trl logs its mean as log_odds_chosen, and mean
               log sigma(log_odds) as log_odds_ratio).
    trl's ORPOTrainer.odds_ratio_loss returns the term with the other sign, beta * log sigma(log_odds).
    """
    chosen_avg = (policy_chosen / chosen_len.clamp(min=1)).float()
    rejected_avg = (policy_rejected / rejected_len.clamp(min=1)).float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    if nll is None:
        nll = -chosen_avg
    losses = nll - beta * F.logsigmoid(log_odds)
    return PreferenceLoss(losses.mean(), losses, beta * chosen_avg.detach(), beta * rejected_avg.detach(),
                          {"log_odds": log_odds.detach()})


# ----------------------------------------------------------------------------------------------------------------
# Unpaired: KTO


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))), detached.

    y' are mismatched completions (trl pairs each prompt with the completion of the next example in the
    batch). Under data parallelism average the mean over ranks before clamping, as trl does.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl_estimate: torch.Tensor | float, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7): prospect-theoretic loss on unpaired examples.

    With r = log pi(y|x) - log pi_ref(y|x) and the reference point z = max(0, kl_estimate), detached:

        desirable    lambda_D (1 - sigma(beta (r - z)))
        undesirable  lambda_U (1 - sigma(beta (z - r)))

    desirable: bool [B]. losses [B] are in batch order; the rewards beta * r of the desirable examples are
    chosen_rewards, those of the undesirable ones rejected_rewards (as trl's KTOTrainer.kto_loss returns them);
    metrics: `kl`, z. Matches trl's KTOTrainer._compute_loss (loss_type="kto"), whose loss is the mean of these
    (trl orders them desirable first). trl's docs ask that lambda_D n_D / (lambda_U n_U) lie in [1, 4/3].
    """
    logratios = policy_logps - ref_logps
    z = torch.as_tensor(kl_estimate, dtype=logratios.dtype, device=logratios.device).detach().clamp(min=0)
    desirable = desirable.bool()
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    rewards = beta * logratios.detach()
    return PreferenceLoss(losses.mean(), losses, rewards[desirable], rewards[~desirable], {"kl": z})


# ----------------------------------------------------------------------------------------------------------------
# Reward models and metrics


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None, center_coefficient: float | None = None) -> PreferenceLoss:
    """Reward-model loss under the Bradley-Terry model P(y_w > y_l) = sigma(r_w - r_l) (Ouyang et al. 2022).

        L = -mean log sigma(r_w - r_l - m)  +  c * mean((r_w + r_l)^2)

    m: an optional per-pair margin (Llama 2's graded preferences); c: center_coefficient, pulling rewards
    towards zero mean (Eisenstein et al. 2023). `loss` is trl's RewardTrainer.compute_loss; losses are its
    per-pair terms, -log sigma(r_w - r_l - m) + c (r_w + r_l)^2; the rewards are the inputs, detached.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coefficient is not None:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return PreferenceLoss(losses.mean(), losses, chosen_rewards.detach(), rejected_rewards.detach(), {})


@torch.no_grad()
def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, policy_chosen: torch.Tensor,
                       policy_rejected: torch.Tensor) -> dict[str, float]:
    """Batch means under trl's names: rewards/{chosen,rejected,accuracies,margins}, logps/{chosen,rejected}.

    accuracies is the fraction of pairs with chosen_reward > rejected_reward (ties count as wrong).
    """
    mean = lambda x: x.double().mean().item()  # noqa: E731
    return {
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean(chosen_rewards > rejected_rewards),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(policy_chosen),
        "logps/rejected": mean(policy_rejected),
    }


@torch.no_grad()
def kto_metrics(out: PreferenceLoss, logps: torch.Tensor, desirable: torch.Tensor) -> dict:
    """trl's KTO metrics: rewards/ and logps/ of chosen (desirable) and rejected (undesirable) examples, each
    when the batch has some, rewards/margins when it has both, and kl (z)."""
    metrics = {"kl": float(out.metrics["kl"])}
    for side, rewards, mask in (("chosen", out.chosen_rewards, desirable), ("rejected", out.rejected_rewards,
                                                                             ~desirable)):
        if mask.any():
            metrics[f"rewards/{side}"] = rewards.double().mean().item()
            metrics[f"logps/{side}"] = logps[mask].double().mean().item()
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
