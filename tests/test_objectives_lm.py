"""The language-modelling loss and its normalisation under gradient accumulation, IGNORE_INDEX, and the chunked
per-token log-probs of the head."""

import ast
from pathlib import Path

import pytest
import torch

from alignlab.model import CausalLM, preset
from alignlab.objectives import IGNORE_INDEX, chunked_token_logps, linear_cross_entropy, lm_loss, token_entropy


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


def test_ignore_index_is_defined_once():
    """Labels that no loss learns are IGNORE_INDEX of objectives/lm.py everywhere: no module assigns its own, and
    no code writes -100 in its place."""
    package = Path(__file__).resolve().parents[1] / "alignlab"
    found = []
    for path in sorted(package.rglob("*.py")):
        where = str(path.relative_to(package.parent))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in targets):
                found.append((where, node.lineno, "IGNORE_INDEX ="))
            if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                    and isinstance(node.operand, ast.Constant) and node.operand.value == 100):
                found.append((where, node.lineno, "-100"))
    assert [(where, what) for where, _, what in found] == [("alignlab/objectives/lm.py", "IGNORE_INDEX ="),
                                                           ("alignlab/objectives/lm.py", "-100")], found
    assert found[0][1] == found[1][1]  # the one line IGNORE_INDEX = -100


# --- per-token log-probs through the head, a chunk at a time ---------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 11, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logps_equals_the_log_softmax_of_the_logits(chunk, temperature):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 13, (11,), generator=g)
    upstream = torch.randn(11, generator=g)
    logits = (h @ weight.T) / temperature
    want = logits.log_softmax(-1).gather(1, y[:, None]).squeeze(1)
    want_grads = torch.autograd.grad((want * upstream).sum(), (h, weight))
    got, entropy = chunked_token_logps(h, weight, y, temperature, entropy=True, chunk=chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), (h, weight))
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(entropy, token_entropy(logits.detach()), atol=1e-5) and not entropy.requires_grad
    assert chunked_token_logps(h, weight, y, temperature, chunk=chunk)[1] is None
    with torch.no_grad():
        assert torch.allclose(chunked_token_logps(h, weight, y, temperature, chunk=chunk)[0], want, atol=1e-5)
    nothing, ent = chunked_token_logps(h[:0], weight, y[:0], entropy=True)
    assert nothing.shape == ent.shape == (0,) and nothing.requires_grad  # still in the graph


@pytest.mark.parametrize("chunk, recomputed", [(4, True), (11, False)])
def test_chunked_token_logps_recomputes_the_logits_only_with_several_chunks(monkeypatch, chunk, recomputed):
    """With gradients on, each chunk is checkpointed (its logits recomputed in the backward) only when there are
    several chunks; a single chunk keeps its logits."""
    from alignlab.objectives import logprobs

    calls = []
    real = logprobs._head_logps
    monkeypatch.setattr(logprobs, "_head_logps", lambda *args: calls.append(len(args[0])) or real(*args))
    g = torch.Generator().manual_seed(4)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, generator=g)
    logps, _ = chunked_token_logps(h, weight, torch.randint(0, 13, (11,), generator=g), chunk=chunk)
    forward = list(calls)
    logps.sum().backward()
    assert sum(forward) == 11 and (sorted(calls[len(forward):]) == sorted(forward)) == recomputed
