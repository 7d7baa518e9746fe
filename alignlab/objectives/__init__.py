"""Loss functions as pure functions of tensors (torch only), each with its formula in the docstring."""

from alignlab.objectives.lm import IGNORE_INDEX, linear_cross_entropy, lm_loss
from alignlab.objectives.preference import (
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

__all__ = ["IGNORE_INDEX", "linear_cross_entropy", "lm_loss",
           "bradley_terry_loss", "dpo_loss", "kto_kl_estimate", "kto_loss", "linear_sequence_logps", "orpo_loss",
           "preference_metrics", "safedpo_loss", "sequence_logps", "simpo_loss"]
