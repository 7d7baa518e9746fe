"""Preference objectives: parity with trl's own loss code on random log-probs, step-0 values, gradients of
the plainly written formulas, SafeDPO's defining properties, and the sequence log-probs they all start from.

trl's DPO, KTO and reward losses live inside Trainer methods; they are called unbound on a stub `self`
carrying only the attributes they read, with a fake model whose per-token log-probs sum to the inputs.
"""

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignlab.objectives import (
    IGNORE_INDEX,
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
from alignlab.objectives.preference import PreferenceLoss, log1mexp

from .hf_models import installed

if installed("trl"):  # the oracle (a dev dependency); alignlab never imports it. A symbol it lost fails here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental")
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
        from trl.trainer.dpo_trainer import DPOTrainer
        from trl.trainer.kto_trainer import KTOTrainer
        from trl.trainer.reward_trainer import RewardTrainer
needs_trl = pytest.mark.skipif(not installed("trl"), reason="trl is not installed")

B = 8


def _pairs(seed, dtype=torch.float64):
    """Random summed log-probs of a batch of pairs (policy and reference) and completion lengths."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 30, (2, B), generator=g)
    logps = -torch.rand(4, B, generator=g, dtype=dtype) * 3 * lens.repeat(2, 1)  # per-token means in (-3, 0)
    pc, pr, rc, rr = logps
    return pc, pr, rc, rr, lens[0], lens[1]


# ----------------------------------------------------------------------------------------------------------------
# trl stubs


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trainer_stub(**attrs):
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1, **attrs)


def _fake_outputs(seq_logps, T):
    """What trl's fused-head forward returns, with per-token log-probs that sum to seq_logps."""
    n = len(seq_logps)
    log_probs = torch.zeros(n, T - 1, dtype=seq_logps.dtype)
    log_probs[:, 0] = seq_logps
    zeros = torch.zeros(n, T - 1)
    return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trl_dpo(pc, pr, rc, rr, lc, lr, beta, loss_type, label_smoothing=0.0):
    """trl DPOTrainer._compute_loss on one batch; returns (loss, logged metrics)."""
    n, T = len(pc), int(max(lc.max(), lr.max())) + 1  # one prompt token, then the completion
    completion_mask = torch.zeros(2 * n, T, dtype=torch.long)
    for i, length in enumerate(torch.cat([lc, lr]).tolist()):
        completion_mask[i, 1:1 + length] = 1
    outputs = _fake_outputs(torch.cat([pc, pr]), T)
    stub = _trainer_stub(ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                         loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                         use_weighting=False)
    ones = torch.ones(2 * n, T, dtype=torch.long)
    inputs = dict(input_ids=ones, attention_mask=ones, completion_mask=completion_mask, ref_chosen_logps=rc,
                  ref_rejected_logps=rr)
    loss = DPOTrainer._compute_loss(stub, lambda **kw: outputs, inputs, False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def trl_kto(policy, ref, desirable, kl_policy, kl_ref, beta, desirable_weight, undesirable_weight):
    """trl KTOTrainer._compute_loss with precomputed reference log-probs; the KL batch is marked by its ids."""
    n, T = len(policy), 3
    main, kl = torch.full((n, T), 1), torch.full((n, T), 2)

    def model(input_ids, **kw):
        return _fake_outputs(policy if input_ids[0, 0] == 1 else kl_policy, T)

    stub = _trainer_stub(calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=beta,
                         desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    stub._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(stub, m, b)
    ones = torch.ones(n, T, dtype=torch.long)
    batch = dict(input_ids=main, attention_mask=ones, completion_mask=ones, KL_input_ids=kl, KL_attention_mask=ones,
                 KL_completion_mask=ones, label=desirable, ref_logps=ref, ref_KL_logps=kl_ref)
    loss = KTOTrainer._compute_loss(stub, model, batch, False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def trl_reward(rc, rr, margin=None, center=None):
    stub = _trainer_stub(args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = dict(attention_mask=torch.ones(2 * len(rc), 4, dtype=torch.long))
    if margin is not None:
        inputs["margin"] = margin
    logits = torch.cat([rc, rr])[:, None]
    return RewardTrainer.compute_loss(stub, lambda **kw: SimpleNamespace(logits=logits), inputs)


# ----------------------------------------------------------------------------------------------------------------
# parity with trl


@needs_trl
@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.0),
                                           ("robust", 0.1), ("robust", 0.3)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(loss_type, eps, beta):
    pc, pr, rc, rr, lc, lr = _pairs(0)
    out = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps, chosen_len=lc, rejected_len=lr)
    losses = out.losses
    for i in range(B):  # pair by pair, so no error can hide in a mean
        want, _ = trl_dpo(pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1], lc[i:i + 1], lr[i:i + 1], beta,
                          loss_type, eps)
        assert abs(losses[i].item() - want.item()) < 1e-6
    want, metrics = trl_dpo(pc, pr, rc, rr, lc, lr, beta, loss_type, eps)
    assert abs(out.loss.item() - want.item()) < 1e-6 and out.metrics == {}
    ours = preference_metrics(out.chosen_rewards, out.rejected_rewards, pc, pr)
    for key, value in ours.items():
        assert abs(value - metrics[key]) < 1e-6, key


@needs_trl
@pytest.mark.parametrize("beta,gamma,eps", [(0.1, 0.5, 0.0), (2.0, 1.0, 0.0), (2.5, 1.4, 0.1)])
def test_simpo_matches_trl_cpo_simpo(beta, gamma, eps):
    pc, pr, _, _, lc, lr = _pairs(1)
    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=eps,
                           accelerator=_Accelerator())
    want, want_c, want_r = CPOTrainer.cpo_loss(stub, pc / lc, pr / lr)  # trl averages log-probs for simpo
    out = simpo_loss(pc, pr, lc, lr, beta=beta, gamma=gamma, label_smoothing=eps)
    for a, b in [(out.losses, want), (out.chosen_rewards, want_c), (out.rejected_rewards, want_r)]:
        assert (a - b).abs().max() < 1e-6
    assert abs(out.loss.item() - want.mean().item()) < 1e-6


def test_simpo_defaults_and_trl_config_defaults():
    import inspect
    params = inspect.signature(simpo_loss).parameters
    assert (params["beta"].default, params["gamma"].default) == (2.0, 0.5)
    if installed("trl"):  # trl's CPOConfig: beta 0.1, simpo_gamma 0.5 (same gamma, in reward units)
        from trl.experimental.cpo import CPOConfig
        fields = CPOConfig.__dataclass_fields__
        assert (fields["beta"].default, fields["simpo_gamma"].default) == (0.1, 0.5)


@needs_trl
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_matches_trl(beta):
    pc, pr, _, _, lc, lr = _pairs(2, dtype=torch.float32)
    pc[0], lc[0] = -0.01, 1  # average log-probs on both sides of log1mexp's branch at -ln 2
    stub = SimpleNamespace(beta=beta, accelerator=_Accelerator())
    want, want_c, want_r, log_odds_ratio, log_odds_chosen = ORPOTrainer.odds_ratio_loss(stub, pc / lc, pr / lr)
    out = orpo_loss(pc, pr, lc, lr, beta=beta)
    assert (out.losses - (-pc / lc) - (-want)).abs().max() < 1e-6  # default nll: the chosen per-token NLL
    log_odds = out.metrics["log_odds"]
    assert abs(log_odds.mean().item() - log_odds_chosen.item()) < 1e-6
    assert abs(F.logsigmoid(log_odds).mean().item() - log_odds_ratio.item()) < 1e-6
    assert (out.chosen_rewards - want_c).abs().max() < 1e-6 and (out.rejected_rewards - want_r).abs().max() < 1e-6
    nll = torch.tensor(2.345)  # trl's total: the batch's prompt+chosen cross-entropy minus the mean OR term
    out = orpo_loss(pc, pr, lc, lr, beta=beta, nll=nll)
    assert abs(out.loss.item() - (nll - want.mean()).item()) < 1e-6


@needs_trl
@pytest.mark.parametrize("kl_shift,weights", [(0.0, (1.0, 1.0)), (3.0, (1.0, 1.33)), (-3.0, (0.7, 1.0))])
def test_kto_matches_trl(kl_shift, weights):
    pc, pr, rc, rr, _, _ = _pairs(3)
    policy, ref = torch.cat([pc, pr]), torch.cat([rc, rr])
    desirable = torch.rand(2 * B, generator=torch.Generator().manual_seed(4)) < 0.4
    kl_ref = rr.roll(1)  # mismatched completions
    kl_policy = kl_ref + kl_shift + torch.randn(B, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    if kl_shift < 0:
        assert (kl_policy - kl_ref).mean() < 0  # so z is clamped to 0
    want, metrics = trl_kto(policy, ref, desirable, torch.cat([kl_policy] * 2), torch.cat([kl_ref] * 2), 0.1, *weights)
    z = kto_kl_estimate(kl_policy, kl_ref)
    out = kto_loss(policy, ref, desirable, z, beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1])
    assert abs(out.loss.item() - want.item()) < 1e-6 and abs(out.losses.mean().item() - want.item()) < 1e-6
    assert abs(z.item() - metrics["kl"]) < 1e-6 and out.metrics["kl"] == z
    assert abs(out.chosen_rewards.mean().item() - metrics["rewards/chosen"]) < 1e-6
    assert abs(out.rejected_rewards.mean().item() - metrics["rewards/rejected"]) < 1e-6


@needs_trl
@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (True, 0.01)])
def test_bradley_terry_matches_trl_reward_trainer(with_margin, center):
    g = torch.Generator().manual_seed(5)
    rc, rr, margin = torch.randn(3, B, generator=g, dtype=torch.float64)
    margin = margin.abs() if with_margin else None
    want = trl_reward(rc, rr, margin, center)
    out = bradley_terry_loss(rc, rr, margin, center)
    assert abs(out.loss.item() - want.item()) < 1e-6 and abs(out.losses.mean().item() - want.item()) < 1e-6
    assert torch.equal(out.chosen_rewards, rc) and torch.equal(out.rejected_rewards, rr)


