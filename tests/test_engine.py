"""The generation engine against Hugging Face `generate`, a no-cache re-forward loop, and itself."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from alignlab.infer import Completion, Engine, SamplingParams
from alignlab.infer import sampling as S
from alignlab.model.config import ModelConfig, preset
from alignlab.model.hf import load_model
from alignlab.model.kv_cache import KVCache
from alignlab.model.transformer import CausalLM

from .hf_models import VOCAB, make_hf_model

# mistral with a short sliding window, so that the window actually cuts during decoding
ARCHS = {"llama": {}, "mistral": {"sliding_window": 16}, "qwen2": {}, "qwen3": {}, "gpt2": {}}
N_NEW = 32
GREEDY = SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", params=list(ARCHS))
def models(request, tmp_path_factory):
    """(transformers model, the same weights loaded by alignlab), eos disabled in HF's generation config."""
    hf = make_hf_model(request.param, **ARCHS[request.param])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None
    return hf, load_model(path)


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(hf, batch: list[list[int]], **kw) -> list[list[int]]:
    """HF generate on a left-padded batch; returns the new tokens of each row."""
    L = max(map(len, batch))
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N_NEW, pad_token_id=0,
                          **kw)
    return out[:, L:].tolist()


@torch.inference_mode()
def uncached_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The definition of greedy decoding: re-run the whole sequence through the model at every step."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


# --- greedy against the oracles ------------------------------------------------------------------------

def test_greedy_matches_hf_and_uncached(models):
    hf, model = models
    engine = Engine(model)
    ps = prompts([5, 11, 17])
    singles = [engine.generate([p], GREEDY)[0] for p in ps]
    for p, c in zip(ps, singles):
        assert len(c.token_ids) == N_NEW and c.finish_reason == "length"
        assert c.token_ids == hf_greedy(hf, [p])[0]  # HF with its own cache
        assert c.token_ids == uncached_greedy(model, p, N_NEW)  # no cache at all
    # one left-padded batch gives each prompt what it gets alone, and what HF's padded batch gives
    batched = engine.generate(ps, GREEDY)
    assert [c.token_ids for c in batched] == [c.token_ids for c in singles]
    assert [c.token_ids for c in batched] == hf_greedy(hf, ps)


def test_eos_stops_like_hf(models):
    hf, model = models
    p = prompts([9], seed=1)[0]
    free = hf_greedy(hf, [p])[0]
    eos = free[6]  # a token greedy decoding reaches: stopping on it must cut there, as in HF
    cut = free.index(eos) + 1
    params = SamplingParams(max_new_tokens=N_NEW, temperature=0, stop_token_ids=[eos])
    c = Engine(model).generate([p], params)[0]
    assert c.finish_reason == "stop" and c.token_ids == free[:cut]
    assert hf_greedy(hf, [p], eos_token_id=eos)[0][:cut] == c.token_ids


