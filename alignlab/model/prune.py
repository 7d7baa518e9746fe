"""Depth pruning: a smaller model made from a bigger one by removing whole transformer blocks.

ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
arXiv:2403.03853) scores block i by how much it turns the residual stream,

    BI_i = 1 - E_t[ cos(x_i[t], x_{i+1}[t]) ]        x_i: the hidden state entering block i, at token t

and removes the blocks that turn it least. Minitron (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", arXiv:2407.14679) then retrains the pruned model by distillation from the
unpruned one (recipes/distill.py): a student that starts from the teacher's own weights recovers far more in a
few hundred steps than one of the same shape trained from scratch. DistilBERT (Sanh et al. 2019,
arXiv:1910.01108) started its student the same way, from every other layer of its teacher.

The kept blocks keep their weights and their order; the embeddings, the final norm and the head are the
teacher's. The pruned model is a plain CausalLM with fewer layers (its config says how many).
"""

from __future__ import annotations

import dataclasses

import torch

from alignlab.model.transformer import CausalLM


def cosine_sum(entering: torch.Tensor, leaving: torch.Tensor) -> float:
    """sum over tokens t of cos(entering[..., t, :], leaving[..., t, :]): a block's input and output [..., dim]."""
    return torch.nn.functional.cosine_similarity(entering.float(), leaving.float(), dim=-1).sum().item()


def renumber_blocks(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """A state dict with only the blocks `keep` (sorted), renumbered 0, 1, ...: model.layers.{keep[j]}.* becomes
    model.layers.{j}.*; every other tensor (embeddings, final norm, head) stays as it is."""
    out = {}
    for name, value in state.items():
        if name.startswith("model.layers."):
            i = int(name.split(".")[2])
            if i in keep:
                out[name.replace(f"model.layers.{i}.", f"model.layers.{keep.index(i)}.", 1)] = value
        else:
            out[name] = value
    return out


@torch.no_grad()
def block_influence(model: CausalLM, batches: list[torch.Tensor]) -> list[float]:
    """BI_i for every block: 1 - the mean cosine between the hidden states entering and leaving it, over every
    token of `batches` (token ids [B, T]; right padding counts too, so pass unpadded or equal-length rows)."""
    n = model.config.n_layers
    sums, count = [0.0] * n, 0
    entering: dict[int, torch.Tensor] = {}

    def hooks(i):
        def before(_module, args):
            entering[i] = args[0]

        def after(_module, _args, out):
            sums[i] += cosine_sum(entering[i], out)
        return before, after

    handles = []
    for i, block in enumerate(model.model.layers):
        before, after = hooks(i)
        handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    was_training = model.training
    model.eval()
    try:
        for ids in batches:
            model(ids)
            count += ids.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("block_influence needs at least one token")
    return [1.0 - s / count for s in sums]


def keep_blocks(model: CausalLM, keep: list[int]) -> CausalLM:
    """A new CausalLM with only the blocks `keep` (indices into model.model.layers, kept in increasing order)."""
    n = model.config.n_layers
    keep = sorted(set(keep))
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must name blocks in [0, {n}), got {keep}")
    config = dataclasses.replace(model.config, n_layers=len(keep))
    pruned = CausalLM(config).to(model.lm_head.weight.device, model.lm_head.weight.dtype)
    pruned.load_state_dict(renumber_blocks(model.state_dict(), keep))  # block j is block keep[j]; cache layer j
    return pruned


def most_influential(influence: list[float], n_layers: int) -> list[int]:
    """ShortGPT's choice: the n_layers blocks of highest influence, in their order in the model."""
    if not 1 <= n_layers <= len(influence):
        raise ValueError(f"n_layers must be in [1, {len(influence)}], got {n_layers}")
    return sorted(sorted(range(len(influence)), key=lambda i: -influence[i])[:n_layers])


def prune_by_influence(model: CausalLM, windows: torch.Tensor, n_layers: int,
                       batch: int = 8) -> tuple[CausalLM, list[int], list[float]]:
    """ShortGPT's depth pruning in one call: block influence on token windows [N, T] (`batch` rows per forward),
    then the model cut to its n_layers most influential blocks. Returns (pruned model, kept blocks, influence)."""
    influence = block_influence(model, list(windows.split(batch)))
    keep = most_influential(influence, n_layers)
    return keep_blocks(model, keep), keep, influence
