"""RL objectives: hand-computed values of every advantage and normalisation, the properties that define
clipping, k3 and the mu = 1 gradient, and parity with trl's GRPOTrainer / RLOOTrainer losses.

trl's GRPO and RLOO losses live in Trainer._compute_loss; they are called unbound on a stub `self` carrying
only the attributes they read, whose model returns the given per-token log-probs. trl computes advantages
inline in its generation step, which cannot be called alone: advantages are checked by hand and against
trl's own nanstd. trl 1.16 has no PPO trainer: GAE, whitening and the value loss are checked by hand.
"""

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.objectives import (
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

from .hf_models import installed

if installed("trl"):  # the oracle (a dev dependency); alignlab never imports it. A symbol it lost fails here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        from trl.trainer.grpo_trainer import GRPOTrainer
        from trl.trainer.rloo_trainer import RLOOTrainer
        from trl.trainer.utils import entropy_from_logits, nanstd
needs_trl = pytest.mark.skipif(not installed("trl"), reason="trl is not installed")


def _batch(seed, N=6, T=7, dtype=torch.float64):
    """Random per-token log-probs (policy, old, ref), advantages and a right-padded mask of unequal lengths."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(N, T, generator=g, dtype=dtype) * 3
    old = logps + torch.randn(N, T, generator=g, dtype=dtype) * 0.3  # ratios well inside and outside the clip
    ref = logps + torch.randn(N, T, generator=g, dtype=dtype) * 0.5
    adv = torch.randn(N, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return logps, old, ref, adv, mask


# ----------------------------------------------------------------------------------------------------------------
# trl stubs


class _Accelerator:
    num_processes = 1

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def _stub(logps, **attrs):
    """The `self` trl's _compute_loss reads; its forward returns `logps` (and zero entropies)."""
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)),
                           _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
                           **attrs)


def _inputs(mask, **tensors):
    N, T = mask.shape
    return dict(prompt_ids=torch.ones(N, 1, dtype=torch.long), prompt_mask=torch.ones(N, 1, dtype=torch.long),
                completion_ids=torch.ones(N, T, dtype=torch.long), completion_mask=mask, **tensors)


def trl_grpo(logps, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, delta, level, max_len, num_items, ga):
    stub = _stub(logps, top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
                 beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
                 vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=ga,
                 max_completion_length=max_len, _entropy_bonus_enabled=False,
                 args=SimpleNamespace(use_bias_correction_kl=False, delta=delta, steps_per_generation=ga))
    inputs = _inputs(mask, advantages=adv, old_per_token_logps=old, ref_per_token_logps=ref,
                     num_items_in_batch=torch.tensor(float(num_items)))
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


# ----------------------------------------------------------------------------------------------------------------
# parity with trl


@needs_trl
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,delta,level", [(0.0, None, "token"), (0.04, None, "token"), (0.04, 1.5, "token"),
                                              (0.04, None, "sequence")])
def test_grpo_loss_matches_trl(loss_type, beta, delta, level):
    logps, old, ref, adv, mask = _batch(0)
    max_len, ga, num_items = 12, 2, int(mask.sum()) + 17  # 17 tokens in the other micro-batch of the step
    eps_low, eps_high = (3e-4, 4e-4) if level == "sequence" else (0.2, 0.28)  # GSPO's ranges for sequence ratios
    mine_logps = logps.clone().requires_grad_()
    theirs_logps = logps.clone().requires_grad_()
    clip = ClipConfig(loss_type, eps_low, eps_high, beta, delta, level, max_len)
    loss, metrics = grpo_loss(mine_logps, old, ref, adv, mask, clip, num_tokens=num_items, grad_accum_steps=ga)
    want, want_metrics = trl_grpo(theirs_logps, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, delta,
                                  level, max_len, num_items, ga)
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(mine_logps.grad, theirs_logps.grad)
    assert mine_logps.grad.abs().sum() > 0
    for name, value in want_metrics.items():
        if name != "entropy":
            assert metrics[name] == pytest.approx(value, rel=1e-6), name  # trl counts in float32
    assert want_metrics["clip_ratio/region_mean"] > 0  # the batch exercises the clip
    if delta is not None:  # and the delta cap
        no_clip_cap = ClipConfig(loss_type, eps_low, eps_high, beta, None, level, max_len)
        no_delta, _ = grpo_loss(logps, old, ref, adv, mask, no_clip_cap, num_tokens=num_items, grad_accum_steps=ga)
        assert abs(no_delta.item() - loss.item()) > 1e-3


