"""bf16 on every fast path, in its two forms: fp32 master weights under torch.autocast (training) and bf16 weights
(inference). Each bf16 result is compared with fp32, or with transformers / trl in bf16, within a stated tolerance.

bf16 keeps 8 significant bits (a rounding error of up to 2^-9 = 0.2% per value), so bf16 results are not fp32's:
losses agree to ~1e-3 relative here, gradients to a cosine similarity > 0.999 (asserted: 0.99). Where alignlab and
transformers compute the same products in bf16 the logits agree to the last bit or nearly; the bound asserted is
twice transformers' own bf16 error (its bf16 logits against its fp32 logits). Shapes are tiny so that these run on
CPUs without native bf16 too (AVX2), where bf16 is slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from alignlab.infer import Engine, SamplingParams
from alignlab.lora import LoraConfig, apply_lora
from alignlab.model import CausalLM, preset
from alignlab.model.attention import ATTENTION, causal_attention_train, naive_attention
from alignlab.model.hf import load_model
from alignlab.model.linear import Linear, PackedWeights, packed_weights
from alignlab.model.rope import apply_rope, rope_cos_sin
from alignlab.model.transformer import RMSNorm
from alignlab.objectives import IGNORE_INDEX, ClipConfig, dpo_loss, grpo_loss, linear_cross_entropy, lm_loss, lm_step
from alignlab.objectives.logprobs import chunked_token_logps
from alignlab.objectives.preference import pair_logps
from alignlab.quant import Linear4bit, quantize_model, quantize_nf4
from alignlab.rl.rollout import completion_logps, rollout_logps

from .hf_models import VOCAB, installed, make_hf_model

BF16 = torch.bfloat16
LOSS_RTOL = 1e-2  # bf16 loss vs fp32 loss, relative
GRAD_COS = 0.99  # cosine similarity of each parameter's bf16 and fp32 gradients
GRAD_RTOL = 0.1  # |g_bf16 - g_fp32| / |g_fp32| per parameter


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def tiny_model(arch: str = "llama", impl: str = "sdpa", vocab: int = 512, **kw) -> CausalLM:
    """A small random model with weights large enough (std 0.15) that attention is far from uniform and the
    logits spread over several units, so bf16 rounding has something to disturb."""
    torch.manual_seed(0)
    extra = {} if arch == "gpt2" else {"n_kv_heads": 2}
    model = CausalLM(preset(arch, vocab_size=vocab, dim=64, n_layers=2, n_heads=4, attn_impl=impl, **extra, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            else:  # norm weights around 1, biases around 0
                p.add_(torch.randn_like(p) * 0.1)
    return model.train()


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(g32: dict, g16: dict):
    """Per parameter: cosine > GRAD_COS and relative error < GRAD_RTOL. Parameters whose true gradient is ~0 (the
    k_proj bias shifts every score of a query alike, which softmax ignores) are left out by their fp32 norm."""
    assert g32.keys() == g16.keys() and g32
    scale = max(float(g.norm()) for g in g32.values())
    checked = 0
    for name, g in g32.items():
        assert g16[name].dtype == g.dtype, name
        assert torch.isfinite(g16[name]).all(), name
        if g.norm() < 1e-4 * scale:
            continue
        cos, rel = cosine(g16[name], g), float((g16[name] - g).norm() / g.norm())
        assert cos > GRAD_COS and rel < GRAD_RTOL, f"{name}: cosine {cos:.5f}, relative error {rel:.3f}"
        checked += 1
    assert checked >= len(g32) - 4


def train_step(model, batch: dict, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=BF16, enabled=bf16):
        loss = lm_step(model, batch, float((batch["labels"] != IGNORE_INDEX).sum()))
    loss.backward()
    return loss.item(), grads_of(model)


def lm_batch(B=2, T=80, vocab=512, seed=0) -> dict:
    x = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": x, "labels": F.pad(x[:, 1:], (0, 1), value=IGNORE_INDEX)}


# ----------------------------------------------------------------------------------------------------------------
# training under autocast: fp32 master weights, bf16 matmuls


@pytest.mark.parametrize("impl", ["naive", "tiled", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_autocast_train_step_matches_fp32(arch, impl):
    """T = 80 crosses the 64-query blocks of `tiled` and of the CPU training path (causal_attention_train)."""
    model, batch = tiny_model(arch, impl), lm_batch()
    l32, g32 = train_step(model, batch, bf16=False)
    l16, g16 = train_step(model, batch, bf16=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32, grads too
    assert l16 != l32 and abs(l16 - l32) <= LOSS_RTOL * abs(l32), (l16, l32)
    assert_grads_close(g32, g16)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointing"])
def test_autocast_train_step_packed_rows(checkpointing):
    """Packed rows (documents side by side, attention per document) and activation checkpointing, in bf16."""
    model, batch = tiny_model(), lm_batch(T=96)
    batch["position_ids"] = torch.cat([torch.arange(40), torch.arange(56)])[None].expand(2, -1)
    model.gradient_checkpointing = checkpointing
    l32, g32 = train_step(model, batch, bf16=False)
    l16, g16 = train_step(model, batch, bf16=True)
    assert abs(l16 - l32) <= LOSS_RTOL * abs(l32)
    assert_grads_close(g32, g16)


@pytest.mark.parametrize("impl", ["naive", "tiled", "sdpa", "train"])
@pytest.mark.parametrize("weights", ["autocast", "bf16"])
def test_attention_in_bf16(impl, weights):
    """Each attention form on bf16 q, k, v (bf16 weights) or on fp32 ones under autocast: bf16 out, and output
    and gradients close to fp32 attention over the same values."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, 100, 16, generator=g) * 2 for H in (4, 2, 2))  # GQA, two query blocks
    if weights == "bf16":
        q, k, v = q.to(BF16), k.to(BF16), v.to(BF16)
    attn = causal_attention_train if impl == "train" else (lambda *a: ATTENTION[impl](*a))
    ins16 = [t.clone().requires_grad_() for t in (q, k, v)]
    ins32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
    dout = torch.randn(2, 4, 100, 16, generator=g)
    with torch.autocast("cpu", dtype=BF16, enabled=weights == "autocast"):
        out16 = attn(*ins16)
    out32 = naive_attention(*ins32)
    assert out16.dtype == BF16
    (out16.float() * dout).sum().backward()
    (out32 * dout).sum().backward()
    assert (out16.float() - out32).abs().max() < 0.05 * out32.abs().max()
    for a, b in zip(ins16, ins32):
        assert a.grad.dtype == a.dtype
        assert cosine(a.grad, b.grad) > 0.999 and float((a.grad.float() - b.grad).norm() / b.grad.norm()) < 0.05


