"""Loss functions as pure functions of tensors (torch only), each with its formula in the docstring."""

from alignlab.objectives.distill import distill_loss, forward_kl, reverse_kl, token_divergence
from alignlab.objectives.lm import IGNORE_INDEX, head_weight, linear_cross_entropy, lm_loss, lm_step
from alignlab.objectives.logprobs import chunked_token_logps
from alignlab.objectives.preference import (
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    linear_sequence_logps,
    orpo_loss,
    preference_metrics,
    safedpo_loss,
    sequence_logps,
    simpo_loss,
)
from alignlab.objectives.rl import (
    ClipConfig,
    dynamic_sampling_keep,
    gae,
    group_advantages,
    grpo_loss,
    kl_k3,
    kl_penalized_rewards,
    mask_truncated,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    rloo_loss,
    token_entropy,
    token_rewards,
    whiten,
    zero_variance_groups,
)
from alignlab.objectives.verifier import verifier_loss, verifier_metrics

__all__ = ["IGNORE_INDEX", "head_weight", "linear_cross_entropy", "lm_loss", "lm_step", "chunked_token_logps",
           "distill_loss", "forward_kl", "reverse_kl", "token_divergence",
           "PreferenceLoss", "bradley_terry_loss", "dpo_loss", "kto_kl_estimate", "kto_loss", "linear_sequence_logps",
           "orpo_loss",
           "preference_metrics", "safedpo_loss", "sequence_logps", "simpo_loss",
           "ClipConfig", "dynamic_sampling_keep", "gae", "group_advantages", "grpo_loss", "kl_k3",
           "kl_penalized_rewards", "mask_truncated", "ppo_policy_loss", "ppo_value_loss", "reinforce_pp_advantages",
           "rloo_advantages", "rloo_loss", "token_entropy", "token_rewards", "whiten", "zero_variance_groups",
           "verifier_loss", "verifier_metrics"]
