"""Debug a training loop: the losses turn NaN; find and fix what is wrong so the model trains.

This file trains a small bigram language model (token embeddings and an output head, SGD with momentum) on
sequences of 1 to 16 tokens drawn from a random Markov chain. `train(seed)` returns the loss of each of its STEPS
steps. Run it (`python drills/nan_debug.py`) and look:

    Symptom: the loss is NaN from the very first step. And once that is gone, it is still not right.

The loop has more than one bug, each of them a mistake that happens in real training code. Fix them; change
nothing else: the data, the model, the optimizer, STEPS, BATCH, BASE_LR and WARMUP are right as they are. The
check runs train(0) and train(1) and passes when every loss is finite and the mean of the last 20 losses is below
1.8 (the loss of a uniform guess is ln 12 = 2.48; the fixed loop ends near 1.3-1.5). When it fails it says which
symptom remains: a NaN at step k, a loss that went up, or a loss that stalled.

Target: 15 minutes.

Rules: no alignlab imports; torch and the standard library only. Grade it with `alignlab lab drill nan_debug
--check` (it prints the time since you started); `alignlab lab drill nan_debug --solution` shows the fixed loop,
with the bugs named.
"""

import torch

V = 12  # vocabulary
MAX_LEN = 16  # longest sequence
N_SEQ = 512  # sequences in the data set
BATCH = 32
STEPS = 300
BASE_LR = 0.5
WARMUP = 10  # steps of linear warmup


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of 1..MAX_LEN tokens drawn from a random bigram chain: tokens [N_SEQ, MAX_LEN] (padded with 0) and
    lengths [N_SEQ]."""
    g = torch.Generator().manual_seed(seed)
    transitions = (2.0 * torch.randn(V, V, generator=g)).softmax(dim=-1)  # (V, V): row a is p(next | a)
    lengths = torch.randint(1, MAX_LEN + 1, (N_SEQ,), generator=g)
    tokens = torch.zeros(N_SEQ, MAX_LEN, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, V, (N_SEQ,), generator=g)
    for t in range(1, MAX_LEN):
        tokens[:, t] = torch.multinomial(transitions[tokens[:, t - 1]], 1, generator=g)[:, 0]
    tokens[torch.arange(MAX_LEN) >= lengths[:, None]] = 0  # padding
    return tokens, lengths


def lr_at(step: int) -> float:
    """Linear warmup from BASE_LR / WARMUP to BASE_LR over the first WARMUP steps, then constant."""
    return BASE_LR * (step + 1) / WARMUP


def train(seed: int) -> list[float]:
    """Train a bigram language model (a [V, V] table of logits, through a small embedding) with SGD; returns the
    loss of every step."""
    tokens, lengths = make_data(seed)
    g = torch.Generator().manual_seed(seed + 1)
    emb = (0.1 * torch.randn(V, 16, generator=g)).requires_grad_()  # (V, 16)
    head = (0.1 * torch.randn(V, 16, generator=g)).requires_grad_()  # (V, 16)
    opt = torch.optim.SGD([emb, head], lr=BASE_LR, momentum=0.9)
    losses = []
    for step in range(STEPS):
        rows = torch.randint(0, N_SEQ, (BATCH,), generator=g)
        x, y = tokens[rows, :-1], tokens[rows, 1:]  # (BATCH, MAX_LEN - 1): predict token t + 1 from token t
        target = torch.arange(1, MAX_LEN) < lengths[rows, None]  # (BATCH, MAX_LEN - 1): y is a real token
        logits = emb[x] @ head.T  # (BATCH, MAX_LEN - 1, V)
        logp = logits.log_softmax(dim=-1).gather(-1, y[..., None])[..., 0]  # (BATCH, MAX_LEN - 1)
        loss = (-(logp * target).sum(1) / target.sum(1)).mean()  # mean per sequence, then over the batch
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    losses = train(0)
    print(" ".join(f"{x:.3f}" for x in losses[::10]), f"... final {losses[-1]:.3f}")