@needs_trl
def test_sequence_logps_matches_trl_get_batch_logps():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 9, 17, generator=g)
    labels = torch.randint(0, 17, (3, 9), generator=g)  # trl: unshifted labels, -100 on the prompt
    labels[:, :3] = IGNORE_INDEX
    labels[2, -2:] = IGNORE_INDEX
    want_sum = CPOTrainer.get_batch_logps(logits, labels.clone())
    want_avg = CPOTrainer.get_batch_logps(logits, labels.clone(), average_log_prob=True)
    sums, n = sequence_logps(logits[:, :-1], labels[:, 1:])  # alignlab: labels aligned with the logits
    assert torch.allclose(sums, want_sum, atol=1e-5) and torch.allclose(sums / n, want_avg, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# step-0 values: policy == reference


def test_values_at_policy_equal_reference():
    pc, pr, _, _, lc, lr = _pairs(7)
    ln2 = math.log(2)
    for loss_type, eps, want in [("sigmoid", 0.0, ln2), ("sigmoid", 0.2, ln2), ("robust", 0.2, ln2),
                                 ("hinge", 0.0, 1.0), ("ipo", 0.0, 1 / (4 * 0.1**2))]:
        out = dpo_loss(pc, pr, pc, pr, beta=0.1, loss_type=loss_type, label_smoothing=eps, chosen_len=lc,
                       rejected_len=lr)
        assert torch.allclose(out.losses, torch.full_like(out.losses, want)), loss_type
        assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0
    losses = kto_loss(pc, pc, torch.arange(B) % 2 == 0, 0.0).losses
    assert torch.allclose(losses, torch.full_like(losses, 0.5))
    assert abs(bradley_terry_loss(pc, pc).loss.item() - ln2) < 1e-12
    same = pc / lc * lr  # equal average log-probs: only the margin is left
    losses = simpo_loss(pc, same, lc, lr, beta=2.0, gamma=0.5).losses
    assert torch.allclose(losses, torch.full_like(losses, -math.log(torch.sigmoid(torch.tensor(-0.5)).item())))
    out = orpo_loss(pc, same, lc, lr, beta=0.1)
    assert out.metrics["log_odds"].abs().max() < 1e-5
    assert torch.allclose(out.losses, -pc.float() / lc + 0.1 * ln2, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# gradients equal autograd of the plainly written formulas


def _grads(fn, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    return torch.autograd.grad(fn(*leaves).sum(), leaves, allow_unused=True)


def _assert_same_grads(ours, plain, *tensors):
    for a, b in zip(_grads(ours, *tensors), _grads(plain, *tensors)):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10), (a, b)


def test_gradients_equal_the_plain_formulas():
    pc, pr, rc, rr, lc, lr = _pairs(8)
    beta, eps, gamma = 0.3, 0.2, 0.7
    log_sig = lambda x: torch.log(1 / (1 + torch.exp(-x)))  # noqa: E731
    delta = lambda pc, pr, rc, rr: (pc - rc) - (pr - rr)  # noqa: E731

    plain = {
        "sigmoid": lambda *a: -log_sig(beta * delta(*a)),
        "hinge": lambda *a: torch.clamp(1 - beta * delta(*a), min=0),
        "ipo": lambda pc, pr, rc, rr: ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2,
        "robust": lambda *a: ((1 - eps) * -log_sig(beta * delta(*a)) - eps * -log_sig(-beta * delta(*a)))
        / (1 - 2 * eps),
    }
    for loss_type, formula in plain.items():
        e = eps if loss_type == "robust" else 0.0
        ours = lambda *a, t=loss_type, e=e: dpo_loss(*a, beta=beta, loss_type=t, label_smoothing=e,  # noqa: E731
                                                     chosen_len=lc, rejected_len=lr).losses
        _assert_same_grads(ours, formula, pc, pr, rc, rr)

    _assert_same_grads(lambda pc, pr: simpo_loss(pc, pr, lc, lr, beta=beta, gamma=gamma).losses,
                       lambda pc, pr: -log_sig(beta * pc / lc - beta * pr / lr - gamma), pc, pr)

    def orpo_plain(pc, pr):
        p_w, p_l = torch.exp(pc / lc), torch.exp(pr / lr)  # the length-normalised likelihoods
        odds_ratio = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
        return -pc / lc - beta * log_sig(torch.log(odds_ratio))
    _assert_same_grads(lambda pc, pr: orpo_loss(pc.float(), pr.float(), lc, lr, beta=beta).losses.double(),
                       lambda pc, pr: orpo_plain(pc.float(), pr.float()).double(), pc, pr)

    desirable = torch.arange(B) % 3 == 0
    z = torch.tensor(1.5, dtype=torch.float64)

    def kto_plain(p, r, z):
        r_ = p - r
        return torch.where(desirable, 1 - torch.sigmoid(beta * (r_ - z.detach())),
                           1 - torch.sigmoid(beta * (z.detach() - r_)))
    _assert_same_grads(lambda p, r, z: kto_loss(p, r, desirable, z, beta=beta).losses, kto_plain, pc, rc, z)

    unsafe_c, unsafe_r = torch.arange(B) % 2 == 0, torch.arange(B) % 4 < 2

    def safedpo_plain(pc, pr, rc, rr):  # the paper's loss on T(D), pair by pair
        out = []
        for i in range(B):
            w, l, h_w, h_l = (pc[i] - rc[i], pr[i] - rr[i], float(unsafe_c[i]), float(unsafe_r[i]))
            if h_w and h_l:
                out.append(0 * w)
                continue
            if h_w:
                w, l, h_w, h_l = l, w, h_l, h_w
            out.append(-log_sig(beta * w - beta * l - (h_l - h_w) * 2.0))
        return torch.stack(out)
    _assert_same_grads(lambda *a: safedpo_loss(*a, unsafe_c, unsafe_r, beta=beta, delta=2.0).losses, safedpo_plain,
                       pc, pr, rc, rr)
    _assert_same_grads(lambda rc, rr: bradley_terry_loss(rc, rr, lr * 0.1, 0.05).loss,
                       lambda rc, rr: (-log_sig(rc - rr - lr * 0.1)).mean() + 0.05 * ((rc + rr) ** 2).mean(), rc, rr)


def test_rewards_and_the_kl_baseline_carry_no_gradient():
    pc, pr, rc, rr, _, _ = _pairs(9)
    pc.requires_grad_()
    out = dpo_loss(pc, pr, rc, rr)
    assert not out.chosen_rewards.requires_grad and out.loss.requires_grad
    z = torch.tensor(2.0, requires_grad=True)
    out = kto_loss(pc, rc, torch.ones(B, dtype=torch.bool), z)
    assert not out.chosen_rewards.requires_grad and not out.metrics["kl"].requires_grad
    out.losses.sum().backward()
    assert z.grad is None and pc.grad is not None
    assert kto_kl_estimate(pc - 100, rc).item() == 0  # clamped at zero


def test_every_loss_returns_one_structure():
    pc, pr, rc, rr, lc, lr = _pairs(14)
    unsafe = torch.arange(B) % 2 == 0
    outs = {
        "dpo": dpo_loss(pc, pr, rc, rr, loss_type="ipo", chosen_len=lc, rejected_len=lr),
        "safedpo": safedpo_loss(pc, pr, rc, rr, unsafe, ~unsafe),
        "simpo": simpo_loss(pc, pr, lc, lr),
        "orpo": orpo_loss(pc, pr, lc, lr),
        "kto": kto_loss(pc, rc, unsafe, 0.5),
        "bradley_terry": bradley_terry_loss(pc, pr),
    }
    for name, out in outs.items():
        assert isinstance(out, PreferenceLoss), name
        assert out.loss.dim() == 0 and out.losses.shape == (B,), name
        assert not out.chosen_rewards.requires_grad and isinstance(out.metrics, dict), name
    for name in ("dpo", "simpo", "orpo", "kto", "bradley_terry"):
        assert torch.allclose(outs[name].loss, outs[name].losses.mean()), name
    assert set(outs["safedpo"].metrics) == {"kept", "swapped"} and set(outs["orpo"].metrics) == {"log_odds"}
    assert set(outs["kto"].metrics) == {"kl"} and outs["kto"].chosen_rewards.shape == (B // 2,)


def test_log1mexp_is_finite_with_finite_gradients_near_zero():
    from decimal import Decimal, getcontext

    getcontext().prec = 80
    points = [-1e-30, -1e-9, -0.5, -math.log(2), -50.0]
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(points, dtype=dtype, requires_grad=True)
        y = log1mexp(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(y).all() and torch.isfinite(grad).all(), (dtype, y, grad)
        exact = [float((1 - Decimal(p).exp()).ln()) for p in points]  # log(1 - exp(x)) in 80 digits
        assert torch.allclose(y.double(), torch.tensor(exact, dtype=torch.float64), rtol=1e-6, atol=0), dtype
        d_exact = [-1 / float(Decimal(-p).exp() - 1) for p in points]  # d/dx log(1 - e^x) = -1 / (e^-x - 1)
        assert torch.allclose(grad.double(), torch.tensor(d_exact, dtype=torch.float64), rtol=1e-5, atol=0), dtype
    # ORPO at a chosen answer the policy is already almost sure of: a finite gradient, not NaN
    pc = torch.tensor([-1e-9, -2.0], requires_grad=True)
    orpo_loss(pc, torch.tensor([-3.0, -4.0]), torch.tensor([1, 2]), torch.tensor([1, 2])).loss.backward()
    assert torch.isfinite(pc.grad).all()


# ----------------------------------------------------------------------------------------------------------------
# SafeDPO


def test_safedpo_without_safety_labels_is_dpo():
    pc, pr, rc, rr, _, _ = _pairs(10)
    safe = torch.zeros(B, dtype=torch.bool)
    want = dpo_loss(pc, pr, rc, rr, beta=0.1)
    for labels in [(None, None), (safe, safe)]:
        out = safedpo_loss(pc, pr, rc, rr, *labels, beta=0.1, delta=10.0)
        assert out.metrics["kept"].all() and not out.metrics["swapped"].any()
        for a, b in zip(out[1:4], want[1:4]):  # losses and rewards
            assert torch.equal(a, b)
        assert torch.allclose(out.loss, want.loss, rtol=0, atol=1e-12)


def test_safedpo_reorders_drops_and_adds_the_margin_only_on_safety_pairs():
    pc, pr, rc, rr, _, _ = _pairs(11)
    beta, delta = 0.1, 10.0
    chosen_unsafe = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    rejected_unsafe = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    out = safedpo_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=beta, delta=delta)
    losses, cr, rj, kept = out.losses, out.chosen_rewards, out.rejected_rewards, out.metrics["kept"]
    _, dpo, dpo_cr, dpo_rj, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    _, swapped, swapped_cr, swapped_rj, _ = dpo_loss(pr, pc, rr, rc, beta=beta)
    with_margin = lambda w, l: -F.logsigmoid(w - l - delta)  # noqa: E731, on beta * log-ratios
    assert kept.tolist() == [True, True, True, False, True, True, True, False]
    assert out.metrics["swapped"].tolist() == [False, False, True, False, False, False, True, False]
    assert torch.allclose(out.loss, losses.sum() / 6)  # the mean over the kept pairs
    for i in (0, 4):  # both safe: plain DPO, no margin
        assert torch.allclose(losses[i], dpo[i]) and cr[i] == dpo_cr[i]
    for i in (1, 5):  # safe chosen, unsafe rejected: DPO plus the margin
        assert torch.allclose(losses[i], with_margin(dpo_cr[i], dpo_rj[i])) and losses[i] > dpo[i]
    for i in (2, 6):  # unsafe chosen, safe rejected: swapped, then the margin
        assert torch.allclose(losses[i], with_margin(swapped_cr[i], swapped_rj[i]))
        assert cr[i] == swapped_cr[i] and rj[i] == swapped_rj[i]
    for i in (3, 7):  # both unsafe: dropped
        assert losses[i] == 0
    # swapping a pair and its labels changes nothing: T only looks at which response is safe
    again = safedpo_loss(pr, pc, rr, rc, rejected_unsafe, chosen_unsafe, beta=beta, delta=delta).losses
    assert torch.allclose(again[[1, 2, 5, 6]], losses[[1, 2, 5, 6]])
    # the margin is the only place delta enters
    no_margin = safedpo_loss(pc, pr, rc, rr, chosen_unsafe, rejected_unsafe, beta=beta, delta=0.0).losses
    assert torch.allclose(no_margin[[0, 4]], losses[[0, 4]]) and (no_margin[[1, 2, 5, 6]] < losses[[1, 2, 5, 6]]).all()


# ----------------------------------------------------------------------------------------------------------------
# sequence log-probs


def test_sequence_logps_by_hand():
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :2] = IGNORE_INDEX
    labels[1] = IGNORE_INDEX
    sums, n = sequence_logps(logits, labels)
    for b in range(3):
        terms = [logits[b, t].log_softmax(-1)[labels[b, t]] for t in range(6) if labels[b, t] != IGNORE_INDEX]
        assert torch.allclose(sums[b], torch.stack(terms).sum() if terms else torch.tensor(0.0), atol=1e-6)
        assert n[b] == len(terms)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_linear_sequence_logps_equals_sequence_logps_of_the_logits(chunk):
    g = torch.Generator().manual_seed(13)
    hidden = torch.randn(3, 10, 8, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (3, 10), generator=g)
    labels[0, :4] = IGNORE_INDEX  # a prompt, a fully ignored row, trailing padding
    labels[1] = IGNORE_INDEX
    labels[2, -3:] = IGNORE_INDEX
    upstream = torch.randn(3, generator=g)  # a different gradient per sequence, as a DPO loss gives
    want, want_n = sequence_logps(hidden @ weight.T, labels)
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, weight))
    got, got_n = linear_sequence_logps(hidden, weight, labels, chunk=chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    assert torch.allclose(got, want, atol=1e-5) and torch.equal(got_n, want_n)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # the reference model's pass
        assert torch.allclose(linear_sequence_logps(hidden, weight, labels, chunk=chunk)[0], want, atol=1e-5)
    nothing = torch.full_like(labels, IGNORE_INDEX)
    sums, n = linear_sequence_logps(hidden, weight, nothing)
    assert sums.abs().sum() == 0 and n.sum() == 0
