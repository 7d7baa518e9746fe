"""RL objectives on sampled completions: GRPO and its loss types, RLOO, REINFORCE++, and PPO with a value head.

A prompt x is answered G times (a group). Completion o_i has |o_i| tokens; M_{i,t} in {0, 1} is its loss mask
(1 on completion tokens, 0 on padding). Per token, with pi_old the policy that sampled the batch:

    rho_{i,t} = exp(log pi_theta(o_{i,t} | x, o_{i,<t}) - log pi_old(o_{i,t} | x, o_{i,<t}))

Each generated batch is optimised mu times (trl's num_iterations). With mu = 1 (the default) pi_old = pi_theta:
pass old_logps=None and logps.detach() is used, so rho = 1 in value while d rho = d log pi_theta, and the loss
has the gradient of the policy gradient -A * log pi. With mu > 1 the trainer keeps the log-probs of the batch
from before its first update and passes them as old_logps on every pass.

Layouts: rewards are [N] with the G completions of a prompt next to each other (trl's repeat_interleave order),
N = B * G, or [B, G]. Per-token tensors are [N, T], right-padded.

GRPO and RLOO follow trl's GRPOTrainer / RLOOTrainer (trl 1.16); tests/test_objectives_rl.py calls their
_compute_loss on the same tensors. trl 1.16 has no PPO trainer: the PPO pieces follow the papers and trl's
earlier PPOTrainer (masked_whiten, the clipped value loss), and are tested against hand-computed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Advantages from sequence rewards


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (trl's nanstd); NaN with fewer than two values."""
    mean = x.nanmean() if dim is None else x.nanmean(dim, keepdim=True)
    count = (~x.isnan()).sum() if dim is None else (~x.isnan()).sum(dim, keepdim=True)
    sq = ((x - mean) ** 2).nansum() if dim is None else ((x - mean) ** 2).nansum(dim, keepdim=True)
    return (sq / (count - 1)).sqrt().where(count > 1, torch.nan)


def _grouped(rewards: torch.Tensor, group_size: int | None) -> torch.Tensor:
    if rewards.dim() == 2:
        return rewards
    if group_size is None or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be cut into groups of group_size={group_size}")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int | None = None, scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300), as trl computes it.

        A_i = (r_i - mean_group(r)) / (std + eps)

      scale="group"  std of the prompt's group (the paper)
      scale="batch"  std of all rewards of the batch, the mean still per group ("Lite PPO", Liu et al. 2025,
                     arXiv:2508.08221)
      scale="none"   no division (Dr. GRPO, arXiv:2503.20783: dividing by the group's std up-weights prompts
                     whose answers barely differ, i.e. too easy or too hard ones)

    std is the unbiased (Bessel) standard deviation and eps = 1e-4, as in trl. rewards: [N] grouped by
    `group_size`, or [B, G]; returns the same shape. The same A_i applies to every token of o_i. A NaN reward
    (a completion no reward function could score) leaves the mean and std and gets advantage 0, as in trl.
    """
    r = _grouped(rewards if rewards.is_floating_point() else rewards.float(), group_size)  # 0/1 ints too
    advantages = r - r.nanmean(1, keepdim=True)
    if scale == "group":
        advantages = advantages / (_nanstd(r, 1) + eps)
    elif scale == "batch":
        advantages = advantages / (_nanstd(r) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; expected group, batch or none")
    return advantages.nan_to_num(0.0).view_as(rewards)


def zero_variance_groups(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """bool [B]: groups whose (non-NaN) rewards are all equal, so every advantage is 0 and they teach nothing.

    The mean is trl's frac_reward_zero_std (trl tests std close to 0; this tests exact equality).
    """
    r = _grouped(rewards, group_size)
    hi = r.where(~r.isnan(), -torch.inf).amax(1)
    lo = r.where(~r.isnan(), torch.inf).amin(1)
    return ~(hi > lo)


def dynamic_sampling_keep(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476): keep only groups with non-zero variance.

    A group of all-correct or all-wrong answers has A = 0 everywhere: it adds no gradient, only dilutes the
    token normaliser. DAPO drops such groups and samples more prompts until the batch is full. Returns a bool
    mask over completions, the shape of `rewards` ([N] or [B, G]).
    """
    r = _grouped(rewards, group_size)
    keep = ~zero_variance_groups(r)
    return keep[:, None].expand_as(r).reshape(rewards.shape)


