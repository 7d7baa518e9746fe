"""Model merging, tensor by tensor: linear averaging, task arithmetic, TIES, DARE and SLERP.

Fine-tunes of one base differ from it by a task vector, τ_i = θ_i - θ_0 (Ilharco et al. 2022). Adding task
vectors to the base adds skills; the methods differ in how they combine them:

    linear            θ = Σ_i w_i θ_i  (/ Σ_i w_i)                                     weights only, no base
    task_arithmetic   θ = θ_0 + λ Σ_i w_i τ_i
    ties              trim every τ_i to its largest entries, elect a sign per entry, average the agreeing ones
    dare_linear       drop entries of every τ_i at random, rescale the rest, then task arithmetic
    dare_ties         the same drop, then TIES' sign election and disjoint mean
    slerp             two models, along the great circle between them (factor t)

The task-vector methods share one pipeline (`combine`), as mergekit's "generalized task arithmetic" does:

    τ̂_i = sparsify(τ_i)                  none | trim (TIES: top-k by magnitude) | drop (DARE: Bernoulli mask)
    γ   = sign(Σ_i w_i τ̂_i)              elected sign per entry (TIES), +1 where the sum is 0
    a_i = [sign(w_i τ̂_i) = γ]            agreement mask (all ones without sign election)
    τ   = Σ_i a_i w_i τ̂_i  /  Σ_i a_i w_i             the division only with normalize (0 / 0 -> 0)
    θ   = θ_0 + λ τ

Parameter names and defaults are mergekit's: `weight` per model (default 1 here), `density` the fraction of
entries kept (DARE's drop probability is p = 1 - density), `normalize` (default on for linear and ties, off
for the others), `lambda` (λ, default 1), `t` for slerp (0 gives the first model, 1 the second). One departure:
DARE rescales the kept entries by 1 / (1 - p) as the paper does, where mergekit rescales each tensor to keep
its L1 norm; the two agree in expectation, not entry by entry.

Every function takes float tensors of one shape and returns a new one in float32 (float64 stays float64).
"""

from __future__ import annotations

import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp")
NEEDS_BASE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")  # they merge task vectors θ_i - θ_0
USES_DENSITY = ("ties", "dare_linear", "dare_ties")
DEFAULT_NORMALIZE = {"linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False,
                     "dare_ties": False}
# the steps of `combine` each task-vector method takes
STEPS = {"task_arithmetic": dict(sparsify=None, elect=False), "ties": dict(sparsify="trim", elect=True),
         "dare_linear": dict(sparsify="drop", elect=False), "dare_ties": dict(sparsify="drop", elect=True)}


def _work(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _weights(weights, n: int, like: torch.Tensor) -> torch.Tensor:
    """The weights as a [n, 1, 1, ...] tensor that broadcasts against a stack of n tensors like `like`."""
    w = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"{n} tensors but {w.numel()} weights")
    return w.to(like.dtype).view(n, *([1] * like.dim()))


# ----------------------------------------------------------------------------------------------------------------
# Linear


def linear(tensors: list[torch.Tensor], weights: list[float] | None = None, normalize: bool = True) -> torch.Tensor:
    """Weighted average of models ("model soups", Wortsman et al. 2022, arXiv:2203.05482):

        θ = Σ_i w_i θ_i / Σ_i w_i          (normalize=True, mergekit's default)
        θ = Σ_i w_i θ_i                    (normalize=False)

    Raises ValueError when normalizing weights that sum to 0.
    """
    x = torch.stack([_work(t) for t in tensors])  # (N, *shape)
    w = _weights(weights, len(tensors), x[0])  # (N, 1, ...)
    out = (w * x).sum(0)
    if normalize:
        total = w.sum()
        if total.abs() < 1e-8:
            raise ValueError(f"linear merge: the weights sum to {total.item():g}; cannot normalize by it")
        out = out / total
    return out


# ----------------------------------------------------------------------------------------------------------------
# Task vectors: sparsify, elect, combine


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' first step (Yadav et al. 2023, arXiv:2306.01708, "trim"): keep the k = max(1, ⌊density · n⌋)
    entries of largest magnitude, zero the rest. density 1 keeps everything."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(delta)


