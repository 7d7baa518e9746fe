"""Speculative decoding (infer/speculative.py): greedy tokens equal to the target's alone, sampled tokens distributed
as the target's (chi-square tests, deterministic by their seeds, that a wrong rule fails), the engine's stops and
log-probs, the errors, and the server with a draft model.

The models are tiny random-init Llamas: a target, a smaller draft that keeps the target's embedding, first block and
head (so it agrees often), a draft of noise (so it almost never does), and the target as its own draft (so every
guess is accepted). At these sizes a forward is Python overhead, and one thread is faster and steadier on a shared
machine than two, so the module runs on one.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats as st

from alignlab.data.world import TinyWorld
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.infer import speculative as SP
from alignlab.model import CausalLM, preset
from alignlab.model.hf import save_model
from alignlab.model.kv_cache import KVCache

V = 64  # vocabulary of the greedy tests
N_NEW = 10
ALPHA = 1e-3  # the chi-square tests' threshold: fixed seeds make them deterministic


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def llama(vocab, n_layers, seed, dim=32, head_scale=1.0, **kw):
    torch.manual_seed(seed)
    model = CausalLM(preset("llama", vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, max_seq_len=128, **kw))
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model.eval().requires_grad_(False)


def truncated(target, n_layers):
    """The target's embedding, first n_layers blocks, final norm and head: a smaller draft that often agrees."""
    draft = llama(target.config.vocab_size, n_layers, seed=99, dim=target.config.dim)
    keep = {k: v for k, v in target.state_dict().items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < n_layers}
    draft.load_state_dict(keep)
    return draft


@pytest.fixture(scope="module")
def models():
    target = llama(V, 3, seed=0)
    return {"small": truncated(target, 1), "noise": llama(V, 1, seed=2, dim=16, head_scale=50.0),
            "same": target}, target


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(100)]


@pytest.fixture(scope="module")
def plain(models, prompts):
    _, target = models
    return Engine(target).generate(prompts, SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True,
                                                           logprobs=True))


# --- (a) greedy: the target's tokens, whatever the draft ----------------------------------------------------------

@pytest.mark.parametrize("draft,k", [("small", 1), ("small", 4), ("same", 2), ("same", 7), ("noise", 1),
                                     ("noise", 3)])
