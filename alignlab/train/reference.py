"""The reference policy pi_ref of DPO, GRPO, RLOO and PPO: the model a KL term or a log-ratio is measured against.

    reference = Reference("copy", policy)          # a frozen copy of the starting model (one more model in memory)
    reference = Reference("lora", policy)          # the policy itself with its LoRA adapters switched off
    with reference.model(policy) as ref:           # the module to run as pi_ref, in eval mode, no gradients
        ref_logps = some_logps(ref, batch)

"lora" needs no second copy: with B = 0 at the start (PEFT's default init) the adapter-free model IS the
starting model, and it stays frozen because only the adapters train (torchtune's `disable_adapter`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from alignlab.errors import ConfigError
from alignlab.lora import disable_lora
from alignlab.train.trainer import unwrap

KINDS = ("copy", "lora")
RL_CHOICES = ("auto", *KINDS, "none")  # an RL config's `reference`: none only without a KL term


class Reference:
    """pi_ref as a frozen copy of the starting model, or as the policy with its LoRA adapters disabled."""

    def __init__(self, kind: str, model: torch.nn.Module):
        if kind not in KINDS:
            raise ConfigError(f"reference must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self.copy = copy.deepcopy(model).eval().requires_grad_(False) if kind == "copy" else None

    @contextlib.contextmanager
    def model(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module that computes pi_ref, in eval mode (no dropout) under no_grad; `policy` is restored after."""
        if self.copy is not None:
            with torch.no_grad():
                yield self.copy
            return
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad(), disable_lora(unwrap(policy)):
                yield policy
        finally:
            policy.train(was_training)


def resolve_reference(reference: str, method: str, track_kl: bool, penalty: str, coef: float) -> str:
    """The reference kind (copy | lora | none) of an RL run: auto is lora for method=lora, else copy; none when the
    KL penalty (`penalty` = coef: beta, kl_coef) is 0 and track_kl is off."""
    if reference not in RL_CHOICES:
        raise ConfigError(f"reference must be one of {', '.join(RL_CHOICES)}, got {reference!r}")
    reference = reference if reference != "auto" else ("lora" if method == "lora" else "copy")
    if reference == "lora" and method != "lora":
        raise ConfigError("reference=lora needs method=lora: the reference is the model with its adapters disabled")
    if coef != 0 and reference == "none":
        raise ConfigError(f"{penalty}={coef} needs a reference model (reference=copy, or lora with method=lora)")
    if coef == 0 and not track_kl:
        reference = "none"
    return reference