@needs_trl
def test_grpo_loss_at_mu_1_matches_trl_without_old_logps():
    logps, _, ref, adv, mask = _batch(1)
    loss, _ = grpo_loss(logps, None, None, adv, mask, ClipConfig("dapo"))
    want, _ = trl_grpo(logps, None, ref, adv, mask, "dapo", 0.2, 0.2, 0.0, None, "token", 7, int(mask.sum()), 1)
    torch.testing.assert_close(loss, want)


@needs_trl
@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_rloo_loss_matches_trl(eps_high):
    logps, old, _, adv, mask = _batch(2)
    adv = adv * 3  # push some sequence ratios past the clip
    mine, theirs = logps.clone().requires_grad_(), logps.clone().requires_grad_()
    loss, metrics = rloo_loss(mine, old, adv, mask, ClipConfig(epsilon_low=0.2, epsilon_high=eps_high))
    stub = _stub(theirs, epsilon_low=0.2, epsilon_high=eps_high)
    want = RLOOTrainer._compute_loss(stub, None, _inputs(mask, advantages=adv, old_logps=(old * mask).sum(1)))
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(mine.grad, theirs.grad)
    for name in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]:
        assert metrics[name] == pytest.approx(stub._metrics["train"][name][-1]), name


@needs_trl
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trls_formula(scale):
    """trl's code path (GRPOTrainer._generate_and_score_completions), transcribed, with trl's own nanstd."""
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(4 * 5, generator=g, dtype=torch.float64)
    rewards[[2, 7, 8]] = torch.nan  # unscorable completions
    mean = torch.nanmean(rewards.view(-1, 5), 1).repeat_interleave(5)
    std = nanstd(rewards.view(-1, 5), dim=1).repeat_interleave(5) if scale != "batch" else nanstd(rewards)
    want = rewards - mean if scale == "none" else (rewards - mean) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 5, scale), want.nan_to_num(0.0))