def test_padding_does_not_change_outputs(models):
    _, model = models
    engine = Engine(model)
    short, long = prompts([4, 40], seed=2)
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=50, seed=7, logprobs=True)
    alone = engine.generate([short], params)[0]
    padded = engine.generate([long, short], params)[1]  # 36 padding slots in front of `short`
    assert padded.token_ids == alone.token_ids
    torch.testing.assert_close(torch.tensor(padded.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


# --- sampling -------------------------------------------------------------------------------------------

def test_seed_reproduces_regardless_of_batch(models):
    _, model = models
    engine = Engine(model)
    p, other1, other2 = prompts([8, 3, 20], seed=3)
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    alone = engine.generate([p], params)[0].token_ids
    mixed = engine.generate(
        [other1, p, other2],
        [SamplingParams(max_new_tokens=5, temperature=0.7, seed=1), params,
         SamplingParams(max_new_tokens=30, temperature=0, repetition_penalty=1.3)])
    assert mixed[1].token_ids == alone
    assert engine.generate([p], params)[0].token_ids == alone
    other_seed = SamplingParams(**{**params.__dict__, "seed": 4321})
    assert engine.generate([p], other_seed)[0].token_ids != alone


def test_repeated_prompts_are_prefilled_once_with_the_same_results(models, monkeypatch):
    _, model = models
    engine = Engine(model)
    a, b = prompts([9, 30], seed=6)
    params = [SamplingParams(max_new_tokens=12, temperature=1.0, seed=s, logprobs=True, ignore_eos=True)
              for s in range(5)]
    alone = [engine.generate([p], q)[0] for p, q in zip([a, b, a, b, a], params)]
    prefilled = []
    forward = type(model).forward

    def spy(self, ids, *args, **kwargs):
        if ids.shape[1] > 1:
            prefilled.append(ids.shape[0])
        return forward(self, ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    grouped = engine.generate([a, b, a, b, a], params)  # a three times, b twice: 2 rows to prefill
    assert prefilled == [2]
    for want, got in zip(alone, grouped):
        assert got.token_ids == want.token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-5, rtol=0)


def test_logprobs_are_raw_model_logprobs(models):
    _, model = models
    ps = prompts([6, 13], seed=4)
    params = [SamplingParams(max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2,
                             seed=5, logprobs=True, ignore_eos=True),
              SamplingParams(max_new_tokens=12, temperature=0, min_p=0.1, logprobs=True, ignore_eos=True)]
    for p, c in zip(ps, Engine(model).generate(ps, params)):
        with torch.inference_mode():
            logits = model(torch.tensor([p + c.token_ids]))[0]
        full = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)  # position t predicts token t+1
        want = full.gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=0)


def test_logits_processors_match_hf():
    torch.manual_seed(0)
    B, V = 6, 300
    logits = torch.randn(B, V) * 3
    ids = torch.randint(0, V, (B, 20))
    hf_ids = ids.clone()
    per_row = {
        "top_k": ([1, 5, 17, 50, 299, 300], S.top_k, lambda v: tf.TopKLogitsWarper(top_k=v)),
        "top_p": ([0.05, 0.3, 0.5, 0.8, 0.95, 0.999], S.top_p, lambda v: tf.TopPLogitsWarper(top_p=v)),
        "min_p": ([0.01, 0.05, 0.1, 0.3, 0.6, 0.9], S.min_p, lambda v: tf.MinPLogitsWarper(min_p=v)),
        "temperature": ([0.3, 0.7, 1.0, 1.3, 2.0, 5.0], S.temperature,
                        lambda v: tf.TemperatureLogitsWarper(temperature=v)),
    }
    for name, (values, ours, theirs) in per_row.items():
        want = torch.stack([theirs(v)(hf_ids[b:b + 1], logits[b:b + 1].clone())[0]
                            for b, v in enumerate(values)])
        torch.testing.assert_close(ours(logits, torch.tensor(values)), want, msg=name)  # one value per row
        scalar = theirs(values[2])(hf_ids, logits.clone())
        torch.testing.assert_close(ours(logits, values[2]), scalar, msg=name)  # one value for the batch
    seen = S.seen_mask(ids, V)
    for penalty in (0.8, 1.0, 1.5):
        want = tf.RepetitionPenaltyLogitsProcessor(penalty=penalty)(hf_ids, logits.clone())
        torch.testing.assert_close(S.repetition_penalty(logits, seen, penalty), want)
    # the whole chain, in HF's order
    chain = tf.LogitsProcessorList([
        tf.RepetitionPenaltyLogitsProcessor(1.3), tf.TemperatureLogitsWarper(0.8), tf.TopKLogitsWarper(40),
        tf.TopPLogitsWarper(0.9), tf.MinPLogitsWarper(0.05)])
    ours = S.repetition_penalty(logits, seen, 1.3)
    ours = S.min_p(S.top_p(S.top_k(S.temperature(ours, 0.8), 40), 0.9), 0.05)
    torch.testing.assert_close(ours, chain(hf_ids, logits.clone()))
    # neutral values leave the logits alone; padding slots do not count as seen
    assert torch.equal(S.top_k(logits, 0), logits) and torch.equal(S.top_p(logits, 1.0), logits)
    assert torch.equal(S.min_p(logits, torch.zeros(B)), logits)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    assert not S.seen_mask(ids, V, valid).any()


