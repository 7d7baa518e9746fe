"""Next-token cross-entropy, normalised by the number of target tokens.

    L = -(1 / N) * sum_{t : y_t != ignore} log softmax(z_t)[y_t]

z_t are the logits at position t and y_t the token that follows it (labels are the inputs shifted left by
one; positions that should not be learned, such as prompts and padding, carry IGNORE_INDEX).

N matters with gradient accumulation. Averaging each micro-batch's mean and then averaging those gives
every micro-batch the same weight, so a token in a short micro-batch counts more than one in a long one.
Passing N = the number of target tokens in the whole accumulated batch to every micro-batch makes the
summed gradients exactly those of one big batch.

`lm_loss` takes logits. `linear_cross_entropy` takes the final hidden states and the output matrix and
computes the same loss without ever holding the [B, T, V] logits (the training fast path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, T, V], labels [B, T] (already aligned: labels[:, t] is the target of logits[:, t]).

    num_tokens: the normaliser N; default = the target tokens in this call (a plain mean).
    """
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    if num_tokens is None:
        num_tokens = (labels != IGNORE_INDEX).sum()
    return total / num_tokens


# Rows per chunk of `linear_cross_entropy`: as many as make about this many logits (32 MB in fp32, 1024 rows
# of an 8192-token vocabulary).
CHUNK_LOGITS = 2**23


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         num_tokens: int | torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """lm_loss(hidden @ weight.T, labels, num_tokens), in value and in gradients, computed chunk by chunk.

    hidden [B, T, D] (the final normed hidden states), weight [V, D] (the output head; with tied embeddings
    the embedding matrix), labels [B, T] aligned with hidden as in `lm_loss`.

    With z = h W^T and p = softmax(z), the loss of one row and its gradient with respect to z are

        l = logsumexp(z) - z[y],        dl/dz = p - onehot(y)

    so the whole backward of the head is known as soon as a row's logits are:

        dL/dh = (1/N) (p - onehot(y)) W,        dL/dW = (1/N) sum_rows (p - onehot(y))^T h

    Per chunk of `chunk` rows (default CHUNK_LOGITS // V) this computes the logits, the loss and both
    gradients at once, then drops the logits: memory is chunk * V instead of B * T * V (67 MB for 2048 rows
    of an 8192-token vocabulary, and as much again for their gradient), and the logits are used while they
    are still in cache. The gradients wait in the autograd context until backward multiplies them by the
    incoming gradient. This is the fused linear cross-entropy of Liger Kernel (Hsu et al. 2024,
    arXiv:2410.10989). Rows labelled IGNORE_INDEX contribute nothing, so they are dropped before any
    product is computed.

    In bf16 (bf16 weights, or under torch.autocast) the three products run in bf16; the logits are cast to
    fp32 before the log-softmax, the loss sums in fp32, and dL/dW accumulates over the chunks in fp32 (in the
    weight's own dtype when it is fp32: the master weight of autocast training).
    """
    return _LinearCrossEntropy.apply(hidden, weight, labels, num_tokens, chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, num_tokens, chunk):
        need_h, need_w = ctx.needs_input_grad[:2]
        chunk = chunk or max(1, CHUNK_LOGITS // weight.shape[0])
        h, y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        valid = y != IGNORE_INDEX
        if num_tokens is None:
            num_tokens = valid.sum()
        kept = None
        if not bool(valid.all()):  # ignored rows (prompts, padding): no logits, no loss, zero gradient
            kept = valid.nonzero().squeeze(1)
            h, y = h[kept], y[kept]
        scale = 1.0 / torch.as_tensor(num_tokens, dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype  # of the products
        w, h_in = weight.to(dtype), h
        h = h.to(dtype)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        low = dtype != torch.float32 and dtype != torch.float64  # bf16: each chunk's dL/dW is added up in fp32
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s:s + chunk], y[s:s + chunk]
            logp = torch.log_softmax((hc @ w.t()).float(), dim=-1)  # [rows, V]: the only logits there are
            rows = torch.arange(len(yc), device=h.device)
            total -= logp[rows, yc].sum()
            if not (need_h or need_w):
                continue
            g = logp.exp_()  # softmax, written over log-softmax
            g[rows, yc] -= 1.0
            g = g.to(dtype)  # N dL/dz for these rows (1/N is applied to the smaller products below)
            if need_h:
                torch.mm(g, w, out=grad_h[s:s + chunk])
            if need_w:
                if low:
                    grad_w += (g.t() @ hc).float()  # cast first: an in-place add of bf16 into fp32 is 10x slower
                else:
                    grad_w.addmm_(g.t().float(), hc.float())
        if need_h:
            grad_h = grad_h.mul_(scale.to(grad_h.dtype)).to(h_in.dtype)
            if kept is not None:  # put the kept rows' gradients back among zeros
                grad_h = h_in.new_zeros(labels.numel(), h.shape[1]).index_copy_(0, kept, grad_h)
        if need_w:
            grad_w = grad_w.mul_(scale).to(weight.dtype)
        ctx.save_for_backward(grad_h.view(hidden.shape) if need_h else None, grad_w)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if not bool(grad_out == 1):  # the loss is usually the root of backward: then skip two copies
            grad_h = None if grad_h is None else grad_h * grad_out.to(grad_h.dtype)
            grad_w = None if grad_w is None else grad_w * grad_out.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def head_weight(model: torch.nn.Module) -> torch.Tensor:
    """The output head's weight [V, D] of a CausalLM, inside DDP and torch.compile wrappers."""
    return unwrap(model).lm_head.weight


def lm_step(model: torch.nn.Module, batch: dict, normaliser: float) -> torch.Tensor:
    """Next-token cross-entropy of one micro-batch, divided by the global target count (see train/trainer.py).

    The same as lm_loss(model(x), y, normaliser), computed without the [B, T, vocab] logits tensor:
    the model returns hidden states and linear_cross_entropy applies the output head chunk by chunk.
    Packed batches (alignlab.data.packing) carry position_ids that restart at each document, and the
    model's attention then stays inside each document.
    """
    hidden = model(batch["input_ids"], position_ids=batch.get("position_ids"), head=False)
    return linear_cross_entropy(hidden, head_weight(model), batch["labels"], normaliser)