def drop(delta: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE (Yu et al. 2023, arXiv:2311.03099, "drop and rescale"): each entry survives with probability
    1 - p = density, and survivors are divided by 1 - p, so that E[drop(τ)] = τ:

        m_j ~ Bernoulli(1 - p),     τ̂_j = m_j τ_j / (1 - p)

    `generator` (a seeded torch.Generator) makes the mask reproducible. density 1 keeps everything."""
    if density >= 1:
        return delta
    keep = torch.bernoulli(torch.full_like(delta, density), generator=generator)  # m, 1 with probability 1 - p
    return delta * keep / density


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """TIES' second and third steps: the sign with the larger total mass wins each entry, and an entry of a
    model joins the mean only if it has that sign (a zero, e.g. a trimmed entry, never joins).

        γ = sign(Σ_i w_i τ̂_i)   (+1 where the sum is 0),     a_i = [sign(w_i τ̂_i) = γ]

    weighted: the stacked w_i τ̂_i, (N, *shape). Returns the agreement mask a, (N, *shape), bool."""
    elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(weighted.dtype)  # γ, (*shape)
    return weighted.sign() == elected


def combine(deltas: list[torch.Tensor], weights: list[float] | None = None, *, sparsify: str | None = None,
            density: float = 1.0, elect: bool = False, normalize: bool = False, lam: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The merged task vector λ τ of the module docstring's pipeline, from the task vectors τ_i:

        τ̂_i = sparsify(τ_i)                          None | "trim" (TIES) | "drop" (DARE)
        a_i = elect_sign(w τ̂)_i  if elect  else 1
        τ   = Σ_i a_i w_i τ̂_i / (Σ_i a_i w_i  if normalize  else 1)      (a zero divisor counts as 1)

    Add the result to the base: θ = θ_0 + λ τ."""
    if sparsify == "trim":
        deltas = [trim(_work(d), density) for d in deltas]
    elif sparsify == "drop":
        deltas = [drop(_work(d), density, generator) for d in deltas]
    elif sparsify is not None:
        raise ValueError(f"sparsify must be None, 'trim' or 'drop', got {sparsify!r}")
    x = torch.stack([_work(d) for d in deltas])  # τ̂, (N, *shape)
    w = _weights(weights, len(deltas), x[0])  # (N, 1, ...)
    weighted = w * x  # w_i τ̂_i
    agree = elect_sign(weighted) if elect else torch.ones_like(weighted, dtype=torch.bool)
    merged = torch.where(agree, weighted, 0).sum(0)
    if normalize:  # TIES' disjoint mean: divide by the weight of the models that agree on each entry
        divisor = torch.where(agree, w, 0).sum(0)
        merged = merged / torch.where(divisor.abs() < 1e-8, 1.0, divisor)
    return lam * merged


def _task_vectors(base: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [_work(t) - _work(base) for t in tensors]  # τ_i = θ_i - θ_0


def task_arithmetic(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float] | None = None,
                    lam: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2022, arXiv:2212.04089): add the weighted task vectors to the base.

        θ = θ_0 + λ Σ_i w_i (θ_i - θ_0)          (normalize: divided by Σ_i w_i)
    """
    return _work(base) + combine(_task_vectors(base, tensors), weights, normalize=normalize, lam=lam)


def ties(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float] | None = None,
         density: float = 1.0, lam: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023, arXiv:2306.01708): trim, elect sign, disjoint merge.

        τ̂_i = trim(θ_i - θ_0, density),   γ = sign(Σ_i w_i τ̂_i),   A = {i : sign(w_i τ̂_i) = γ}
        θ   = θ_0 + λ Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i          (per entry; 0 where A is empty)
    """
    return _work(base) + combine(_task_vectors(base, tensors), weights, sparsify="trim", density=density,
                                 elect=True, normalize=normalize, lam=lam)


def dare_linear(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float] | None = None,
                density: float = 1.0, lam: float = 1.0, normalize: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE then task arithmetic (Yu et al. 2023, arXiv:2311.03099):

        θ = θ_0 + λ Σ_i w_i drop(θ_i - θ_0, density)
    """
    return _work(base) + combine(_task_vectors(base, tensors), weights, sparsify="drop", density=density,
                                 normalize=normalize, lam=lam, generator=generator)


def dare_ties(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float] | None = None,
              density: float = 1.0, lam: float = 1.0, normalize: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE's drop in place of TIES' trim, then TIES' sign election:

        τ̂_i = drop(θ_i - θ_0, density),   θ = θ_0 + λ Σ_{i∈A} w_i τ̂_i   (/ Σ_{i∈A} w_i with normalize)
    """
    return _work(base) + combine(_task_vectors(base, tensors), weights, sparsify="drop", density=density,
                                 elect=True, normalize=normalize, lam=lam, generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# SLERP


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) between two models, each tensor taken as one vector.

    With â = a / ‖a‖, b̂ = b / ‖b‖ and Ω = arccos(â · b̂), the angle between them:

        θ = sin((1 - t) Ω) / sin Ω · a + sin(t Ω) / sin Ω · b            t = 0: a,  t = 1: b

    The coefficients come from the directions, and apply to the tensors as they are (norms included), as
    mergekit does. When |â · b̂| > dot_threshold the vectors are nearly colinear (sin Ω ≈ 0) and the result
    falls back to linear interpolation, θ = (1 - t) a + t b.
    """
    x, y = _work(a), _work(b)
    na, nb = x.norm(), y.norm()
    dot = ((x / (na if na > eps else 1)) * (y / (nb if nb > eps else 1))).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return (1 - t) * x + t * y
    omega = torch.arccos(dot)
    return (torch.sin((1 - t) * omega) * x + torch.sin(t * omega) * y) / torch.sin(omega)


# ----------------------------------------------------------------------------------------------------------------
# One tensor, any method


def merge_tensor(method: str, tensors: list[torch.Tensor], base: torch.Tensor | None = None,
                 weights: list[float] | None = None, *, density: float = 1.0, lam: float = 1.0, t: float = 0.5,
                 normalize: bool | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """`method` (one of METHODS) on one tensor of every model; normalize None means the method's default.
    linear and slerp ignore the base; slerp takes exactly two tensors."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    if method == "slerp":
        if len(tensors) != 2:
            raise ValueError(f"slerp merges exactly 2 models, got {len(tensors)}")
        return slerp(tensors[0], tensors[1], t)
    normalize = DEFAULT_NORMALIZE[method] if normalize is None else normalize
    if method == "linear":
        return linear(tensors, weights, normalize)
    if base is None:
        raise ValueError(f"{method} merges task vectors θ_i - θ_0: it needs the base model")
    return _work(base) + combine(_task_vectors(base, tensors), weights, density=density, normalize=normalize,
                                 lam=lam, generator=generator, **STEPS[method])


def merge_deltas(method: str, base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float] | None = None,
                 *, density: float = 1.0, lam: float = 1.0, t: float = 0.5, normalize: bool | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The same as merge_tensor on the models θ_i = θ_0 + Δ_i, given the deltas Δ_i themselves (LoRA's s B A),
    so that no Δ_i is recovered by a subtraction. One difference: linear averages the deltas and keeps the base,

        θ = θ_0 + Σ_i w_i Δ_i  (/ Σ_i w_i)

    which is merge_tensor's linear with normalize (the default), and PEFT's weighted adapter sum without it.
    slerp runs on the full weights θ_0 + Δ_i."""
    if method == "slerp":
        return merge_tensor("slerp", [_work(base) + _work(d) for d in deltas], t=t)
    normalize = DEFAULT_NORMALIZE.get(method, False) if normalize is None else normalize
    if method == "linear":
        return _work(base) + linear(deltas, weights, normalize)
    if method not in STEPS:
        raise ValueError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    return _work(base) + combine(deltas, weights, density=density, normalize=normalize, lam=lam,
                                 generator=generator, **STEPS[method])