@needs_trl
def test_token_entropy_matches_trl():
    logits = torch.randn(3, 4, 50, dtype=torch.float64)
    torch.testing.assert_close(token_entropy(logits).double(), entropy_from_logits(logits), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# GRPO loss: mu = 1, normalisations, clipping


def test_grpo_loss_at_mu_1_is_minus_mean_advantage_but_has_a_gradient():
    """The logged loss is 0 for group-centred advantages (trl#2703), while the gradient is -A / normaliser."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.9], dtype=torch.float64)
    adv = group_advantages(rewards, 3)
    assert adv.abs().sum() > 1  # not the degenerate all-zero case
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    lengths = mask.sum(1).double()
    logps = -torch.rand(6, 4, dtype=torch.float64)

    x = logps.clone().requires_grad_()
    loss, _ = grpo_loss(x, None, None, adv, mask, ClipConfig("grpo"))
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-12)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(x.grad, -adv[:, None] * mask / (6 * lengths[:, None]))

    # dapo at mu = 1 weighs completions by their length: -sum_i A_i |o_i| / sum_i |o_i|, not 0
    x = logps.clone().requires_grad_()
    loss, _ = grpo_loss(x, None, None, adv, mask, ClipConfig("dapo"))
    assert loss.item() == pytest.approx(-(adv * lengths).sum().item() / lengths.sum().item())
    loss.backward()
    torch.testing.assert_close(x.grad, -adv[:, None] * mask / lengths.sum())


# Two completions of lengths 3 and 1 (T = 3), A = [1, -2], ratios inside the clip range. Masked positions hold
# ratio 7 (outside it): they must change neither the loss nor the clip counts.
_RATIOS = torch.tensor([[1.1, 0.9, 1.0], [1.05, 7.0, 7.0]], dtype=torch.float64)
_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
_ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)
# per-token losses -rho A: row 0 = [-1.1, -0.9, -1.0] (sum -3.0), row 1 = [2.1]
_EXPECTED = {
    ("grpo", 1): (-3.0 / 3 + 2.1 / 1) / 2,  # 0.55: mean of per-sequence token means
    ("grpo", 2): (-3.0 / 3 + 2.1 / 1) / 2 / 2,  # divided by grad_accum_steps
    ("bnpo", 1): (-3.0 + 2.1) / 4,  # -0.225: token mean of the micro-batch
    ("dr_grpo", 1): (-3.0 + 2.1) / (2 * 5),  # -0.09: N * max_completion_length = 2 * 5
    ("dapo", 1): (-3.0 + 2.1) / 10,  # -0.09: 10 tokens in the accumulated batch; grad_accum_steps not applied
    ("dapo", 2): (-3.0 + 2.1) / 10,
}


@pytest.mark.parametrize("loss_type,ga", list(_EXPECTED))
def test_grpo_normalisations_by_hand(loss_type, ga):
    logps = torch.zeros(2, 3, dtype=torch.float64)
    old = -_RATIOS.log()
    loss, metrics = grpo_loss(logps, old, None, _ADV, _MASK, ClipConfig(loss_type, max_completion_length=5),
                              num_tokens=10, grad_accum_steps=ga)
    assert loss.item() == pytest.approx(_EXPECTED[loss_type, ga])
    assert metrics["clip_ratio/region_mean"] == 0


def test_dapo_defaults_to_bnpo_on_one_micro_batch():
    logps = torch.zeros(2, 3, dtype=torch.float64)
    loss, _ = grpo_loss(logps, -_RATIOS.log(), None, _ADV, _MASK, ClipConfig("dapo"))
    assert loss.item() == pytest.approx(-0.225)


def test_dr_grpo_needs_max_completion_length():
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(torch.zeros(2, 3), None, None, _ADV, _MASK, ClipConfig("dr_grpo"))


def test_clip_higher_clips_on_the_side_of_the_advantage():
    """eps_low = 0.2, eps_high = 0.28: A > 0 is capped at 1.28 above, A < 0 at 0.8 below; the other side is free."""
    ratios = torch.tensor([[1.5, 0.5, 1.25, 0.5, 1.5, 0.85]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 6)
    # per token: A>0 rho 1.5 -> clipped at 1.28; A>0 rho 0.5 -> free (0.5 A < 0.8 A); A>0 rho 1.25 -> free under
    # eps_high 0.28 (it would be clipped at 1.2 with a symmetric 0.2); A<0 rho 0.5 -> clipped at 0.8;
    # A<0 rho 1.5 -> free (1.5 A < 1.28 A); A<0 rho 0.85 -> inside
    want_losses = torch.tensor([-1.28, -0.5, -1.25, 0.8, 1.5, 0.85], dtype=torch.float64)
    want_grad = torch.tensor([0.0, -0.5, -1.25, 0.0, 1.5, 0.85], dtype=torch.float64) / 6  # d(-rho A)/dlogp

    logps = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    loss, metrics = grpo_loss(logps, -ratios.log(), None, adv, mask, ClipConfig("bnpo", 0.2, 0.28))
    assert loss.item() == pytest.approx(want_losses.mean().item())
    loss.backward()
    torch.testing.assert_close(logps.grad[0], want_grad)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(1 / 6)
    assert metrics["clip_ratio/low_mean"] == pytest.approx(1 / 6)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(2 / 6)

    # with a symmetric 0.2 the token at 1.25 is clipped too
    _, metrics = grpo_loss(logps.detach(), -ratios.log(), None, adv, mask, ClipConfig("bnpo", 0.2, 0.2))
    assert metrics["clip_ratio/high_mean"] == pytest.approx(2 / 6)


def test_delta_caps_the_ratio_of_negative_advantages():
    ratios = torch.tensor([[10.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    logps = torch.zeros(1, 2, dtype=torch.float64)
    loss, _ = grpo_loss(logps, -ratios.log(), None, adv, torch.ones(1, 2), ClipConfig("bnpo"))
    assert loss.item() == pytest.approx((10.0 + 1.0) / 2)
    loss, _ = grpo_loss(logps, -ratios.log(), None, adv, torch.ones(1, 2), ClipConfig("bnpo", delta=4.0))
    assert loss.item() == pytest.approx((4.0 + 1.0) / 2)


def test_grpo_kl_term_adds_beta_times_k3():
    logps, old, ref, adv, mask = _batch(4)
    base, _ = grpo_loss(logps, old, None, adv, mask, ClipConfig("bnpo"))
    with_kl, metrics = grpo_loss(logps, old, ref, adv, mask, ClipConfig("bnpo", beta=0.1))
    k3 = kl_k3(logps, ref)
    mean_k3 = ((k3 * mask).sum() / mask.sum()).item()
    assert with_kl.item() == pytest.approx(base.item() + 0.1 * mean_k3)
    assert metrics["kl"] == pytest.approx(mean_k3)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, None, adv, mask, ClipConfig("bnpo", beta=0.1))


def test_sequence_level_ratio_is_the_exp_of_the_mean_log_ratio():
    """GSPO: one ratio per sequence; row 0's mean log-ratio is log 1.5, clipped at 1.28 for A > 0."""
    log_ratio = torch.tensor([[math.log(1.5) + 0.3, math.log(1.5) - 0.3, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = grpo_loss(log_ratio, torch.zeros(1, 3, dtype=torch.float64), None, torch.tensor([2.0]), mask,
                              ClipConfig("grpo", 0.2, 0.28, importance_sampling_level="sequence"))
    assert loss.item() == pytest.approx(-1.28 * 2.0)
    assert metrics["clip_ratio/high_mean"] == 1.0


def test_mask_truncated_zeroes_whole_rows():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    out = mask_truncated(mask, torch.tensor([True, False, False]))
    assert out.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    # the masked completion then drops out of the loss, whatever its advantage
    logps = torch.zeros(3, 3)
    a, _ = grpo_loss(logps, None, None, torch.tensor([100.0, 1.0, 2.0]), out, ClipConfig("bnpo"))
    assert a.item() == pytest.approx(-(2 * 1.0 + 3 * 2.0) / 5)


# ----------------------------------------------------------------------------------------------------------------
# KL, entropy


def test_k3_is_nonnegative_zero_at_equality_and_unbiased():
    g = torch.Generator().manual_seed(5)
    logp, ref = -torch.rand(1000, generator=g) * 5, -torch.rand(1000, generator=g) * 5
    assert (kl_k3(logp, ref) >= 0).all()
    assert kl_k3(logp, logp).abs().max() == 0
    assert kl_k3(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item() == pytest.approx(
        0.5 + math.log(2) - 1)
    # E_{x ~ p}[k3(x)] is exactly KL(p || q) for categorical p, q
    p = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    assert (p * kl_k3(p.log(), q.log())).sum().item() == pytest.approx((p * (p / q).log()).sum().item())


def test_token_entropy_extremes():
    assert token_entropy(torch.zeros(2, 16)).tolist() == pytest.approx([math.log(16)] * 2)
    assert token_entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 1: all equal -> A = 0
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    want = centred / (0.5 + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 4), want)
    torch.testing.assert_close(group_advantages(rewards.view(2, 4)), want.view(2, 4))
    # batch: divide by the std of all 8 rewards (mean 5/8)
    batch_std = math.sqrt((5 * (3 / 8) ** 2 + 3 * (5 / 8) ** 2) / 7)
    torch.testing.assert_close(group_advantages(rewards, 4, "batch"), centred / (batch_std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, 4, "none"), centred)
    with pytest.raises(ValueError):
        group_advantages(rewards, 3)


def test_rloo_advantages_are_leave_one_out_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    # group 0: baselines 1/3, 2/3, 2/3, 1/3; group 1: baselines 5/3, 7/3, 2, 2
    want = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [4 / 3, -4 / 3, 0.0, 0.0]])
    torch.testing.assert_close(rloo_advantages(rewards), want)
    torch.testing.assert_close(rloo_advantages(rewards.view(-1), 4), want.view(-1))
    # the identity A = G / (G - 1) (r - mean)
    torch.testing.assert_close(rloo_advantages(rewards), 4 / 3 * (rewards - rewards.mean(1, keepdim=True)))
    normalized = rloo_advantages(rewards, normalize=True)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-3)


def test_nan_rewards_leave_the_baseline_and_get_zero_advantage():
    rewards = torch.tensor([[1.0, float("nan"), 0.0, 2.0]])
    torch.testing.assert_close(group_advantages(rewards, scale="none"), torch.tensor([[0.0, 0.0, -1.0, 1.0]]))
    torch.testing.assert_close(rloo_advantages(rewards), torch.tensor([[0.0, 0.0, -1.5, 1.5]]))


def test_zero_variance_groups_and_dynamic_sampling():
    nan = float("nan")
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3], [0.5, nan, 0.5]])
    assert zero_variance_groups(rewards).tolist() == [True, False, True, True, True]
    assert zero_variance_groups(rewards.view(-1), 3).tolist() == [True, False, True, True, True]
    keep = dynamic_sampling_keep(rewards.view(-1), 3)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 9
    assert dynamic_sampling_keep(rewards).shape == (5, 3)


