"""The language-modelling loss and its normalisation under gradient accumulation."""

import torch

from alignlab.objectives import IGNORE_INDEX, lm_loss


def test_equals_mean_cross_entropy_over_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :2] = IGNORE_INDEX
    by_hand = torch.stack([-logits[b, t].log_softmax(-1)[labels[b, t]]
                           for b in range(2) for t in range(5) if labels[b, t] != IGNORE_INDEX]).mean()
    assert torch.allclose(lm_loss(logits, labels), by_hand)


def test_accumulation_with_the_global_count_equals_one_big_batch():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 11, generator=g, requires_grad=True)
    x = torch.randn(4, 6, 8, generator=g)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[0, :5] = IGNORE_INDEX  # micro-batches with very different numbers of targets
    lm_loss(x @ w, labels).backward()
    full = w.grad.clone()

    w.grad = None
    n = (labels != IGNORE_INDEX).sum()
    for i in range(0, 4, 2):
        lm_loss(x[i:i + 2] @ w, labels[i:i + 2], num_tokens=n).backward()
    assert torch.allclose(w.grad, full, atol=1e-6)

    w.grad = None  # the mean of per-micro-batch means is a different (wrong) gradient
    for i in range(0, 4, 2):
        (lm_loss(x[i:i + 2] @ w, labels[i:i + 2]) / 2).backward()
    assert not torch.allclose(w.grad, full, atol=1e-4)
