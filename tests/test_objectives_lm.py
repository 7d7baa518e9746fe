"""The language-modelling loss and its normalisation under gradient accumulation."""

import pytest
import torch

from alignlab.model import CausalLM, preset
from alignlab.objectives import IGNORE_INDEX, linear_cross_entropy, lm_loss


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


@pytest.mark.parametrize("chunk", [1, 7, 1024])
@pytest.mark.parametrize("ignored,given_n", [(False, False), (True, False), (True, True)])
def test_linear_cross_entropy_equals_lm_loss_of_the_logits(chunk, ignored, given_n):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 10, 8, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (3, 10), generator=g)
    if ignored:  # a prompt, a fully ignored row, trailing padding
        labels[0, :4] = IGNORE_INDEX
        labels[1] = IGNORE_INDEX
        labels[2, -3:] = IGNORE_INDEX
    n = 40 if given_n else None  # e.g. the target count of a whole accumulated batch
    want = lm_loss(hidden @ weight.T, labels, n)
    want_grads = torch.autograd.grad(2.5 * want, (hidden, weight))  # not the root: scaled grad_out
    got = linear_cross_entropy(hidden, weight, labels, n, chunk=chunk)
    got_grads = torch.autograd.grad(2.5 * got, (hidden, weight))
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    if ignored:
        assert got_grads[0][1].abs().max() == 0  # an ignored row gets no gradient


def test_linear_cross_entropy_tied_weight_and_no_grad():
    """The head weight can be the embedding matrix (tied): both gradient paths add up."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(13, 8, generator=g, requires_grad=True)
    ids = torch.randint(0, 13, (2, 6), generator=g)
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE_INDEX)], dim=1)
    losses, grads = [], []
    for fn in (lambda h: lm_loss(h @ emb.T, labels), lambda h: linear_cross_entropy(h, emb, labels, chunk=5)):
        h = torch.tanh(emb[ids])
        loss = fn(h)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, emb)[0])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, emb, labels), losses[0], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied head
def test_model_hidden_states_with_linear_cross_entropy_trains_like_the_logits(arch):
    torch.manual_seed(0)
    model = CausalLM(preset(arch, vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=16))
    ids = torch.randint(0, 50, (2, 12))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE_INDEX)], dim=1)
    assert torch.equal(model.lm_head(model.hidden_states(ids)), model(ids))
    results = []
    for fn in (lambda: lm_loss(model(ids), labels),
               lambda: linear_cross_entropy(model.hidden_states(ids), model.lm_head.weight, labels, chunk=7)):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    assert torch.allclose(got, want, atol=1e-6)
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-6, rtol=1e-5), name