def test_sampler_follows_the_distribution():
    probs = torch.tensor([[0.1, 0.2, 0.7, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([S.sample(probs.log(), [g]) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.03, rtol=0)
    assert freq[3] == 0


# --- stopping, streaming, text --------------------------------------------------------------------------

class ByteTokenizer:
    """Token i < 256 is byte i; then eos, bos, pad. Multi-byte characters span several tokens."""

    eos_token_ids, bos_token_id, pad_token_id = [256], 257, 258

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.bos_token_id] * add_special_tokens + list(text.encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            elif not skip_special_tokens:
                out += f"<{i}>".encode()
        return out.decode("utf-8", errors="replace")


class ScriptedLM(torch.nn.Module):
    """Emits a fixed script whatever the prompt: the s-th generated token of every row is script[s]."""

    def __init__(self, script: list[int], vocab: int = 259):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, dim=8, n_layers=1, n_heads=1, eos_token_id=256)
        self.script, self.anchor = script, torch.nn.Parameter(torch.zeros(()))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(1, batch, 1, max_len, 8)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, last_only=False):
        B, T = input_ids.shape
        past = cache.lengths[0]
        if past == 0:
            self.prompt_len = T
        step = min(past + T - self.prompt_len, len(self.script) - 1)
        cache.advance(T)
        logits = torch.zeros(B, 1, self.config.vocab_size)
        logits[..., self.script[step]] = 10.0
        return logits


TEXT = "Hello, wörld! €5\n\nEND"
SCRIPT = list(TEXT.encode()) + [256] + [ord("x")] * 8


def test_stop_rules_per_request():
    engine = Engine(ScriptedLM(SCRIPT), ByteTokenizer())
    reqs = [SamplingParams(max_new_tokens=3, temperature=0),  # length
            SamplingParams(max_new_tokens=100, temperature=0, stop=["wö"]),  # multi-byte stop string
            SamplingParams(max_new_tokens=100, temperature=0, stop=["zzz", "\n\n"]),
            SamplingParams(max_new_tokens=100, temperature=0, stop_token_ids=[ord("!")]),
            SamplingParams(max_new_tokens=100, temperature=0),  # eos
            SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True),
            SamplingParams(max_new_tokens=0)]
    out = engine.generate(["Hi"] * len(reqs), reqs)
    assert [c.finish_reason for c in out] == ["length", "stop", "stop", "stop", "stop", "length", "length"]
    past_eos = "x" * (100 - len(TEXT.encode()) - 1)  # the eos token is special: skipped in the text
    assert [c.text for c in out] == ["Hel", "Hello, ", "Hello, wörld! €5", "Hello, wörld", TEXT,
                                     TEXT + past_eos, ""]
    assert out[0].token_ids == SCRIPT[:3]
    assert out[3].token_ids == list(b"Hello, w\xc3\xb6rld!")  # the stop token itself is kept in token_ids
    assert out[4].token_ids == SCRIPT[:len(TEXT.encode()) + 1] and out[4].token_ids[-1] == 256
    assert len(out[5].token_ids) == 100 and out[6].token_ids == []
    assert out[0].prompt_token_ids == [257, ord("H"), ord("i")] and out[0].logprobs is None
    assert isinstance(out[0], Completion)


def test_stream_holds_back_partial_characters_and_stop_strings():
    engine = Engine(ScriptedLM(SCRIPT), ByteTokenizer())
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=0, stop=["\n\nEND"]),
                   SamplingParams(temperature=0, max_new_tokens=9)):
        pieces = list(engine.stream("Hi", params))
        assert "".join(pieces) == engine.generate(["Hi"], params)[0].text
        # ö and € span 2 and 3 tokens; a partial character shows only if generation ends inside it (9 tokens)
        assert "\ufffd" not in "".join(pieces[:-1])
        if params.stop:
            assert not any("\n" in p for p in pieces)  # the start of the stop string was never shown
        assert len(pieces) > 3


