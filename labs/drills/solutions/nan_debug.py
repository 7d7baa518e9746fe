"""A reference solution of the nan_debug drill: the training loop with its three bugs fixed.

    1. the loss divided each sequence's summed log-probs by its own number of targets, and a one-token sequence
       has none: 0 / 0 = NaN. Divide the batch's sum by the batch's number of targets instead.
    2. the warmup never stopped: lr = BASE_LR * (step + 1) / WARMUP reaches 30 x BASE_LR by the last step.
       Cap it at BASE_LR.
    3. the gradients were never zeroed, so each step applied the sum of every gradient so far. Zero them.
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
    return BASE_LR * min(1.0, (step + 1) / WARMUP)  # capped at BASE_LR (fixed: bug 2)


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
        loss = -(logp * target).sum() / target.sum()  # mean over the batch's targets (fixed: bug 1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()  # else backward adds to the last step's gradients (fixed: bug 3)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    losses = train(0)
    print(" ".join(f"{x:.3f}" for x in losses[::10]), f"... final {losses[-1]:.3f}")
