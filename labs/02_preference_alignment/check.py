"""Grade Lab 02's exercises (labs/02_preference_alignment/exercises.py) against alignlab's own code.

    alignlab lab check 2                                            # every exercise: PASS, FAIL (with why) or TODO
    python labs/02_preference_alignment/check.py 2 3                # the same, for some of them
    python labs/02_preference_alignment/check.py --module my.py     # grade another file with the same functions

Each check runs the learner's functions on seeded inputs and compares values and gradients with
alignlab.objectives.preference (`sequence_logps`, `dpo_loss`, its "ipo" variant, `simpo_loss`,
`bradley_terry_loss`) and alignlab.eval.winrate.win_rate.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import torch

from alignlab.eval.winrate import win_rate
from alignlab.lab import assert_close as close
from alignlab.objectives.preference import bradley_terry_loss, dpo_loss, sequence_logps, simpo_loss


def leaves(g: torch.Generator, *shapes_scales, dtype=torch.float64) -> list[torch.Tensor]:
    """Random tensors (randn * scale + shift) as leaves that take gradients."""
    return [(torch.randn(n, generator=g, dtype=dtype) * s + m).requires_grad_(True) for n, s, m in shapes_scales]


def pair_of(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh leaves with the same values: one set for the learner, one for alignlab."""
    return [t.detach().clone().requires_grad_(True) for t in ts]