def test_stream_matches_generate_when_sampling():
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=259, dim=32, n_layers=1, n_heads=2, eos_token_id=256)).eval()
    engine = Engine(model, ByteTokenizer())
    for seed in range(3):
        params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed, stop=["a"])
        assert "".join(engine.stream("Hi", params)) == engine.generate(["Hi"], params)[0].text


def test_finished_rows_are_dropped_without_changing_the_rest(models, monkeypatch):
    _, model = models
    engine = Engine(model)
    ps = prompts([3, 9, 14, 6, 11], seed=6)
    settings = [(2, 0, 1.0), (30, 0.8, 1.2), (5, 1.0, 1.0), (1, 0, 1.3), (30, 0, 1.1)]
    params = [SamplingParams(max_new_tokens=n, temperature=t, repetition_penalty=r, seed=i, ignore_eos=True,
                             logprobs=True) for i, (n, t, r) in enumerate(settings)]
    kept, keep_rows = [], KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, idx: (kept.append(list(idx)), keep_rows(self, idx)))
    together = engine.generate(ps, params)  # rows finish at 1, 2, 5 tokens: the batch is compacted twice
    assert kept == [[1, 2, 4], [0, 2]]  # rows 0 and 3 dropped after 2 tokens, then row 2 after 5
    monkeypatch.undo()
    for p, q, c in zip(ps, params, together):
        alone = engine.generate([p], q)[0]
        assert c.token_ids == alone.token_ids and len(c.token_ids) == q.max_new_tokens
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


def test_bad_requests():
    engine = Engine(ScriptedLM(SCRIPT))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        engine.generate(["text needs a tokenizer"])
    with pytest.raises(ValueError):
        engine.generate([[1, 2]], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError):
        engine.generate([[]])
    with pytest.raises(TypeError):
        engine.generate([1, 2, 3])
    assert engine.generate([]) == []