def test_rmsnorm_and_rope_under_autocast():
    """RMSNorm on the fp32 residual stream hands its sublayer bf16, computed in fp32 and rounded once; RoPE on bf16
    q rotates with fp32 cos/sin and returns bf16. Gradients flow back in fp32 to x and the fp32 norm weight."""
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.add_(torch.randn(32, generator=g) * 0.1)
    x = torch.randn(2, 5, 32, generator=g, requires_grad=True)
    with autocast():
        y = norm(x)
    want = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))
    assert y.dtype == BF16 and torch.equal(y, want.to(BF16))
    dy = torch.randn(2, 5, 32, generator=g)
    gx, gw = torch.autograd.grad((y.float() * dy).sum(), (x, norm.weight))
    wx, ww = torch.autograd.grad((want * dy).sum(), (x, norm.weight))
    assert gx.dtype == gw.dtype == torch.float32  # dy reaches the norm rounded to bf16: bf16-close
    assert cosine(gx, wx) > 0.9999 and cosine(gw, ww) > 0.9999

    q = torch.randn(2, 4, 5, 32, generator=g).to(BF16).requires_grad_()
    cos, sin = rope_cos_sin(torch.rand(16), torch.arange(5)[None].expand(2, -1), torch.float32)
    with autocast():
        r = apply_rope(q, cos, sin)
    exact = apply_rope(q.detach().float(), cos, sin)
    assert r.dtype == BF16 and torch.equal(r, exact.to(BF16))
    dr = torch.randn(2, 4, 5, 32, generator=g)
    (gq,) = torch.autograd.grad((r.float() * dr).sum(), q)
    assert gq.dtype == BF16
    torch.testing.assert_close(gq.float(), apply_rope(dr, cos, -sin), rtol=0.01, atol=0.02)  # the inverse rotation