def test_greedy_equals_the_target_alone(models, prompts, plain, draft, k):
    drafts, target = models
    engine = Engine(target)
    params = SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True, logprobs=True,
                            draft_model=drafts[draft], num_speculative_tokens=k)
    out = engine.generate(prompts, params)
    for got, want in zip(out, plain, strict=True):
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason == "length"
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5, rtol=0)
    s = engine.speculative_stats
    assert s.requests == 100 and s.tokens == 100 * N_NEW
    assert s.tokens == s.accepted + s.target_forwards  # each round: the accepted guesses + one token
    rate = s.acceptance_rate
    assert {"same": rate == 1.0, "small": 0.3 < rate < 1.0, "noise": rate < 0.1}[draft], rate
    if draft == "same":  # every round emits k + 1 tokens but the last rounds, cut by max_new_tokens
        assert s.target_forwards == 100 * -(-N_NEW // (k + 1))


def test_the_cache_rolls_back():
    cache = KVCache(n_layers=1, batch=1, n_kv_heads=1, max_len=8, head_dim=2)
    cache.append(0, torch.ones(1, 1, 5, 2), torch.ones(1, 1, 5, 2))
    cache.advance(5)
    cache.truncate(3)
    assert cache.lengths == [3]
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(4)


# --- (b) sampling: the target's distribution ----------------------------------------------------------------------

def first_two(accept, q, p, trials, seed):
    """Counts of the first emitted token [V] and, in the rounds that emit two or more, of the second [V]."""
    g = torch.Generator().manual_seed(seed)
    k, n = q.shape
    first, second = torch.zeros(n), torch.zeros(n)
    guesses = torch.stack([torch.multinomial(q[i], trials, replacement=True, generator=g) for i in range(k)], 1)
    for x in guesses:  # x [k] ~ q_1..q_k
        j, y = accept(x, q, p, g)
        out = x[:j].tolist() + [y]
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
    return first, second


def chi2_p(counts, probs):
    """Pearson's goodness-of-fit p-value of the counts [n] against probs [n], the cells expecting fewer than 5
    pooled into one; 0 if a token of probability 0 came out (the counts cannot come from probs)."""
    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs.double() / probs.double().sum() * counts.sum()
    big = expected >= 5
    observed, expected = counts[big].double(), expected[big]
    if counts[~big].sum() > 0 or expected.sum() < counts.sum() - 1e-6:  # the pooled rest, when it is not empty
        observed = torch.cat([observed, counts[~big].sum()[None].double()])
        expected = torch.cat([expected, (counts.sum() - expected.sum())[None]])
    return st.chisquare(observed.numpy(), expected.numpy()).pvalue


def accept_always(x, q, p, g):
    """A wrong rule: keep every guess (the tokens then follow the draft)."""
    k = x.shape[0]
    return k, int(torch.multinomial(p[k], 1, generator=g))


def resample_from_p(x, q, p, g):
    """A wrong rule: the right test, but a rejected guess is replaced by a draw from p_i, not from max(0, p_i - q_i)."""
    u = torch.rand(x.shape[0], generator=g)
    keep = u * q[torch.arange(len(x)), x] < p[torch.arange(len(x)), x]
    j = len(x) if bool(keep.all()) else int((~keep).int().argmax())
    return j, int(torch.multinomial(p[j], 1, generator=g))


def test_the_accept_rule_gives_the_target_distribution():
    """Hand-made q_1, q_2 and p_1, p_2, p_3 over 8 tokens: the first emitted token follows p_1 and, in the rounds
    that keep x_1, the second follows p_2; the same test rejects two wrong rules."""
    g = torch.Generator().manual_seed(0)
    q = (2 * torch.randn(2, 8, generator=g)).softmax(-1)
    p = (2 * torch.randn(3, 8, generator=g)).softmax(-1)
    p[0, 3] = 0  # a token the target never draws (the draft may)
    p[0] /= p[0].sum()
    first, second = first_two(SP.accept, q, p, 10_000, seed=1)
    assert chi2_p(first, p[0]) > ALPHA and chi2_p(second, p[1]) > ALPHA
    for wrong in (accept_always, resample_from_p):
        first, _ = first_two(wrong, q, p, 10_000, seed=1)
        assert chi2_p(first, p[0]) < ALPHA, wrong.__name__


def test_accept_greedy_keeps_the_argmax_prefix():
    logits = torch.tensor([[0.0, 5, 1], [3, 0, 1], [0, 0, 9], [1, 0, 0]])  # argmaxes 1, 0, 2, 0
    assert SP.accept_greedy(torch.tensor([1, 0, 2]), logits) == (3, 0)
    assert SP.accept_greedy(torch.tensor([1, 2, 2]), logits) == (1, 0)
    assert SP.accept_greedy(torch.tensor([0, 0, 2]), logits) == (0, 1)
    assert SP.accept_greedy(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 1)


@torch.inference_mode()
def exact_joint(target, prompt, params):
    """P(t1, t2 | prompt) [V, V] under the target's processed distributions."""
    first = SP.processed(target(torch.tensor([prompt]))[0, -1:], params).softmax(-1)[0]  # [V]
    seqs = torch.tensor([prompt + [t] for t in range(target.config.vocab_size)])
    second = SP.processed(target(seqs)[:, -1], params).softmax(-1)  # [V, V]
    return first[:, None] * second


@pytest.mark.parametrize("k,new,settings", [(1, 2, {}), (2, 3, {"temperature": 0.8, "top_k": 6})])
def test_the_first_two_tokens_follow_the_target(k, new, settings):
    """The joint distribution of the first two tokens through the whole loop (temperature 1, or with processors),
    against the target's exact joint and against plain sampling from the target."""
    target = llama(8, 1, seed=3, dim=16, head_scale=40.0)
    draft = llama(8, 1, seed=4, dim=16, head_scale=40.0)
    prompt, n = [1, 5, 2], 1500
    base = dict(max_new_tokens=new, ignore_eos=True, **settings)
    joint = exact_joint(target, prompt, SamplingParams(**base)).flatten()
    engine = Engine(target)
    spec = engine.generate([prompt] * n, [SamplingParams(**base, seed=i, draft_model=draft, num_speculative_tokens=k)
                                          for i in range(n)])
    plain = engine.generate([prompt] * n, [SamplingParams(**base, seed=n + i) for i in range(n)])
    counts = [torch.bincount(torch.tensor([c.token_ids[0] * 8 + c.token_ids[1] for c in out]), minlength=64).float()
              for out in (spec, plain)]
    assert chi2_p(counts[0], joint) > ALPHA and chi2_p(counts[1], joint) > ALPHA
    both = (counts[0] + counts[1]) > 0
    assert st.chi2_contingency(torch.stack(counts)[:, both].numpy()).pvalue > ALPHA
    s = engine.speculative_stats
    assert 0.05 < s.acceptance_rate < 0.95, s.acceptance_rate  # both paths (accepted, resampled) are exercised
    # the test tells the target's joint from the draft's (what a rule accepting every guess would give)
    assert chi2_p(counts[0], exact_joint(draft, prompt, SamplingParams(**base)).flatten()) < ALPHA


# --- (c) the engine's stops and log-probs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worded():
    """A target over TinyWorld's tokenizer, its truncated copy, and the plain engine's greedy reply."""
    tok = TinyWorld(seed=0, size="quick").tokenizer()
    target = llama(tok.vocab_size, 3, seed=5)
    engine = Engine(target, tok)
    reply = engine.generate(["Tom has"], SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True))[0]
    return tok, target, truncated(target, 1), engine, reply


def both(engine, prompt, draft, k=4, **kw):
    """(plain, speculative) completions of one prompt with the same params."""
    params = SamplingParams(temperature=0.0, **kw)
    spec = SamplingParams(temperature=0.0, draft_model=draft, num_speculative_tokens=k, **kw)
    return engine.generate([prompt], params)[0], engine.generate([prompt], spec)[0]