def same_loss(what: str, got, want, mine: list[torch.Tensor], ref: list[torch.Tensor], names: list[str],
              atol: float = 1e-6) -> None:
    """A scalar loss: its value, then the gradient it sends to each input."""
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise AssertionError(f"{what}: the loss must be a scalar tensor (the mean over the pairs), got "
                             f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    close(got, want, f"{what}: loss", atol)
    if not got.requires_grad:
        raise AssertionError(f"{what}: the loss does not require grad (detached somewhere?)")
    want.backward()
    got.backward()
    for name, m, r in zip(names, mine, ref):
        if m.grad is None:
            raise AssertionError(f"{what}: no gradient reached {name} (detached somewhere?)")
        close(m.grad, r.grad, f"{what}: the gradient of {name}", atol)


def same_rewards(what: str, got, want_chosen: torch.Tensor, want_rejected: torch.Tensor) -> None:
    for name, r, w in (("chosen_rewards", got[0], want_chosen), ("rejected_rewards", got[1], want_rejected)):
        close(r, w, f"{what}: {name}")
        if isinstance(r, torch.Tensor) and r.requires_grad:
            raise AssertionError(f"{what}: {name} still requires grad; the rewards are logged, detach them")


# ----------------------------------------------------------------------------------------------------------------
# 1. Sequence log-probs


def check_1(ex) -> str:
    g = torch.Generator().manual_seed(1)
    for B, T, V in ((4, 9, 13), (3, 1, 7), (2, 16, 50)):
        logits = torch.randn(B, T, V, generator=g) * 2
        labels = torch.randint(0, V, (B, T), generator=g)
        for b in range(B):  # row 0 all labelled, row 1 none, the others a prompt, the completion, then padding
            ends = sorted(torch.randint(0, T + 1, (2,), generator=g).tolist())
            start, end = (0, T) if b == 0 else (T, T) if b == 1 else ends
            labels[b, :start] = -100
            labels[b, end:] = -100
        what = f"sequence_logps(logits [{B}, {T}, {V}], labels {labels.tolist()})"
        mine, ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        got_sum, got_n = ex.sequence_logps(mine, labels.clone())
        want_sum, want_n = sequence_logps(ref, labels)
        close(got_sum, want_sum, f"{what}: the sums", atol=1e-5)
        close(got_n, want_n, f"{what}: the counts", atol=0)
        proj = torch.randn(B, generator=g)
        (want_sum * proj).sum().backward()
        torch.as_tensor(got_sum).mul(proj).sum().backward()
        if mine.grad is None:
            raise AssertionError(f"{what}: no gradient reached the logits")
        close(mine.grad, ref.grad, f"{what}: the gradient of the logits", atol=1e-5)
    return "3 shapes with prompt, padding and label-less rows: sums, counts and the gradient of the logits"


# ----------------------------------------------------------------------------------------------------------------
# 2. DPO


def check_2(ex) -> str:
    g = torch.Generator().manual_seed(2)
    names = ["policy_chosen", "policy_rejected"]
    for beta, eps in ((0.1, 0.0), (0.5, 0.0), (0.1, 0.1), (1.0, 0.3)):
        mine = leaves(g, (8, 5.0, -40.0), (8, 5.0, -45.0))
        ref_c, ref_r = (torch.randn(8, generator=g, dtype=torch.float64) * 5 + m for m in (-40.0, -45.0))
        ref = pair_of(mine)
        what = f"dpo_loss(8 pairs, beta={beta}, label_smoothing={eps})"
        got = ex.dpo_loss(*mine, ref_c, ref_r, beta, eps)
        want = dpo_loss(*ref, ref_c, ref_r, beta, "sigmoid", eps)
        same_rewards(what, got[1:], want.chosen_rewards, want.rejected_rewards)
        same_loss(what, got[0], want.loss, mine, ref, names)

    # margins of +-2000 nats: sigma(beta h) rounds to 0 or 1 in float32
    mine = [torch.tensor(v, requires_grad=True) for v in ([-10.0, -2010.0, -50.0], [-2010.0, -10.0, -50.0])]
    ref = pair_of(mine)
    zeros = torch.zeros(3)
    what = "dpo_loss(float32 pairs with h = 2000, -2000 and 0, beta=0.1): log sigma(z) must not overflow"
    got = ex.dpo_loss(*mine, zeros, zeros, 0.1, 0.0)
    want = dpo_loss(*ref, zeros, zeros, 0.1)
    same_loss(what, got[0], want.loss, mine, ref, names, atol=1e-4)
    return "4 (beta, label_smoothing) settings: loss, rewards, gradients; pairs with h = +-2000 in float32"


# ----------------------------------------------------------------------------------------------------------------
# 3. IPO and SimPO


def check_3(ex) -> str:
    g = torch.Generator().manual_seed(3)
    for beta in (0.1, 0.5, 2.0):
        mine = leaves(g, (6, 5.0, -40.0), (6, 5.0, -45.0))
        ref_c, ref_r = (torch.randn(6, generator=g, dtype=torch.float64) * 5 + m for m in (-40.0, -45.0))
        lens = [torch.randint(1, 40, (6,), generator=g) for _ in range(2)]
        lens[1][0] = 0  # an empty completion: counted as 1 token
        ref = pair_of(mine)
        what = f"ipo_loss(6 pairs, lengths {lens[0].tolist()} and {lens[1].tolist()}, beta={beta})"
        got = ex.ipo_loss(*mine, ref_c, ref_r, lens[0].clone(), lens[1].clone(), beta)
        want = dpo_loss(*ref, ref_c, ref_r, beta, "ipo", chosen_len=lens[0], rejected_len=lens[1])
        same_rewards(what, got[1:], want.chosen_rewards, want.rejected_rewards)
        same_loss(what, got[0], want.loss, mine, ref, ["policy_chosen", "policy_rejected"])

    for beta, gamma in ((2.0, 0.5), (2.5, 1.4), (0.1, 0.05), (10.0, 3.0)):
        mine = leaves(g, (6, 10.0, -60.0), (6, 10.0, -70.0))
        lens = [torch.randint(1, 40, (6,), generator=g) for _ in range(2)]
        lens[0][-1] = 0
        ref = pair_of(mine)
        what = f"simpo_loss(6 pairs, lengths {lens[0].tolist()} and {lens[1].tolist()}, beta={beta}, gamma={gamma})"
        got = ex.simpo_loss(*mine, lens[0].clone(), lens[1].clone(), beta, gamma)
        want = simpo_loss(*ref, lens[0], lens[1], beta, gamma)
        same_rewards(what, got[1:], want.chosen_rewards, want.rejected_rewards)
        same_loss(what, got[0], want.loss, mine, ref, ["policy_chosen", "policy_rejected"])
    return "IPO at 3 betas against dpo_loss(loss_type='ipo'), SimPO at 4 (beta, gamma): loss, rewards, gradients"


# ----------------------------------------------------------------------------------------------------------------
# 4. Win rate


def check_4(ex) -> str:
    rng = random.Random(4)
    cases = [["A"], ["B"], ["tie"] * 5, ["A", "B"], ["A", "tie", "tie", "B", "B"], []]
    for _ in range(100):
        weights = [rng.random() for _ in range(3)]
        cases.append(rng.choices(["A", "B", "tie"], weights, k=rng.randint(1, 60)))
    for outcomes in cases:
        want = win_rate(outcomes, n_boot=1).win_rate
        got = ex.win_rate(list(outcomes))
        shown = outcomes if len(outcomes) <= 12 else (f"{len(outcomes)} verdicts: {outcomes.count('A')} A, "
                                                       f"{outcomes.count('B')} B, {outcomes.count('tie')} tie")
        if not isinstance(got, (int, float)) or not (math.isclose(got, want, abs_tol=1e-12)
                                                     or (math.isnan(want) and math.isnan(got))):
            raise AssertionError(f"win_rate({shown}) = {got!r}, expected {want!r}")
    return f"{len(cases)} lists of verdicts (all ties, one verdict, empty, random) against eval.winrate.win_rate"


# ----------------------------------------------------------------------------------------------------------------
# 5. Bradley-Terry


def check_5(ex) -> str:
    g = torch.Generator().manual_seed(5)
    names = ["chosen_rewards", "rejected_rewards"]
    for use_margin, c in ((False, None), (True, None), (False, 0.01), (True, 0.1)):
        mine = leaves(g, (10, 2.0, 0.5), (10, 2.0, 0.0))
        ref = pair_of(mine)
        margin = torch.rand(10, generator=g, dtype=torch.float64) * 2 if use_margin else None
        what = f"reward_model_loss(10 pairs, margin={'random' if use_margin else None}, center_coefficient={c})"
        got = ex.reward_model_loss(*mine, None if margin is None else margin.clone(), c)
        want = bradley_terry_loss(*ref, margin, c)
        same_loss(what, got, want.loss, mine, ref, names)

    mine = [torch.tensor(v, requires_grad=True) for v in ([300.0, -300.0, 1.0], [-300.0, 300.0, 1.0])]
    ref = pair_of(mine)
    what = "reward_model_loss(float32 rewards 300 apart, both ways): log sigma(z) must not overflow"
    same_loss(what, ex.reward_model_loss(*mine), bradley_terry_loss(*ref).loss, mine, ref, names, atol=1e-4)
    return "with and without margin and centring, and rewards 300 apart: loss and gradients against bradley_terry_loss"


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5}

if __name__ == "__main__":
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
