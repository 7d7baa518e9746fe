"""Loss functions as pure functions of tensors (torch only), each with its formula in the docstring."""

from alignlab.objectives.lm import IGNORE_INDEX, linear_cross_entropy, lm_loss

__all__ = ["IGNORE_INDEX", "linear_cross_entropy", "lm_loss"]
