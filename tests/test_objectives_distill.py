"""Distillation losses equal trl's GKD loss on the same random logits (forward KL, reverse KL and the generalized JSD
in between, at two temperatures, with masked positions), and ROUGE-L equals the rouge-score package's."""

from __future__ import annotations

import os
import random

import pytest
import torch

from alignlab.objectives.distill import distill_loss, forward_kl, reverse_kl, token_divergence
from alignlab.text.rouge import lcs_length, rouge_l

from .hf_models import require

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_equals_trls_generalized_jsd(beta, temperature):
    require("trl")
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(int(beta * 10 + temperature))
    student = torch.randn(3, 7, 50, generator=g) * 3
    teacher = torch.randn(3, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :3] = -100
    labels[2, 5:] = -100
    ours = distill_loss(student, teacher, labels, beta, temperature)
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_the_named_divergences_and_their_gradients():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g)
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    torch.testing.assert_close(forward_kl(s, t), (p_t * (p_t.log() - p_s.log())).sum(-1).mean())
    torch.testing.assert_close(reverse_kl(s, t), (p_s * (p_s.log() - p_t.log())).sum(-1).mean())
    assert token_divergence(t, t).abs().max() < 1e-6  # zero when the student is the teacher
    s.requires_grad_(True)
    distill_loss(s, t, beta=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        token_divergence(s, t, beta=1.5)


def test_rouge_l_equals_rouge_score():
    require("rouge_score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    g = random.Random(0)
    vocab = "write a poem about the sea short story list three ways to cook rice 42 Sea, POEM!".split()
    pairs = [("Write a poem about the sea.", "Write a short poem about a sea"), ("", "x"), ("a b c", "d e f"),
             ("Hello, World!", "hello world")]
    pairs += [(" ".join(g.choices(vocab, k=g.randint(0, 12))), " ".join(g.choices(vocab, k=g.randint(0, 12))))
              for _ in range(300)]
    for pred, ref in pairs:
        want = scorer.score(ref, pred)["rougeL"].fmeasure
        assert rouge_l(pred, ref) == pytest.approx(want, abs=1e-12), (pred, ref)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
