"""model/decode.py's flat one-token step against CausalLM.forward: equal logits, equal generations, and the cases it
leaves to the forward."""

from __future__ import annotations

import pytest
import torch

from alignlab.infer import Engine, SamplingParams
from alignlab.lora import LoraConfig, apply_lora
from alignlab.model.decode import DecodeStep
from alignlab.model.hf import load_model
from alignlab.model.linear import PackedWeights, mkldnn_bf16, packed_weights

from .hf_models import VOCAB, make_hf_model

pytestmark = pytest.mark.skipif(not mkldnn_bf16(), reason="oneDNN has no bf16 on this CPU: the packed path is off")

ARCHS = {"llama": {}, "llama_mha_tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
         "mistral": {"sliding_window": 12}, "qwen2": {}}


def load(arch: str, tmp_path, dtype=torch.bfloat16):
    kw = dict(ARCHS[arch])
    hf = make_hf_model(arch.split("_")[0], **kw)
    hf.save_pretrained(tmp_path)
    return load_model(tmp_path, dtype=dtype).requires_grad_(False)


def padded(lengths, seed=0):
    """Left-padded prompts [B, L] and their mask."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids, mask = torch.zeros(len(lengths), L, dtype=torch.long), torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, L - n:], mask[i, L - n:] = torch.randint(3, VOCAB, (n,), generator=g), True
    return ids, mask


@pytest.mark.parametrize("weights", ["bf16", "autocast"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_step_equals_forward(arch, weights, tmp_path):
    """Prefill, then 20 steps of the same tokens through the forward and through DecodeStep, each with its own
    cache: the logits are equal at every step, padded rows included; so are the caches."""
    model = load(arch, tmp_path, torch.bfloat16 if weights == "bf16" else torch.float32)
    ids, real = padded([9, 5, 7])
    B, L, steps = ids.shape[0], ids.shape[1], 20
    mask = torch.ones(B, L + steps, dtype=torch.bool)
    mask[:, :L] = real
    pos = real.sum(1, keepdim=True)
    store = PackedWeights()
    auto = torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights == "autocast")
    with torch.inference_mode(), auto, packed_weights(store):
        caches = [model.new_cache(B, L + steps) for _ in range(2)]
        for cache in caches:
            model(ids, attention_mask=mask[:, :L], cache=cache, last_only=True)
        step = DecodeStep.plan(model, caches[1], store)
        assert step is not None
        g = torch.Generator().manual_seed(1)
        used = 0
        for t in range(steps):
            tokens = torch.randint(3, VOCAB, (B, 1), generator=g)
            attn = mask[:, :L + t + 1]
            want = model(tokens, attention_mask=attn, position_ids=pos + t, cache=caches[0])
            if step.fits(caches[1]):
                got = step(tokens, pos + t, caches[1], attn)
                used += 1
            else:  # a sliding window that cuts: the forward's mask is needed
                got = model(tokens, attention_mask=attn, position_ids=pos + t, cache=caches[1])
            assert got.dtype == want.dtype == torch.bfloat16
            assert torch.equal(got, want), f"step {t}"
        assert used == (steps if arch != "mistral" else 12 - L)  # the window (12) cuts from slot 12 on
        assert caches[0].lengths == caches[1].lengths
        assert torch.equal(caches[0]._k, caches[1]._k) and torch.equal(caches[0]._v, caches[1]._v)


def test_engine_generates_the_same(tmp_path, monkeypatch):
    """Greedy and seeded sampling, ragged prompts and early stops (batch compaction): the engine gives the same
    tokens and log-probs with the flat step as with the forward alone."""
    model = load("llama", tmp_path)
    engine = Engine(model)
    prompts = [p[m].tolist() for p, m in zip(*padded([9, 5, 7, 3, 12], seed=2))]
    params = [SamplingParams(max_new_tokens=n, temperature=t, seed=i, logprobs=True)
              for i, (n, t) in enumerate([(24, 0), (3, 0), (24, 1.0), (8, 0.7), (24, 0)])]
    calls = []
    call = DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda *a, **k: (calls.append(1), call(*a, **k))[1])
    flat = engine.generate(prompts, params)
    assert len(calls) == 23  # every step after the prefill
    monkeypatch.setattr(DecodeStep, "plan", classmethod(lambda *a: None))
    forward = engine.generate(prompts, params)
    assert [c.token_ids for c in flat] == [c.token_ids for c in forward]
    assert [c.logprobs for c in flat] == [c.logprobs for c in forward]


def test_plan_declines(tmp_path):
    """Where the flat step does not compute the forward's operations, `plan` says None: fp32 products, LoRA
    layers, q/k norms (Qwen3), learned positions (GPT-2), a cache of some rows, gradients on."""
    store = PackedWeights()
    bf16 = load("llama", tmp_path / "llama")
    with torch.inference_mode():
        cache = bf16.new_cache(2, 16)
        assert DecodeStep.plan(bf16, cache, store) is not None
        assert DecodeStep.plan(bf16, cache.rows([0]), store) is None
        assert DecodeStep.plan(load("llama", tmp_path / "f32", torch.float32), cache, store) is None
        lora = apply_lora(load("llama", tmp_path / "lora"), LoraConfig(r=4))
        assert DecodeStep.plan(lora, cache, store) is None
        for arch in ("qwen3", "gpt2"):
            hf = make_hf_model(arch)
            hf.save_pretrained(tmp_path / arch)
            model = load_model(tmp_path / arch, dtype=torch.bfloat16)
            assert DecodeStep.plan(model, model.new_cache(2, 16), store) is None
    assert DecodeStep.plan(bf16, cache, store) is None  # gradients enabled