# ----------------------------------------------------------------------------------------------------------------
# the head: linear cross-entropy and chunked log-probs


def head_inputs(N=300, D=64, V=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g)
    w = torch.randn(V, D, generator=g) * 0.3
    y = torch.randint(0, V, (N,), generator=g)
    y[::7] = IGNORE_INDEX
    return h, w, y


@pytest.mark.parametrize("weights", ["autocast", "bf16"])
def test_linear_cross_entropy_in_bf16(weights):
    """Against autograd through the same bf16 product, logits cast to fp32 (lm_loss): the loss to 1e-5, gradients
    to bf16 precision; and against fp32 within LOSS_RTOL. Several chunks, ignored rows; fp32 master grad."""
    h, w, y = head_inputs()
    if weights == "bf16":
        h, w = h.to(BF16), w.to(BF16)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=BF16, enabled=weights == "autocast"):
        loss = linear_cross_entropy(h1[None], w1, y[None], chunk=64)
    ref = lm_loss((h2.to(BF16) @ w2.to(BF16).t()).float()[None], y[None])
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32 and h1.grad.dtype == h.dtype and w1.grad.dtype == w.dtype
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    for a, b in ((h1.grad, h2.grad), (w1.grad, w2.grad)):
        assert cosine(a, b) > 0.999
    fp32 = lm_loss((h.float() @ w.float().t())[None], y[None])
    assert abs(loss.item() - fp32.item()) <= LOSS_RTOL * fp32.item()


@pytest.mark.parametrize("weights", ["autocast", "bf16"])
@pytest.mark.parametrize("chunk", [None, 64], ids=["one-chunk", "checkpointed-chunks"])
def test_chunked_token_logps_in_bf16(weights, chunk):
    h, w, y = head_inputs()
    y = y.clamp(min=0)
    if weights == "bf16":
        h, w = h.to(BF16), w.to(BF16)
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    with torch.autocast("cpu", dtype=BF16, enabled=weights == "autocast"):
        logps, ent = chunked_token_logps(h1, w, y, temperature=0.7, entropy=True, chunk=chunk)
    logits = (h2.to(BF16) @ w.to(BF16).t()).float() / 0.7
    want = logits.log_softmax(-1).gather(1, y[:, None]).squeeze(1)
    assert logps.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(logps, want, rtol=0, atol=1e-4)
    dl = torch.randn(len(y), generator=torch.Generator().manual_seed(1))
    (logps * dl).sum().backward()
    (want * dl).sum().backward()
    assert h1.grad.dtype == h.dtype and cosine(h1.grad, h2.grad) > 0.999
    fp32 = (h.float() @ w.float().t() / 0.7).log_softmax(-1).gather(1, y[:, None]).squeeze(1)
    assert (logps - fp32).abs().max() < 0.1


# ----------------------------------------------------------------------------------------------------------------
# inference with bf16 weights: parity with transformers in bf16, the engine, the decode Linear


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "gpt2"])
def twins(request, tmp_path_factory):
    """(transformers fp32, transformers bf16, alignlab bf16, alignlab fp32) of one checkpoint, weights scaled 4x
    from make_hf_model's (std 0.08) so the logits spread over several units."""
    import transformers as tf

    arch = request.param
    hf = make_hf_model(arch)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(4)
    d = tmp_path_factory.mktemp(arch)
    hf.save_pretrained(d)
    hf16 = tf.AutoModelForCausalLM.from_pretrained(d, dtype=BF16).eval()
    return arch, hf, hf16, load_model(d, dtype=BF16), load_model(d)