def test_token_rewards_by_hand():
    scores = torch.tensor([1.0, 2.0, 5.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.1, 0.2], [1.0, 1.0, 1.0]])
    want = torch.tensor([[-0.05, 1 - 0.1, 0.0], [-0.15, -0.05, 2 - 0.1], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(token_rewards(scores, mask, kl, 0.5), want)


def test_kl_penalized_rewards_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # sum_t (logp - ref) = 0.5 - 1.0 = -0.5 -> r - 0.1 * (-0.5)
    assert kl_penalized_rewards(torch.tensor([2.0]), logps, ref, mask, 0.1).item() == pytest.approx(2.05)


def test_reinforce_pp_baseline_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # two groups of 2 -> centred [0.5, -0.5, 0, 0]
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]])
    # returns to go (gamma 1, reward on the last token): [0.5, 0.5], [-0.5], [0], [0, 0]
    tokens = [0.5, 0.5, -0.5, 0.0, 0.0, 0.0]
    mean = sum(tokens) / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / 5)
    w = [(x - mean) / std for x in tokens]
    want = torch.tensor([[w[0], w[1]], [w[2], 0.0], [w[3], 0.0], [w[4], w[5]]])
    torch.testing.assert_close(reinforce_pp_advantages(rewards, mask, group_size=2), want)