@pytest.mark.parametrize("dtype", ["bf16", "autocast"])
def test_packed_linear_matches_f_linear(dtype):
    """Inside packed_weights (the engine's generation) the model's Linear multiplies bf16 by a pre-packed weight
    where no gradient is wanted: F.linear's values; a new store packs the weight as it is now; a frozen weight's copy
    outlives a generation, a trainable one's does not; outside, and in fp32, no copy is made."""
    from alignlab.model.linear import Linear, PackedWeights, fused_linear, packed_weights

    torch.manual_seed(0)
    wdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    tol = dict(rtol=2e-2, atol=2e-2)
    auto = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast")
    for bias in (False, True):
        layers = [Linear(64, n, bias=bias).to(wdtype) for n in (96, 32, 32)]
        for shape in [(1, 1, 64), (16, 1, 64), (3, 5, 64), (64,), (300, 64)]:
            x = torch.randn(*shape).to(wdtype)
            store = PackedWeights()
            with torch.no_grad(), auto:
                want = [torch.nn.functional.linear(x, m.weight, m.bias) for m in layers]
                assert all(torch.equal(m(x), w) for m, w in zip(layers, want))  # no store: F.linear
                with packed_weights(store):
                    got = [m(x) for m in layers]
                    fused = fused_linear(x, layers)
            assert len(store) == (4 if x.numel() // 64 <= Linear.max_packed_rows else 0)  # 3 layers + 1 fused
            for g, f, w in zip(got, fused, want):
                assert g.dtype == f.dtype == w.dtype and g.shape == f.shape == w.shape
                torch.testing.assert_close(g, w, **tol)
                torch.testing.assert_close(f, w, **tol)
        with torch.no_grad(), auto:
            x = torch.randn(2, 64).to(wdtype)
            with packed_weights(PackedWeights()):
                before = layers[0](x)
            layers[0].weight.mul_(2)  # an optimizer step between two generations
            with packed_weights(PackedWeights()):
                after = layers[0](x)
            torch.testing.assert_close(after, torch.nn.functional.linear(x, layers[0].weight, layers[0].bias), **tol)
            assert not torch.allclose(after.float(), before.float())
            store, layer = PackedWeights(), layers[1]
            with packed_weights(store):
                layer(x)
            store.new_generation()
            assert len(store) == 0  # a trainable weight's copy lasts one generation (fused AdamW keeps _version)
            layer.requires_grad_(False)
            with packed_weights(store):
                layer(x)
            store.new_generation()
            assert len(store) == 1  # a frozen weight's copy stays
            layer.weight.mul_(0.5)  # ... until the weight changes (seen at the next generation)
            store.new_generation()
            assert len(store) == 0
            with packed_weights(store):
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), **tol)
    store, layer = PackedWeights(), Linear(64, 96)
    with torch.no_grad(), packed_weights(store):
        layer(torch.randn(2, 64))
    assert len(store) == 0  # fp32 takes the split (or F.linear), never a packed copy


def test_split_linear_matches_f_linear(monkeypatch):
    """The model's few-rows Linear fast path (used when decoding) computes F.linear, forward and backward."""
    from alignlab.model.transformer import Linear

    bmm_calls, bmm = [], torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: (bmm_calls.append(1), bmm(*a))[1])
    monkeypatch.setattr(Linear, "split", True)  # wherever split_pays would say no
    torch.manual_seed(0)
    for threads in (2, 4):  # the split needs > 1 thread dividing out_features: force it, whatever the machine
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        for bias in (False, True):
            for shape in [(1, 1, 64), (16, 1, 64), (3, 5, 64), (64,), (40, 64)]:
                layer = Linear(64, 96, bias=bias)
                x = torch.randn(*shape, requires_grad=True)
                bmm_calls.clear()
                y = layer(x)
                assert len(bmm_calls) == (x.numel() // 64 <= Linear.max_split_rows)  # 40 rows take F.linear
                want = torch.nn.functional.linear(x, layer.weight, layer.bias)
                torch.testing.assert_close(y, want)
                g = torch.randn_like(y)
                ours = torch.autograd.grad(y, (x, layer.weight), g)
                theirs = torch.autograd.grad(want, (x, layer.weight), g)
                for a, b in zip(ours, theirs):
                    torch.testing.assert_close(a, b)


def test_split_pays_is_measured_once_per_thread_count(monkeypatch):
    """split_pays times the two products once and keeps the answer; Linear.split = False never splits."""
    from alignlab.model import linear

    monkeypatch.setattr(linear, "_split_pays", {})
    first = linear.split_pays(2)
    assert linear._split_pays == {2: first} and linear.split_pays(2) == first
    assert linear.split_pays(3) is False  # 2048 rows do not split into 3 equal blocks
    bmm_calls, bmm = [], torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: (bmm_calls.append(1), bmm(*a))[1])
    monkeypatch.setattr(linear.Linear, "split", False)
    linear.Linear(64, 96)(torch.randn(1, 64))
    assert not bmm_calls


def test_learned_positions_with_ragged_max_new_tokens():
    """A finished row that keeps riding along must not index past GPT-2's position table."""
    torch.manual_seed(0)
    model = CausalLM(preset("gpt2", vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, max_seq_len=64)).eval()
    engine = Engine(model)
    ps = prompts([40, 3, 3, 3, 3], seed=8)
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (3, 50, 50, 50, 50)]
    together = engine.generate(ps, params)  # 1 of 5 rows finished: below the compaction threshold
    for p, q, c in zip(ps, params, together):
        assert c.token_ids == engine.generate([p], q)[0].token_ids and len(c.token_ids) == q.max_new_tokens