def rloo_advantages(rewards: torch.Tensor, group_size: int | None = None, normalize: bool = False,
                    eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740), as trl's RLOOTrainer.

        A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean_group(r))

    Each completion's baseline is the mean reward of the other completions of its prompt, so it does not
    depend on r_i and the estimator stays unbiased. normalize=True (trl's normalize_advantages) then
    standardises over the batch: (A - mean(A)) / (std(A) + eps), unbiased std. NaN rewards leave the baseline
    (it averages the other scorable completions) and get advantage 0, as in trl.
    """
    r = _grouped(rewards, group_size)
    scored = (~r.isnan()).sum(1, keepdim=True)
    baseline = (r.nansum(1, keepdim=True) - r) / (scored - 1)
    advantages = r - baseline
    if normalize:
        advantages = (advantages - advantages.nanmean()) / (_nanstd(advantages) + eps)
    return advantages.nan_to_num(0.0).view_as(rewards)


# ----------------------------------------------------------------------------------------------------------------
# KL and entropy


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref) on tokens sampled from pi_theta (trl's per_token_kl).

        k3 = exp(ref - logp) - (ref - logp) - 1 >= 0

    Unbiased (E_pi[exp(ref - logp)] = 1, so E_pi[k3] = E_pi[logp - ref] = KL) with lower variance than
    k1 = logp - ref, and never negative since e^x >= 1 + x (Schulman 2020, "Approximating KL Divergence").
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every position, in nats: H = -sum_v p_v log p_v (float32).

    logits [..., V] -> [...]. For monitors (trl's entropy metric); it is not part of any loss here.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# GRPO


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """trl's mask_truncated_completions: zero the loss mask of completions that ended without EOS.

    truncated: bool [N], True where the completion hit max_completion_length. Its reward judges an unfinished
    answer, so DAPO (overlong filtering) and trl leave it out of the loss.
    """
    return mask * (~truncated.bool())[:, None].to(mask.dtype)


@dataclass(frozen=True)
class ClipConfig:
    """The clipped surrogate's settings (GRPO, RLOO): see `grpo_loss` and `rloo_loss`."""

    loss_type: str = "dapo"  # dapo | grpo | bnpo | dr_grpo (grpo_loss only)
    epsilon_low: float = 0.2
    epsilon_high: float | None = None  # None: epsilon_low
    beta: float = 0.0  # k3 KL weight (grpo_loss only)
    delta: float | None = None  # two-sided clipping cap; None: off
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    max_completion_length: int | None = None  # dr_grpo's constant L


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, config: ClipConfig = ClipConfig(),
              num_tokens: int | torch.Tensor | None = None, grad_accum_steps: int = 1,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped surrogate with an optional k3 KL penalty, and trl's four normalisations; returns (loss, metrics).

    logps, old_logps, ref_logps: per-token log-probs [N, T] of the sampled tokens under pi_theta, pi_old (None:
    mu = 1, see the module docstring) and pi_ref (needed when beta != 0). advantages [N] (one per completion)
    or [N, T]. mask [N, T]. config: ClipConfig (loss_type, epsilon_low/high, beta, delta,
    importance_sampling_level, max_completion_length). Per token (Shao et al. 2024, arXiv:2402.03300):

        l_{i,t} = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta k3_{i,t}

      eps_high    clip-higher (DAPO, Yu et al. 2025, arXiv:2503.14476): eps_high > eps_low (DAPO 0.28) lets
                  unlikely tokens with A > 0 grow further, against entropy collapse. None: eps_high = eps_low.
      delta       two-sided clipping (INTELLECT-2, arXiv:2505.07291): rho is first capped at delta, so a token
                  with A < 0 and a huge ratio cannot give an unbounded loss. None: off.
      importance_sampling_level="sequence"  GSPO (Zheng et al. 2025, arXiv:2507.18071): one ratio per sequence,
                  rho_i = exp(mean_t log-ratio), clipped as above (pair it with small eps, e.g. 3e-4 / 4e-4).
      beta, k3    see `kl_k3`; trl's default beta is 0 (no reference model needed).

    Normalisation, with every sum over unmasked tokens (M_{i,t} = 1):

      grpo     1/N sum_i (1/|o_i|) sum_t l_{i,t}     token mean per sequence, then mean over sequences. Each
               sequence weighs the same, so a token of a short completion weighs more: a length bias (Dr. GRPO)
      bnpo     sum_{i,t} l_{i,t} / sum_i |o_i|        token mean over this micro-batch
      dr_grpo  sum_{i,t} l_{i,t} / (N * L)            a constant, L = max_completion_length (Liu et al. 2025,
               arXiv:2503.20783): no length bias and no dependence on the batch
      dapo     sum_{i,t} l_{i,t} / num_tokens         token mean over the whole accumulated batch (DAPO): pass
               num_tokens = the unmasked tokens of all micro-batches of the optimizer step (per process, as
               trl's num_items_in_batch / num_processes). Default: this call's tokens, then dapo == bnpo.

    bnpo vs dapo: with gradient accumulation bnpo averages the micro-batches' token means (a token in a short
    micro-batch counts more); dapo divides every micro-batch by the same count, so the summed gradients are one
    token mean over the step (the `lm_loss` argument). Like trl, grpo, bnpo and dr_grpo are divided by
    grad_accum_steps, dapo is not (its num_tokens already spans the step).

    metrics (floats, trl's names; means over unmasked tokens): clip_ratio/low_mean (rho < 1 - eps_low with
    A < 0: clipped from below), clip_ratio/high_mean (rho > 1 + eps_high with A > 0), clip_ratio/region_mean
    (either), clip_ratio/low_min and clip_ratio/high_max (min / max over sequences of the per-sequence fraction),
    and kl (mean k3) when ref_logps is given.
    """
    loss_type, epsilon_low, beta, delta = config.loss_type, config.epsilon_low, config.beta, config.delta
    epsilon_high = epsilon_low if config.epsilon_high is None else config.epsilon_high
    importance_sampling_level, max_completion_length = config.importance_sampling_level, config.max_completion_length
    mask = mask.to(logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    old_logps = logps.detach() if old_logps is None else old_logps

    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":
        log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # [N, 1]
    elif importance_sampling_level != "token":
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; expected token or sequence")
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    per_token = -torch.min(ratio * advantages, clipped * advantages)

    kl = None
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps)
    if beta != 0.0:
        if kl is None:
            raise ValueError("beta != 0 needs ref_logps")
        per_token = per_token + beta * kl

    total = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() / grad_accum_steps
    elif loss_type == "bnpo":
        loss = total / mask.sum().clamp(min=1) / grad_accum_steps
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' divides by N * max_completion_length: pass max_completion_length")
        loss = total / (logps.shape[0] * max_completion_length) / grad_accum_steps
    elif loss_type == "dapo":
        loss = total / (mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)).clamp(min=1)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected grpo, bnpo, dr_grpo or dapo")

    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (advantages > 0)).to(mask.dtype)
        metrics = {"clip_ratio/low_mean": _token_mean(low, mask), "clip_ratio/high_mean": _token_mean(high, mask),
                   "clip_ratio/region_mean": _token_mean(low + high, mask),
                   "clip_ratio/low_min": _seq_means(low, mask).min().item(),
                   "clip_ratio/high_max": _seq_means(high, mask).max().item()}
        if kl is not None:
            metrics["kl"] = _token_mean(kl, mask)
    return loss, metrics


def _token_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over unmasked tokens; a [N, 1] x (one value per sequence) is averaged over sequences."""
    if x.shape[1] == 1:
        return x.mean().item()
    return ((x * mask).sum() / mask.sum().clamp(min=1)).item()


def _seq_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence means over unmasked tokens, of sequences that have any (trl's nanmin / nanmax); [nan] if none."""
    if x.shape[1] == 1:
        return x[:, 0]
    n = mask.sum(-1)
    means = ((x * mask).sum(-1) / n)[n > 0]
    return means if means.numel() else x.new_full((1,), torch.nan)


# ----------------------------------------------------------------------------------------------------------------
# RLOO


def kl_penalized_rewards(rewards: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """Fold a KL penalty into sequence rewards, as trl's RLOOTrainer does (and REINFORCE++):

        r_i <- r_i - beta sum_t M_{i,t} (logp_{i,t} - ref_{i,t})          (k1, summed over the completion)

    logps are the sampling policy's (detached), so the KL steers through the advantage, not its own gradient.
    Unlike k3, a single term can be negative.
    """
    return rewards - beta * ((logps - ref_logps) * mask).sum(-1)


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              config: ClipConfig = ClipConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO's sequence-level clipped surrogate (trl's RLOOTrainer); returns (loss, metrics).

        rho_i = exp(sum_t M (logp - old_logp))                  one ratio per completion
        L     = -1/N sum_i min(rho_i A_i, clip(rho_i, 1 - eps_low, 1 + eps_high) A_i)

    logps, old_logps [N, T] per token (old None: mu = 1, rho = 1), advantages [N] from `rloo_advantages`; config's
    epsilon_low and epsilon_high. metrics: clip_ratio/{low_mean, high_mean, region_mean} (fractions of
    completions), as in `grpo_loss`.
    """
    epsilon_low = config.epsilon_low
    epsilon_high = epsilon_low if config.epsilon_high is None else config.epsilon_high
    seq_logps = (logps * mask).sum(-1)
    old_seq_logps = seq_logps.detach() if old_logps is None else (old_logps * mask).sum(-1)
    ratio = torch.exp(seq_logps - old_seq_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages).mean()
    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        metrics = {"clip_ratio/low_mean": low.float().mean().item(), "clip_ratio/high_mean": high.float().mean().item(),
                   "clip_ratio/region_mean": (low | high).float().mean().item()}
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------------
# Token rewards, GAE, whitening


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards of RLHF-PPO (Ouyang et al. 2022; trl's PPOTrainer) and REINFORCE++: [N, T].

        r_{i,t} = -kl_coef kl_{i,t} + score_i [t = last token of o_i]        (0 where M = 0)

    kl: per-token KL estimate against the reference, k1 = logp - ref (trl's default) or `kl_k3`. A completion
    with no unmasked token gets no reward.
    """
    T = mask.shape[1]
    last = T - 1 - mask.flip(-1).float().argmax(-1)  # index of each row's last unmasked token
    rewards = F.one_hot(last, T).to(scores.dtype) * (scores * mask.any(-1))[:, None]
    if kl is not None:
        rewards = rewards - kl_coef * kl * mask
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438); returns (advantages, returns).

        delta_t = r_t + gamma V_{t+1} - V_t                   V = 0 after the last token (the episode ends)
        A_t     = delta_t + gamma lam A_{t+1}                 computed right to left
        R_t     = A_t + V_t                                   the value head's regression target

    lam = 1 gives the discounted return minus V (unbiased, high variance), lam = 0 the one-step TD error.
    rewards, values [N, T] (from `token_rewards` and the value head), mask [N, T] right-padded. trl's PPO
    defaults are gamma = 1, lam = 0.95. Everything is 0 where M = 0.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    next_value = next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """trl's masked_whiten: standardise over the unmasked entries, (x - mean) / sqrt(var + eps).

    var is unbiased (Bessel). shift_mean=False adds the mean back (only the scale changes), as trl does for
    whiten_rewards. Returns 0 where M = 0.
    """
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int | None = None,
                            kl: torch.Tensor | None = None, kl_coef: float = 0.0, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): critic-free, with the advantage normalised over the whole batch.

        r_i     <- r_i - mean_group(r)                        only with group_size: REINFORCE++-baseline
        r_{i,t}  = -kl_coef kl_{i,t} + r_i [t = |o_i|]        `token_rewards`
        G_{i,t}  = sum_{s >= t} gamma^{s-t} r_{i,s}           return to go (`gae` with V = 0, lam = 1)
        A_{i,t}  = (G_{i,t} - mean(G)) / sqrt(var(G) + 1e-8)  `whiten` over all unmasked tokens of the batch

    The global normalisation (instead of GRPO's per-group std) is the paper's point: a prompt whose answers
    barely differ is not blown up. Without group_size this is the paper's REINFORCE++ (k1 KL in the reward:
    kl = logp_old - logp_ref). With group_size it is REINFORCE++-baseline for G samples per prompt, where the
    paper leaves kl out of the reward (kl=None) and puts a KL term in the loss instead (the paper's k2; here
    `grpo_loss`'s beta * k3). The mean and std are token-weighted: a long completion counts once per token.
    Returns [N, T] advantages, for `grpo_loss` or `ppo_policy_loss`.
    """
    if group_size is not None:
        grouped = _grouped(rewards, group_size)
        rewards = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    r = token_rewards(rewards, mask, kl, kl_coef)
    _, returns = gae(r, torch.zeros_like(r), mask, gamma, lam=1.0)
    return whiten(returns, mask)


# ----------------------------------------------------------------------------------------------------------------
# PPO


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_range: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347), token mean; returns (loss, metrics).

        L = sum_{i,t} M max(-A rho, -A clip(rho, 1 - c, 1 + c)) / sum M

    advantages [N, T] (whitened GAE advantages). This is `grpo_loss` with loss_type="bnpo", eps_low =
    eps_high = c, beta = 0. metrics: clipfrac (fraction of tokens where the clipped term is the larger loss)
    and approxkl = mean 0.5 (log rho)^2, over unmasked tokens.
    """
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    losses = -advantages * ratio
    clipped_losses = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = (torch.max(losses, clipped_losses) * mask).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        metrics = {"clipfrac": _token_mean((clipped_losses > losses).to(mask.dtype), mask),
                   "approxkl": _token_mean(0.5 * log_ratio**2, mask)}
    return loss, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range_value: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss (trl's PPOTrainer, after OpenAI's baselines); returns (loss, metrics).

        V_clip = clip(V, V_old - c, V_old + c)
        L_V    = 0.5 sum M max((V - R)^2, (V_clip - R)^2) / sum M

    The value head cannot move more than c from the values it had when the batch was sampled: past that the
    clipped term is the larger one and its gradient is 0. R are the returns from `gae`, computed with V_old.
    trl's PPO adds vf_coef (0.1) * L_V to the policy loss. metrics: vf_clipfrac, the fraction of tokens where
    the clipped term is larger.
    """
    mask = mask.to(values.dtype)
    clipped = torch.clamp(values, old_values - clip_range_value, old_values + clip_range_value)
    losses, clipped_losses = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.max(losses, clipped_losses) * mask).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        metrics = {"vf_clipfrac": _token_mean((clipped_losses > losses).to(mask.dtype), mask)}
    return loss, metrics
