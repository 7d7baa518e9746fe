"""LLMEngine (paged cache + continuous batching) against the static Engine and Hugging Face `generate`.

Every schedule (block sizes down to 2, chunked prefill, preemption under a tiny pool, prefix caching on and off,
requests arriving at random steps) must give each request the tokens it gets alone.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.errors import UserError
from alignlab.infer import Engine, LLMEngine, SamplingParams
from alignlab.model.config import ModelConfig
from alignlab.model.hf import load_model
from alignlab.model.transformer import CausalLM

from .hf_models import make_hf_model, require
from .test_engine import prompts

N_NEW = 12
GREEDY = SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers' tiny random Llama, the same weights loaded by alignlab)."""
    hf = make_hf_model("llama")
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None
    return hf, load_model(path)


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def whole(engine: LLMEngine) -> bool:
    s = engine.stats()
    return s["used"] == 0 and s["free"] + s["cached"] == s["total"] and s["running"] == s["waiting"] == 0


SCHEDULES = {  # (block_size, num_blocks, max_num_batched_tokens, prefix caching)
    "default": dict(),
    "blocks-of-4": dict(block_size=4),
    "chunked": dict(block_size=4, max_num_batched_tokens=5),
    "tiny-pool": dict(block_size=4, num_blocks=12, max_num_batched_tokens=16),
    "no-prefix-cache": dict(block_size=2, max_num_batched_tokens=7, enable_prefix_caching=False),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_greedy_matches_static_engine_and_hf(models, schedule):
    hf, model = models
    ps = prompts([5, 11, 17, 30, 3, 11])
    ps[5] = ps[1]  # a repeated prompt
    engine = LLMEngine(model, **SCHEDULES[schedule])
    got = [c.token_ids for c in engine.generate(ps, GREEDY)]
    static = [c.token_ids for c in Engine(model).generate(ps, GREEDY)]
    assert got == static
    assert got == [hf_greedy(hf, p, N_NEW) for p in ps]
    if schedule == "tiny-pool":
        assert engine.stats()["preemptions"] > 0
    assert whole(engine)


@pytest.mark.parametrize("arch,kw", [("mistral", {"sliding_window": 8}), ("qwen3", {}), ("gpt2", {})])
def test_other_architectures(tmp_path, arch, kw):
    """A sliding window shorter than the sequences, q/k norms, learned positions with biases: paged and chunked,
    the same tokens as the static engine and transformers."""
    hf = make_hf_model(arch, **kw)
    hf.save_pretrained(tmp_path)
    hf.generation_config.eos_token_id = None
    model = load_model(tmp_path)
    ps = prompts([13, 4, 22], seed=9)
    got = LLMEngine(model, block_size=4, num_blocks=16, max_num_batched_tokens=6).generate(ps, GREEDY)
    assert [c.token_ids for c in got] == [c.token_ids for c in Engine(model).generate(ps, GREEDY)]
    assert [c.token_ids for c in got] == [hf_greedy(hf, p, N_NEW) for p in ps]


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_random_arrivals_give_each_request_its_own_tokens(models, data):
    """Requests of random lengths join at random steps, under random block sizes, budgets and pool sizes."""
    _, model = models
    n = data.draw(st.integers(1, 7), label="requests")
    lengths = data.draw(st.lists(st.integers(1, 24), min_size=n, max_size=n), label="prompt lengths")
    news = data.draw(st.lists(st.integers(1, N_NEW), min_size=n, max_size=n), label="max_new_tokens")
    arrivals = sorted(data.draw(st.lists(st.integers(0, 8), min_size=n, max_size=n), label="arrival steps"))
    bs = data.draw(st.sampled_from([2, 4, 16]), label="block_size")
    need = max(-(-(p + m) // bs) for p, m in zip(lengths, news))
    extra = data.draw(st.integers(0, 3 * need), label="spare blocks")
    engine = LLMEngine(model, block_size=bs, num_blocks=need + extra,
                       max_num_batched_tokens=data.draw(st.integers(1, 48), label="token budget"),
                       max_num_seqs=data.draw(st.integers(1, 8), label="max_num_seqs"),
                       enable_prefix_caching=data.draw(st.booleans(), label="prefix caching"))
    ps = prompts(lengths, seed=len(lengths))
    if n > 2:
        ps[2] = ps[0][:lengths[2]] if lengths[2] <= lengths[0] else ps[0]  # a shared prefix or a repeat
    params = [SamplingParams(max_new_tokens=m, temperature=0.0, ignore_eos=True) for m in news]
    done, step = {}, 0
    while len(done) < n:
        for i, a in enumerate(arrivals):
            if a == step:
                engine.add_request(str(i), ps[i], params[i])
        done.update((o.request_id, o.completion) for o in engine.step() if o.finished)
        step += 1
        assert step < 2000
    static = Engine(model).generate(ps, params)
    assert [done[str(i)].token_ids for i in range(n)] == [c.token_ids for c in static]
    assert whole(engine)


def test_sampling_with_seeds_matches_the_static_engine(models):
    _, model = models
    ps = prompts([8, 3, 20, 8], seed=3)
    params = [SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True),
              SamplingParams(max_new_tokens=5, temperature=0.7, top_k=20, seed=1, ignore_eos=True),
              SamplingParams(max_new_tokens=14, temperature=0, repetition_penalty=1.3, ignore_eos=True),
              SamplingParams(max_new_tokens=10, temperature=1.2, min_p=0.05, repetition_penalty=1.2, seed=7,
                             ignore_eos=True)]
    static = Engine(model).generate(ps, params)
    for kw in (dict(), dict(block_size=2, max_num_batched_tokens=6, num_blocks=20)):
        got = LLMEngine(model, **kw).generate(ps, params)
        assert [c.token_ids for c in got] == [c.token_ids for c in static]
    alone = LLMEngine(model).generate([ps[0]], params[0])[0]  # a seed gives the same tokens whatever the batch
    assert alone.token_ids == static[0].token_ids


def test_logprobs_top_logprobs_and_prompt_logprobs_are_the_forward_log_softmax(models):
    _, model = models
    ps = prompts([6, 21], seed=4)
    params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=5, logprobs=True, top_logprobs=3,
                            prompt_logprobs=True, ignore_eos=True)
    static = Engine(model).generate(ps, params)
    engine = LLMEngine(model, block_size=4, max_num_batched_tokens=5)  # the prompts come in chunks
    engine.generate([ps[1]], SamplingParams(max_new_tokens=1))  # its blocks are cached, but must be recomputed
    for p, c, s in zip(ps, engine.generate(ps, params), static):
        assert c.token_ids == s.token_ids
        with torch.inference_mode():
            full = torch.log_softmax(model(torch.tensor([p + c.token_ids]))[0].float(), dim=-1)
        seq = p + c.token_ids
        want = full[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]  # position t predicts token t + 1
        P = len(p)
        assert c.prompt_logprobs[0] is None and len(c.prompt_logprobs) == P
        for got in (c, s):
            torch.testing.assert_close(torch.tensor(got.prompt_logprobs[1:]), want[:P - 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(got.logprobs), want[P - 1:], atol=1e-5, rtol=0)
            assert len(got.top_logprobs) == len(c.token_ids)
            for t, top in enumerate(got.top_logprobs):
                values, ids = full[P - 1 + t].topk(3)
                assert list(top) == ids.tolist()
                torch.testing.assert_close(torch.tensor(list(top.values())), values, atol=1e-5, rtol=0)


def test_prompt_logprobs_alone_with_no_new_tokens(models):
    _, model = models
    (p,) = prompts([9], seed=8)
    only = SamplingParams(max_new_tokens=0, prompt_logprobs=True)
    (c,) = LLMEngine(model, block_size=4, max_num_batched_tokens=3).generate([p], only)
    (s,) = Engine(model).generate([p], SamplingParams(max_new_tokens=1, prompt_logprobs=True))
    assert c.token_ids == [] and c.finish_reason == "length"
    torch.testing.assert_close(torch.tensor(c.prompt_logprobs[1:]), torch.tensor(s.prompt_logprobs[1:]),
                               atol=1e-5, rtol=0)


def test_stops_on_eos_like_the_static_engine(models):
    _, model = models
    ps = prompts([7, 12, 4], seed=2)
    free = Engine(model).generate(ps, GREEDY)
    eos = free[0].token_ids[3]  # the 4th token of the first request ends it
    model.config.eos_token_id = eos
    try:
        params = SamplingParams(max_new_tokens=N_NEW, temperature=0.0)
        static = Engine(model).generate(ps, params)
        got = LLMEngine(model, block_size=4).generate(ps, params)
    finally:
        model.config.eos_token_id = None
    assert static[0].finish_reason == "stop"
    assert [(c.token_ids, c.finish_reason) for c in got] == [(c.token_ids, c.finish_reason) for c in static]


def test_streams_one_output_per_token_then_the_completion(models):
    _, model = models
    engine = LLMEngine(model)
    (p,) = prompts([5])
    engine.add_request("r", p, SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True, logprobs=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert [len(o.new_token_ids) for o in outs] == [1] * 4
    assert [o.finished for o in outs] == [False] * 3 + [True]
    c = outs[-1].completion
    assert [t for o in outs for t in o.new_token_ids] == c.token_ids
    assert [x for o in outs for x in o.new_logprobs] == c.logprobs


def test_learned_positions():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128, pos="learned", norm="layernorm",
                      mlp="plain", act="gelu", max_seq_len=32)
    model = CausalLM(cfg).eval()
    ps = prompts([5, 20, 9], seed=1)
    params = [SamplingParams(max_new_tokens=m, temperature=0.0, ignore_eos=True) for m in (12, 13, 4)]
    static = Engine(model).generate(ps, params)
    got = LLMEngine(model, block_size=4, max_num_batched_tokens=6).generate(ps, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in static]
    with pytest.raises(UserError, match="32 positions"):
        LLMEngine(model).add_request("x", ps[1], SamplingParams(max_new_tokens=14))


def test_requests_that_can_never_run_are_refused(models):
    _, model = models
    engine = LLMEngine(model, block_size=4, num_blocks=5)
    with pytest.raises(UserError, match="KV blocks"):
        engine.add_request("a", list(range(3, 15)), SamplingParams(max_new_tokens=10))
    engine.add_request("b", list(range(3, 15)), SamplingParams(max_new_tokens=9))
    with pytest.raises(UserError, match="already in flight"):
        engine.add_request("b", [3], SamplingParams())
    with pytest.raises(UserError, match="empty prompt"):
        engine.add_request("c", [], SamplingParams())
    with pytest.raises(UserError, match="no adapters"):
        engine.add_request("d", [3], SamplingParams(), adapter="sql")
    with pytest.raises(UserError):
        LLMEngine(model, block_size=0)


# --- LoRA adapters ---------------------------------------------------------------------------------------

ADAPTERS = {"qv4": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
            "all8": dict(r=8, lora_alpha=16, target_modules="all-linear")}


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    peft = require("peft")
    root = tmp_path_factory.mktemp("adapters")
    for seed, (name, kw) in enumerate(ADAPTERS.items(), 1):
        hf = make_hf_model("llama")
        torch.manual_seed(seed)
        pm = peft.get_peft_model(hf, peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw))
        pm.save_pretrained(root / name)
    return {name: root / name for name in ADAPTERS}


@pytest.mark.parametrize("max_loras", [1, 2])
def test_adapters_per_request_match_each_merged_model(tmp_path_factory, adapter_dirs, max_loras):
    """Each request's tokens equal the static engine's on its adapter merged into the model; the same prompt under
    two adapters is not served from the other's cached blocks."""
    from alignlab.lora import MultiLora, load_adapter, merge_lora

    path = tmp_path_factory.mktemp("llama-lora")
    make_hf_model("llama").save_pretrained(path)
    model = load_model(path)
    adapters = MultiLora(model, max_loras=max_loras)
    for name, d in adapter_dirs.items():
        adapters.load(name, d)
    system = prompts([16], seed=5)[0]
    ps = [system + q for q in prompts([3, 7, 5, 2, 6, 4], seed=6)]
    names = ["qv4", None, "all8", "qv4", "all8", None]
    engine = LLMEngine(model, block_size=4, max_num_batched_tokens=10, adapters=adapters)
    got = engine.generate(ps, GREEDY, adapters=names)
    for name in ADAPTERS.keys() | {None}:
        ref = load_model(path) if name is None else merge_lora(load_adapter(load_model(path), adapter_dirs[name]))
        rows = [i for i, n in enumerate(names) if n == name]
        want = Engine(ref).generate([ps[i] for i in rows], GREEDY)
        assert [got[i].token_ids for i in rows] == [c.token_ids for c in want], name
    assert whole(engine)