@pytest.mark.parametrize("which", ["same", "small"])
def test_stops_as_the_plain_engine(worded, which):
    tok, target, small, engine, reply = worded
    draft = target if which == "same" else small  # "same": every stop falls inside a run of accepted guesses
    ids = reply.token_ids
    cases = [dict(max_new_tokens=n, ignore_eos=True) for n in (1, 2, 3, 7)]
    cases += [dict(max_new_tokens=24, stop_token_ids=[ids[6]]), dict(max_new_tokens=24, stop=[reply.text[9:12]])]
    for kw in cases:
        want, got = both(engine, "Tom has", draft, **kw)
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason), kw
    assert want.finish_reason == "stop" and len(want.token_ids) < 24
    eos = ids[8]  # the model's end-of-sequence id
    target.config.eos_token_id = eos
    try:
        want, got = both(Engine(target, tok), "Tom has", draft, max_new_tokens=24)
    finally:
        target.config.eos_token_id = None
    assert got.token_ids == want.token_ids == ids[:ids.index(eos) + 1] and got.text == want.text
    stream = SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True, draft_model=draft,
                            num_speculative_tokens=3)
    assert "".join(engine.stream("Tom has", stream)) == reply.text


def test_sampled_logprobs_are_the_targets_and_a_seed_reproduces(worded):
    tok, target, small, engine, _ = worded
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7, logprobs=True, ignore_eos=True,
                            draft_model=small, num_speculative_tokens=3)
    a, b = engine.generate(["The town", "The town"], params)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 16
    ids = torch.tensor([a.prompt_token_ids + a.token_ids])
    with torch.inference_mode():
        lp = target(ids)[0, :-1].float().log_softmax(-1)[len(a.prompt_token_ids) - 1:]  # rows predicting the reply
    want = lp.gather(1, torch.tensor(a.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(a.logprobs), want, atol=1e-4, rtol=0)


# --- (d) errors ------------------------------------------------------------------------------------------------------

def test_bad_params_are_clear_errors(models):
    drafts, target = models
    d = drafts["small"]
    for k in (0, 17):
        with pytest.raises(ValueError, match="num_speculative_tokens must be in 1..16"):
            SamplingParams(draft_model=d, num_speculative_tokens=k)
    with pytest.raises(ValueError, match="needs a draft_model"):
        SamplingParams(num_speculative_tokens=2)
    engine = Engine(target)
    with pytest.raises(ValueError, match="vocab_size 65 differs"):
        engine.generate([[1, 2]], SamplingParams(draft_model=llama(V + 1, 1, 0), num_speculative_tokens=2))
    for kw in (dict(repetition_penalty=1.2), dict(top_logprobs=2), dict(prompt_logprobs=True), dict(guide=object())):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}: not supported with speculative decoding"):
            engine.generate([[1, 2]], SamplingParams(draft_model=d, num_speculative_tokens=2, **kw))
    with pytest.raises(ValueError, match="must be a CausalLM"):
        engine.generate([[1, 2]], SamplingParams(draft_model=object(), num_speculative_tokens=2))
    from alignlab.errors import UserError
    from alignlab.infer.llm_engine import LLMEngine

    with pytest.raises(UserError, match="needs the static Engine"):  # continuous batching has no speculative path
        LLMEngine(target).add_request("r", [1, 2], SamplingParams(draft_model=d, num_speculative_tokens=2))


# --- (e) the server --------------------------------------------------------------------------------------------------

def test_the_server_with_a_draft(worded, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from alignlab.cli import main
    from alignlab.serve import build_state, create_app

    tok, target, small, engine, _ = worded
    with pytest.raises(ConfigError, match="static engine"):
        build_state(target, tok, model_names=["tiny"], engine="continuous", draft_model=small, num_speculative_tokens=3)
    state = build_state(target, tok, model_names=["tiny"], draft_model=small, num_speculative_tokens=3)
    want = engine.generate(["Tom has", "The town"], SamplingParams(max_new_tokens=12, temperature=0.0))
    with TestClient(create_app(state)) as client:
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": ["Tom has", "The town"], "max_tokens": 12,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        assert [c["text"] for c in r.json()["choices"]] == [c.text for c in want]
        r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 4, "logprobs": True, "top_logprobs": 2})
        assert r.status_code == 400 and "top_logprobs: not supported" in r.json()["error"]["message"]
    assert state.backend.core.engine.speculative_stats.requests == 2

    model_dir = save_model(target, tmp_path / "target", tokenizer=tok)
    assert main(["serve", str(model_dir), "--num-speculative-tokens", "3"]) == 2
    assert "--num-speculative-tokens needs --speculative-model" in capsys.readouterr().err
    other = save_model(llama(V, 1, 0), tmp_path / "other", tokenizer=tok)
    assert main(["serve", str(model_dir), "--dtype", "fp32", "--speculative-model", str(other)]) == 2
    assert f"vocab_size {V} differs from the target's {tok.vocab_size}" in capsys.readouterr().err