def test_reinforce_pp_with_kl_in_the_reward_discounts_it_to_go():
    rewards, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    kl = torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.4, 0.0]])
    # token rewards with kl_coef 0.5: [-0.1, -0.1, 0.9], [0, -0.2, -1]; returns to go:
    returns = torch.tensor([[0.7, 0.8, 0.9], [-1.2, -1.2, -1.0]])
    torch.testing.assert_close(reinforce_pp_advantages(rewards, mask, kl=kl, kl_coef=0.5), whiten(returns, mask))


# ----------------------------------------------------------------------------------------------------------------
# PPO


def test_gae_by_hand():
    """gamma 0.9, lam 0.8 (gamma * lam = 0.72); row 1 ends after two tokens, its padding holds garbage."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 0: d2 = 1 - 0.7 = 0.3;  d1 = 0.9 * 0.7 - 0.6 = 0.03;  d0 = 0.9 * 0.6 - 0.5 = 0.04
    #        A2 = 0.3;  A1 = 0.03 + 0.72 * 0.3 = 0.246;  A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # row 1: d1 = 2 - 0.5 = 1.5 (V = 0 after the end);  d0 = 0.9 * 0.5 - 1.0 = -0.55
    #        A1 = 1.5;  A0 = -0.55 + 0.72 * 1.5 = 0.53
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3], [0.53, 1.5, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0]], dtype=torch.float64))
    # lam = 1: returns are the discounted rewards to go, 0.81, 0.9, 1
    _, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(returns[0], torch.tensor([0.81, 0.9, 1.0], dtype=torch.float64))


def test_value_loss_clipping_by_hand():
    """c = 0.2. Token 0: V 1.5 from V_old 1.0 clips to 1.2, (1.2 - 2)^2 = 0.64 > (1.5 - 2)^2 = 0.25.
    Token 1: V 0.9 stays inside [0.8, 1.2]: 0.81 both ways. Token 2 is masked."""
    values = torch.tensor([[1.5, 0.9, 50.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = ppo_value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert metrics["vf_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    # the clipped token has no gradient; the free one has 0.5 * 2 (V - R) / 2 = 0.45
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.45, 0.0]], dtype=torch.float64))


def test_ppo_policy_loss_is_bnpo_with_symmetric_clip():
    logps, old, _, _, mask = _batch(6)
    adv = torch.randn(*logps.shape, dtype=torch.float64)
    loss, metrics = ppo_policy_loss(logps, old, adv, mask, 0.2)
    want, want_metrics = grpo_loss(logps, old, None, adv, mask, ClipConfig("bnpo", 0.2, 0.2))
    torch.testing.assert_close(loss, want)
    assert metrics["clipfrac"] == pytest.approx(want_metrics["clip_ratio/region_mean"])
    assert metrics["clipfrac"] > 0


def test_whiten_semantics():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = whiten(x, mask)
    valid = w[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert valid.var().item() == pytest.approx(1.0, rel=1e-6)  # unbiased, as trl's masked_var
    assert w[1, 1:].tolist() == [0.0, 0.0]
    # shift_mean=False only rescales: the mean 2.5 stays
    assert whiten(x, mask, shift_mean=False)[mask.bool()].mean().item() == pytest.approx(2.5)
