"""The shared-prompt forward of GRPO's groups (CausalLM.shared_prefix_hidden_states, completion_logps with
prompt_index): each prompt computed once per group gives the plain forward's log-probs, entropies and gradients,
with prompts of different lengths, completions of different lengths, cut groups, LoRA and activation
checkpointing; and it really runs fewer tokens."""

from __future__ import annotations

import pytest
import torch

from alignlab.lora import LoraConfig, apply_lora
from alignlab.model import CausalLM, preset
from alignlab.recipes.grpo import GRPOConfig, grpo_step, grpo_weight
from alignlab.rl.buffer import RolloutBuffer
from alignlab.rl.collect import RolloutConfig
from alignlab.rl.rollout import _shared_prompt_hidden, completion_logps, prompt_groups, rollout_logps

VOCAB, PAD = 61, 0


def tiny_model(arch: str = "llama", lora: bool = False, checkpointing: bool = False, **overrides) -> CausalLM:
    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    model = CausalLM(preset(arch, **{**kw, **overrides}))
    if lora:  # init False: A and B both random, so the adapter changes the outputs and both get gradients
        apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.gradient_checkpointing = checkpointing
    return model.train()


def grouped_rows(prompt_lens: list[int], group_sizes: list[int], seed: int = 1) -> dict[str, torch.Tensor]:
    """A micro-batch as RolloutBuffer gives it: group i = group_sizes[i] rows answering prompt i (prompt_lens[i]
    random tokens), completions of 0..7 random tokens, right-padded with PAD and trimmed to the longest row."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, VOCAB, (n,), generator=g) for n in prompt_lens]
    index = torch.arange(len(group_sizes)).repeat_interleave(torch.tensor(group_sizes))
    completions = [torch.randint(1, VOCAB, (int(torch.randint(0, 8, (), generator=g)),), generator=g) for _ in index]
    completions[0] = torch.randint(1, VOCAB, (7,), generator=g)  # C = 7
    N, C = len(index), max(len(c) for c in completions)
    T = max(prompt_lens[i] + len(c) for i, c in zip(index.tolist(), completions))
    input_ids, completion_ids = torch.full((N, T), PAD), torch.full((N, C), PAD)
    completion_mask = torch.zeros(N, C)
    for r, (i, c) in enumerate(zip(index.tolist(), completions)):
        seq = torch.cat([prompts[i], c])
        input_ids[r, :len(seq)] = seq
        completion_ids[r, :len(c)] = c
        completion_mask[r, :len(c)] = 1.0
    return {"input_ids": input_ids, "prompt_lens": torch.tensor([prompt_lens[i] for i in index.tolist()]),
            "completion_ids": completion_ids, "completion_mask": completion_mask, "prompt_index": index}


def logps_and_grads(model, rows: dict, shared: bool, chunk: int | None = None):
    """Per-token log-probs and entropies, and the gradients of a random weighting of the log-probs."""
    model.zero_grad(set_to_none=True)
    logps, entropy = completion_logps(model, rows["input_ids"], rows["prompt_lens"], rows["completion_ids"],
                                      rows["completion_mask"], temperature=0.7, entropy=True, chunk=chunk,
                                      prompt_index=rows["prompt_index"] if shared else None)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(2))
    (logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps.detach(), entropy, grads


def assert_same(plain, shared):
    (lp0, ent0, g0), (lp1, ent1, g1) = plain, shared
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys() and g0
    scale = max(float(g.norm()) for g in g0.values())
    for name in g0:
        if name.endswith("k_proj.bias"):  # the same shift of every key's score: its true gradient is 0
            assert max(float(g0[name].norm()), float(g1[name].norm())) < 1e-5 * scale, name
            continue
        assert g0[name].norm() > 0, name
        err = float((g1[name] - g0[name]).norm() / g0[name].norm())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointing"])
@pytest.mark.parametrize("sizes", [[4, 4, 4], [3, 1, 4]], ids=["G4", "cut-groups"])
def test_shared_prompts_give_the_plain_logps_entropies_and_gradients(lora, checkpointing, sizes):
    model = tiny_model(lora=lora, checkpointing=checkpointing)
    rows = grouped_rows([5, 11, 2], sizes)
    assert prompt_groups(rows["prompt_index"]).tolist() == sizes
    assert_same(logps_and_grads(model, rows, shared=False), logps_and_grads(model, rows, shared=True, chunk=5))
    assert (rows["completion_mask"].sum(-1) == 0).any()  # an empty completion is in the batch too


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_groups_of_one_through_the_shared_forward(lora):
    """G = 1: completion_logps keeps the plain forward (nothing to share), and the shared forward itself still
    gives the plain hidden states and gradients."""
    model = tiny_model(lora=lora)
    rows = grouped_rows([5, 11, 2], [1, 1, 1])
    assert prompt_groups(rows["prompt_index"]) is None
    N, C = rows["completion_ids"].shape

    def hidden_and_grads(shared: bool):
        model.zero_grad(set_to_none=True)
        if shared:
            h = _shared_prompt_hidden(model, rows["input_ids"], rows["prompt_lens"], rows["completion_ids"],
                                      torch.ones(N, dtype=torch.long))
        else:
            full = model(rows["input_ids"], head=False)
            pos = (rows["prompt_lens"][:, None] - 1 + torch.arange(C)).clamp(max=full.shape[1] - 1)
            h = full.gather(1, pos[..., None].expand(N, C, full.shape[2]))
        m = rows["completion_mask"][..., None]
        (h * m * torch.randn(h.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
        return (h * m).detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (h0, g0), (h1, g1) = hidden_and_grads(False), hidden_and_grads(True)
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        assert float((g1[name] - g0[name]).norm() / g0[name].norm()) < 1e-5, name


@pytest.mark.parametrize("arch, overrides", [
    ("gpt2", dict(attn_impl="naive")),  # learned positions, biases, LayerNorm
    ("qwen3", dict(attn_impl="tiled")),  # q/k norms
    ("mistral", dict(sliding_window=6)),  # a window shorter than prompt + completion
], ids=["gpt2-naive", "qwen3-tiled", "window"])
def test_other_architectures_and_attention_paths(arch, overrides):
    model = tiny_model(arch, checkpointing=True, **overrides)
    rows = grouped_rows([5, 11, 2], [4, 4, 4], seed=4)
    assert_same(logps_and_grads(model, rows, shared=False), logps_and_grads(model, rows, shared=True))


def test_each_prompt_is_run_once():
    """The tokens the model embeds: B * P (prompts, left-padded to the longest) + N * (C - 1) (completions) instead
    of N * T."""
    model = tiny_model()
    rows = grouped_rows([5, 11, 2], [4, 4, 4])
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    logps_and_grads(model, rows, shared=True)
    (N, T), C = rows["input_ids"].shape, rows["completion_ids"].shape[1]
    assert seen == [(3, 11), (N, C - 1)]
    assert 3 * 11 + N * (C - 1) < 0.6 * N * T
    seen.clear()
    logps_and_grads(model, rows, shared=False)
    assert seen == [(N, T)]


def test_rows_of_a_group_must_hold_the_same_prompt():
    model = tiny_model()
    rows = grouped_rows([5, 5, 2], [4, 4, 4])
    rows["prompt_index"] = torch.tensor([0] * 4 + [1] * 8)  # groups 1 and 2 have different prompts
    with pytest.raises(ValueError, match="same prompt"):
        logps_and_grads(model, rows, shared=True)


def test_rollout_logps_share_prompts_across_micro_batches_that_cut_groups():
    """pi_old / pi_ref: no gradients, eval mode, micro-batches of 5 rows cutting groups of 4."""
    model = tiny_model(lora=True)
    rows = grouped_rows([5, 11, 2, 7], [4, 4, 4, 4], seed=5)
    plain = rollout_logps(model, {k: v for k, v in rows.items() if k != "prompt_index"}, 0.7, micro_batch=5)
    shared = rollout_logps(model, rows, 0.7, micro_batch=5)
    assert model.training
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("grad_accum", [1, 5])
def test_a_grpo_step_gives_the_same_loss_and_gradient(algorithm, grad_accum):
    """grpo_step on RolloutBuffer's micro-batches (5 of them cut the groups of 4): the same summed loss and gradient
    with the rows' prompt_index (shared prompts) as without it (the plain forward)."""
    rows = grouped_rows([5, 11, 2, 7], [4, 4, 4, 4], seed=6)
    N, C = rows["completion_ids"].shape
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(N, C, generator=g) * 0.1 - 4.0
    rows.update(advantages=torch.randn(N, generator=g), loss_mask=rows["completion_mask"].clone(),
                ref_logps=ref, old_logps=ref + 0.05 * torch.randn(N, C, generator=g))
    cfg = GRPOConfig(algorithm=algorithm, beta=0.04, num_iterations=2, rollout=RolloutConfig(temperature=0.7))
    cfg.train.grad_accum = grad_accum
    source = RolloutBuffer(None, None, None, None, torch.device("cpu"), parts=grad_accum, passes=1)  # micro_batch
    model = tiny_model(checkpointing=True)
    step, normaliser = grpo_step(cfg), grpo_weight(cfg)(rows)

    def run(shared: bool):
        source.buffer = rows if shared else {k: v for k, v in rows.items() if k != "prompt_index"}
        model.zero_grad(set_to_none=True)
        total = 0.0
        for part in range(grad_accum):
            loss, metrics = step(model, source.micro_batch(part), normaliser)
            loss.backward()
            total += float(loss.detach())
        return total, {n: p.grad.clone() for n, p in model.named_parameters()}, metrics

    (loss0, g0, m0), (loss1, g1, m1) = run(False), run(True)
    assert abs(loss1 - loss0) <= 1e-5 * max(1.0, abs(loss0)) and loss0 != 0
    for name in g0:
        assert float((g1[name] - g0[name]).norm() / g0[name].norm()) < 1e-5, name
    assert m1["entropy"] == pytest.approx(m0["entropy"], abs=1e-5)