def random_prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(k),), generator=g).tolist() for k in torch.randint(4, 20, (n,), generator=g)]


@torch.no_grad()
def test_bf16_logits_match_transformers_bf16(twins):
    arch, hf, hf16, ours, _ = twins
    x = torch.randint(3, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    want32, theirs, mine = hf(x).logits, hf16(x).logits, ours(x)
    assert mine.dtype == BF16 and all(p.dtype == BF16 for p in ours.parameters())
    own_error = (theirs.float() - want32).abs().max().item()  # transformers' bf16 against its fp32
    diff = (mine.float() - theirs.float()).abs().max().item()
    print(f"{arch}: max |alignlab bf16 - transformers bf16| = {diff:.4f}; transformers bf16 vs fp32: {own_error:.4f}; "
          f"logits up to {want32.abs().max().item():.1f}")
    assert 0 < own_error and diff <= 2 * own_error


@torch.no_grad()
def test_bf16_greedy_tokens_match_transformers_bf16(twins):
    """The engine with bf16 weights (and an fp32 KV cache on the CPU, see CausalLM.new_cache) against transformers'
    bf16 generate, greedy, 16 prompts of 16 new tokens: near-ties can flip under different but equally valid bf16
    roundings, so most, not all."""
    arch, _, hf16, ours, _ = twins
    assert ours.new_cache(1, 8)._k.dtype == torch.float32
    prompts = random_prompts(16, seed=1)
    outs = Engine(ours).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True))
    same = 0
    for p, o in zip(prompts, outs):
        theirs = hf16.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16, pad_token_id=0,
                               eos_token_id=None)[0, len(p):].tolist()
        same += theirs == o.token_ids
    print(f"{arch}: greedy bf16 completions equal to transformers bf16: {same}/{len(prompts)}")
    assert same >= 12


@torch.no_grad()
def test_bf16_engine_ragged_and_repeated_prompts(twins):
    """bf16 weights through the engine's other cache paths: ragged prompts (padding) and one prompt sampled several
    times (prefilled once, its row copied): each row as it would be alone."""
    _, _, _, ours, _ = twins
    engine = Engine(ours)
    prompts = random_prompts(3, seed=3)
    prompts = [prompts[0][:5], prompts[1], prompts[0][:5], prompts[2][:9]]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    together = engine.generate(prompts, params)
    alone = [engine.generate([p], params)[0] for p in prompts]
    assert together[0].token_ids == together[2].token_ids
    assert sum(a.token_ids == b.token_ids for a, b in zip(together, alone)) >= 3  # bf16: a near tie may flip


@torch.no_grad()
def test_engine_under_autocast_agrees_with_bf16_weights(twins):
    """fp32 weights under autocast: the keys are autocast's bf16 values (the CPU cache keeps them in fp32, exactly),
    and greedy decoding agrees with the bf16-weights engine on most prompts."""
    _, _, _, ours16, ours32 = twins
    prompts = random_prompts(8, seed=2)
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    with autocast():
        cache = ours32.new_cache(1, 8)
        ours32(torch.tensor([prompts[0][:8]]), cache=cache)
        keys = cache._k[:, :, :, :8]
        assert cache._k.dtype == torch.float32 and torch.equal(keys, keys.to(BF16).float())
        a = Engine(ours32).generate(prompts, params)
    b = Engine(ours16).generate(prompts, params)
    assert all(p.dtype == torch.float32 for p in ours32.parameters())
    assert sum(x.token_ids == y.token_ids for x, y in zip(a, b)) >= 6