def test_special_token_stop_string():
    """A stop string that is one (special) token stops on that token, though decoded text skips it."""
    from alignlab.text import train_bpe

    tok = train_bpe("hello world, this is some text. " * 20, vocab_size=300, progress=False)
    end = tok.token_to_id("<|im_end|>")
    script = tok.encode("hello world", add_special_tokens=False) + [end] + tok.encode(" more", False)
    engine = Engine(ScriptedLM(script, vocab=tok.vocab_size), tok)
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, stop=["<|im_end|>", "zzz"])
    c = engine.generate(["hi"], params)[0]
    assert c.finish_reason == "stop" and c.text == "hello world" and c.token_ids[-1] == end
    assert "".join(engine.stream("hi", params)) == "hello world"


def test_kv_cache_is_uninitialised_but_never_read_unwritten(models, monkeypatch):
    """KVCache skips zero-filling; a NaN-filled cache must give the same tokens (padding, a repeated prompt's
    copied rows, compaction)."""
    _, model = models
    with monkeypatch.context() as m:
        m.setattr(torch, "zeros", lambda *a, **k: pytest.fail("KVCache zero-fills its buffers"))
        KVCache(1, 2, 1, 4, 8)
    ps = prompts([3, 12, 7, 20], seed=9)
    ps.insert(2, ps[1])
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (2, 12, 5, 4, 12)]
    want = [c.token_ids for c in Engine(model).generate(ps, params)]
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))  # every cache buffer
    assert [c.token_ids for c in Engine(model).generate(ps, params)] == want


class MethodsOnly:
    """A cache seen through its methods only: reading anything else (its tensors) fails the test."""

    METHODS = {"lengths", "append", "advance", "rows", "copy_rows", "keep_rows", "differentiable", "paged"}

    def __init__(self, cache, calls: list[str]):
        self._cache, self._calls = cache, calls

    def __getattr__(self, name):
        if name not in self.METHODS:
            pytest.fail(f"the cache's {name!r} was read: only its methods may be")
        self._calls.append(name)
        value = getattr(self._cache, name)
        return (lambda index: MethodsOnly(value(index), self._calls)) if name == "rows" else value


def test_engine_and_model_use_the_cache_through_its_methods_only(monkeypatch):
    """Generation with padding, a repeated prompt (prefilled once, its row copied) and finished rows dropped gives
    the same tokens when the cache hides everything but its methods, so another cache (paged) can replace it."""
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    ps = prompts([3, 9, 6], seed=10)
    ps.insert(1, ps[0])
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (2, 12, 3, 12)]
    want = [c.token_ids for c in Engine(model).generate(ps, params)]
    calls, new_cache = [], model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda *a: MethodsOnly(new_cache(*a), calls))
    assert [c.token_ids for c in Engine(model).generate(ps, params)] == want
    assert {"rows", "copy_rows", "keep_rows", "append", "advance", "lengths"} <= set(calls)


def test_sample_draws_from_the_distribution_and_never_a_filtered_token():
    from alignlab.infer.sampling import sample

    probs = torch.tensor([0.5, 0.0, 0.2, 0.3])
    logits = probs.log().expand(4000, 4).clone()  # log 0 = -inf: a filtered token
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    counts = torch.bincount(sample(logits, gens), minlength=4).float() / 4000
    assert counts[1] == 0 and torch.allclose(counts, probs, atol=0.03), counts
    # row b's draw depends on its own generator only
    again = sample(logits[:3], [torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.equal(again, sample(logits[:4000], [torch.Generator().manual_seed(i) for i in range(4000)])[:3])