def test_decode_linear_with_bf16_weights():
    """bf16 weights and autocast: F.linear with gradients, and the same values from the packed weight without."""
    lin = Linear(64, 256, bias=True)
    x = torch.randn(3, 64)
    lin16 = copy.deepcopy(lin).to(BF16)
    want16 = F.linear(x.to(BF16), lin16.weight, lin16.bias)
    torch.testing.assert_close(lin16(x.to(BF16)), want16, rtol=0, atol=0)
    with autocast():
        y = lin(x)
        with torch.no_grad(), packed_weights(PackedWeights()):
            packed = lin(x)
    want = F.linear(x.to(BF16), lin.weight.to(BF16), lin.bias.to(BF16))
    assert y.dtype == packed.dtype == BF16
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    with torch.no_grad(), packed_weights(PackedWeights()):
        torch.testing.assert_close(lin16(x.to(BF16)), want16, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(packed, want, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# DPO and GRPO losses in bf16 against trl's, on log-probs from transformers' bf16 logits


def hf_token_logps(hf16, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T] log-probs of the labels from transformers' bf16 logits, log-softmax in fp32 (0 where ignored)."""
    logp = hf16(input_ids).logits.float().log_softmax(-1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels == IGNORE_INDEX, 0.0, picked)


def pair_batch(n=4, prompt=6, seed=0) -> dict:
    """[chosen; rejected] rows: a shared prompt (labels ignored) and completions of 3..10 tokens, right-padded."""
    g = torch.Generator().manual_seed(seed)
    T = prompt + 10
    ids = torch.zeros(2 * n, T, dtype=torch.long)
    labels = torch.full((2 * n, T), IGNORE_INDEX)
    for i in range(2 * n):
        p = torch.randint(3, VOCAB, (prompt,), generator=torch.Generator().manual_seed(seed + i % n))
        c = torch.randint(3, VOCAB, (int(torch.randint(3, 11, (), generator=g)),), generator=g)
        seq = torch.cat([p, c])
        ids[i, :len(seq)] = seq
        labels[i, prompt - 1:len(seq) - 1] = c  # position t predicts token t + 1
    return {"input_ids": ids, "labels": labels}


@pytest.mark.skipif(not installed("trl"), reason="trl is not installed")
@torch.no_grad()
def test_bf16_dpo_loss_matches_trl(twins):
    """Policy = the bf16 twin, reference = the policy with its head perturbed (both sides alike). Sequence
    log-probs (sums of 3-10 tokens) agree to 0.05 nats; the DPO loss (beta 0.1) to 5e-3."""
    from .test_objectives_preference import trl_dpo

    arch, _, hf16, ours, _ = twins
    batch = pair_batch()
    ours_ref, hf_ref = copy.deepcopy(ours), copy.deepcopy(hf16)
    noise = torch.randn(ours.lm_head.weight.shape, generator=torch.Generator().manual_seed(3)).to(BF16) * 0.05
    ours_ref.lm_head.weight.add_(noise)
    hf_ref.get_output_embeddings().weight.add_(noise)
    mine = [*pair_logps(ours, batch)[:2], *pair_logps(ours_ref, batch)[:2]]
    n = len(batch["input_ids"]) // 2
    theirs = []
    for model in (hf16, hf_ref):
        sums = hf_token_logps(model, batch["input_ids"], batch["labels"]).sum(-1)
        theirs += [sums[:n], sums[n:]]
    lens = (batch["labels"] != IGNORE_INDEX).sum(-1)
    for a, b in zip(mine, theirs):
        assert a.dtype == torch.float32 and (a - b).abs().max() < 0.05, (arch, a, b)
    loss = dpo_loss(*mine[:2], *mine[2:], beta=0.1).loss
    want, _ = trl_dpo(*theirs, lens[:n], lens[n:], 0.1, "sigmoid")
    print(f"{arch}: DPO loss bf16 alignlab {loss.item():.5f}, trl {want.item():.5f}")
    assert abs(loss.item() - want.item()) < 5e-3


@pytest.mark.skipif(not installed("trl"), reason="trl is not installed")
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prefix"])
def test_bf16_grpo_loss_matches_trl(twins, shared):
    """completion_logps of the bf16 twin (each prompt once per group with `shared`) against transformers' bf16
    logits; then GRPO's loss and its gradient with respect to the log-probs against trl's on those log-probs."""
    from .test_objectives_rl import trl_grpo

    arch, _, hf16, ours, _ = twins
    rows = grouped_rows(VOCAB, [5, 8], [3, 3])
    with torch.no_grad():
        mine = completion_logps(ours, rows["input_ids"], rows["prompt_lens"], rows["completion_ids"],
                                rows["completion_mask"], prompt_index=rows["prompt_index"] if shared else None)
        N, C = rows["completion_ids"].shape
        labels = torch.full_like(rows["input_ids"], IGNORE_INDEX)
        for r in range(N):
            P, n = int(rows["prompt_lens"][r]), int(rows["completion_mask"][r].sum())
            labels[r, P - 1:P - 1 + n] = rows["completion_ids"][r, :n]
        tok = hf_token_logps(hf16, rows["input_ids"], labels)
        theirs = torch.stack([tok[r, int(rows["prompt_lens"][r]) - 1:][:C] for r in range(N)]) * rows["completion_mask"]
    logps = mine[0]
    assert logps.dtype == torch.float32 and (logps - theirs).abs().max() < 0.03
    g = torch.Generator().manual_seed(4)
    old = theirs + torch.randn(N, C, generator=g) * 0.05  # one pi_old for both, ratios inside the clip range
    ref = theirs + torch.randn(N, C, generator=g) * 0.3
    adv = torch.randn(N, generator=g)
    mask = rows["completion_mask"].long()
    a, b = logps.clone().requires_grad_(), theirs.clone().requires_grad_()
    loss, _ = grpo_loss(a, old, ref, adv, mask, ClipConfig("dapo", 0.2, 0.28, 0.04, None, "token", C))
    want, _ = trl_grpo(b, old, ref, adv, mask, "dapo", 0.2, 0.28, 0.04, None, "token", C, int(mask.sum()), 1)
    loss.backward()
    want.backward()
    print(f"{arch}: GRPO loss bf16 alignlab {loss.item():.6f}, trl {want.item():.6f}")
    assert abs(loss.item() - want.item()) < 5e-3
    assert (a.grad - b.grad).abs().max() < 1e-3


# ----------------------------------------------------------------------------------------------------------------
# LoRA and QLoRA


@pytest.mark.parametrize("variant", ["lora", "dora", "qlora"])
def test_lora_and_qlora_under_autocast_match_fp32(variant):
    model = tiny_model()
    if variant == "qlora":
        quantize_model(model)
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                 use_dora=variant == "dora"))
    batch = lm_batch(T=40)
    l32, g32 = train_step(model, batch, bf16=False)
    l16, g16 = train_step(model, batch, bf16=True)
    assert all("lora_" in n for n in g16) and all(g.dtype == torch.float32 for g in g16.values())
    assert abs(l16 - l32) <= LOSS_RTOL * abs(l32)
    assert_grads_close(g32, g16)


def test_lora_on_a_bf16_base():
    """bf16 base weights (adapters made in the base's dtype): forward and backward finite, close to fp32."""
    model, batch = tiny_model(), lm_batch(T=40)
    apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    l32, g32 = train_step(model, batch, bf16=False)
    model16 = copy.deepcopy(model).to(BF16)
    l16, g16 = train_step(model16, batch, bf16=False)
    assert all(g.dtype == BF16 for g in g16.values())
    assert abs(l16 - l32) <= LOSS_RTOL * abs(l32)
    assert all(cosine(g16[n], g32[n]) > 0.98 for n in g32)


def test_nf4_dequantizes_to_bf16_under_autocast():
    """bf16 dequantisation rounds the fp32 value once; Linear4bit under autocast multiplies in bf16 and its
    input gradient comes back close to fp32's."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = quantize_nf4(lin.weight)
    assert torch.equal(q.dequantize(BF16), q.dequantize().to(BF16))
    layer = Linear4bit.from_linear(lin)
    x = torch.randn(5, 64, generator=g, requires_grad=True)
    with autocast():
        y = layer(x)
    y32 = layer(x)
    assert y.dtype == BF16
    torch.testing.assert_close(y.float(), y32, rtol=0.02, atol=0.02)
    dy = torch.randn(5, 96, generator=g)
    (gx,) = torch.autograd.grad((y.float() * dy).sum(), x)
    (gx32,) = torch.autograd.grad((y32 * dy).sum(), x)
    assert gx.dtype == torch.float32 and cosine(gx, gx32) > 0.999


# ----------------------------------------------------------------------------------------------------------------
# RL log-prob passes


def grouped_rows(vocab: int, prompt_lens: list[int], group_sizes: list[int], seed: int = 1) -> dict:
    """Rows as a rollout gives them: group i = group_sizes[i] completions (2..7 tokens) of prompt i, right-padded."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in prompt_lens]
    index = torch.arange(len(group_sizes)).repeat_interleave(torch.tensor(group_sizes))
    comps = [torch.randint(3, vocab, (int(torch.randint(2, 8, (), generator=g)),), generator=g) for _ in index]
    N, C = len(index), max(len(c) for c in comps)
    T = max(prompt_lens[i] + len(c) for i, c in zip(index.tolist(), comps))
    input_ids, completion_ids, mask = torch.zeros(N, T, dtype=torch.long), torch.zeros(N, C, dtype=torch.long), \
        torch.zeros(N, C)
    for r, (i, c) in enumerate(zip(index.tolist(), comps)):
        seq = torch.cat([prompts[i], c])
        input_ids[r, :len(seq)], completion_ids[r, :len(c)], mask[r, :len(c)] = seq, c, 1.0
    return {"input_ids": input_ids, "prompt_lens": torch.tensor([prompt_lens[i] for i in index.tolist()]),
            "completion_ids": completion_ids, "completion_mask": mask, "prompt_index": index}


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prefix"])
def test_completion_logps_in_bf16(shared):
    """Under autocast (with gradients) and with bf16 weights: fp32 log-probs close to fp32's, and under autocast
    gradients close to fp32's; rollout_logps with an autocast context gives the same as the autocast call."""
    model = tiny_model(vocab=97)
    rows = grouped_rows(97, [5, 9, 7], [3, 2, 3])
    index = rows["prompt_index"] if shared else None
    args = (rows["input_ids"], rows["prompt_lens"], rows["completion_ids"], rows["completion_mask"], 0.7, True)
    weights = torch.randn(rows["completion_mask"].shape, generator=torch.Generator().manual_seed(2))
    out = {}
    for mode in ("fp32", "autocast"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=BF16, enabled=mode == "autocast"):
            logps, ent = completion_logps(model, *args, prompt_index=index)
        (logps * weights).sum().backward()
        out[mode] = logps.detach(), ent, grads_of(model)
    with torch.no_grad():
        out["bf16"] = completion_logps(copy.deepcopy(model).to(BF16), *args, prompt_index=index)
    lp32, ent32, g32 = out["fp32"]
    for mode in ("autocast", "bf16"):
        lp, ent = out[mode][:2]
        assert lp.dtype == ent.dtype == torch.float32
        # bf16 logits of up to ~10 are a few ulps (1/16 each at 8-16) off: bound the error relative to the value
        assert ((lp - lp32).abs() <= 0.05 + 0.02 * lp32.abs()).all(), mode
        assert ((ent - ent32).abs() <= 0.05 + 0.02 * ent32.abs()).all(), mode
        assert torch.equal(lp == 0, rows["completion_mask"] == 0)
    assert_grads_close(g32, out["autocast"][2])
    ro = rollout_logps(model, rows if shared else {k: v for k, v in rows.items() if k != "prompt_index"}, 0.7,
                       micro_batch=3, autocast=autocast())
    assert ro.dtype == torch.float32 and ((ro - lp32).abs() <= 0.05 + 0.02 * lp32.abs()).all()
