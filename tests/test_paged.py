"""The paged KV cache: block bookkeeping, copy-on-write, prefix caching, and the forward over its blocks."""

from __future__ import annotations

import torch

from alignlab.infer import Engine, LLMEngine, SamplingParams
from alignlab.infer.paged import BlockPool, BlockTable, PagedKVCache, length_groups
from alignlab.model.attention import sdpa_attention
from alignlab.model.config import ModelConfig
from alignlab.model.kv_cache import KVCache
from alignlab.model.transformer import CausalLM

GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)


def tiny(pos: str = "rope", seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, pos=pos,
                      max_seq_len=128)
    return CausalLM(cfg).eval()


def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def whole(engine: LLMEngine) -> bool:
    """No block is referenced once nothing is in flight."""
    s = engine.stats()
    return s["used"] == 0 and s["free"] + s["cached"] == s["total"] and s["wasted"] == 0


# --- bookkeeping ---------------------------------------------------------------------------------------------

def test_pool_counts_refs_and_keeps_named_blocks_until_needed():
    pool = BlockPool(3)
    a, b = pool.allocate(), pool.allocate()
    pool.retain(a)
    pool.register(a, 123)
    pool.release(a)
    assert pool.counts() == {"total": 3, "used": 2, "free": 1, "cached": 0}
    pool.release(a)  # last reference: named, so kept (evictable)
    pool.release(b)  # unnamed: free
    assert pool.counts() == {"total": 3, "used": 0, "free": 2, "cached": 1}
    assert pool.lookup(123) == a
    pool.allocate(), pool.allocate()  # the free ones first
    assert pool.lookup(123) == a
    assert pool.allocate() == a and pool.lookup(123) is None  # then the cached one, which loses its name


def test_reserve_copies_a_shared_block_before_writing_and_fork_copies_nothing():
    cache = PagedKVCache(n_layers=2, n_kv_heads=1, head_dim=2, num_blocks=4, block_size=4)
    t = BlockTable()
    assert cache.reserve(t, 0, 6) and len(t.blocks) == 2
    cache.k[:, t.blocks[1]] = 7.0
    u = cache.fork(t)
    assert u.blocks == t.blocks and cache.pool.counts()["used"] == 2
    assert cache.reserve(u, 6, 7)  # writes into the shared partial block: u gets its own copy
    assert u.blocks[0] == t.blocks[0] and u.blocks[1] != t.blocks[1]
    assert torch.equal(cache.k[:, u.blocks[1]], cache.k[:, t.blocks[1]])
    assert cache.pool.refs[t.blocks[1]] == 1 and cache.pool.refs[t.blocks[0]] == 2
    assert not cache.reserve(u, 7, 20)  # all or nothing
    assert len(u.blocks) == 2
    cache.free(t), cache.free(u)
    assert cache.pool.counts()["free"] == 4


def test_prefix_match_never_takes_the_last_token_and_depends_on_the_adapter():
    cache = PagedKVCache(1, 1, 2, num_blocks=8, block_size=4)
    tokens = list(range(12))
    t = BlockTable()
    cache.reserve(t, 0, 12)
    cache.commit(t, tokens, 12, None)
    cache.free(t)
    u = BlockTable()
    assert cache.match_prefix(u, tokens, None) == 8  # 3 full blocks cached, the last token's block not taken
    assert cache.match_prefix(BlockTable(), tokens + [5], None) == 12
    assert cache.match_prefix(BlockTable(), tokens, "other-adapter") == 0
    assert cache.match_prefix(BlockTable(), [99] + tokens[1:], None) == 0  # a chain: block 0 differs


def test_paged_rows_give_what_the_static_cache_gives():
    """append over ragged rows, read back through block tables, equals KVCache.append over the same rows."""
    torch.manual_seed(0)
    L, H, d, bs = 2, 2, 4, 4
    cache = PagedKVCache(L, H, d, num_blocks=16, block_size=bs)
    ref = KVCache(L, 3, H, 32, d)
    tables = [BlockTable() for _ in range(3)]
    lengths = [0, 0, 0]
    for n_new in ([5, 2, 7], [1, 1, 1], [3, 6, 1]):
        T = max(n_new)
        for t, n0, n in zip(tables, lengths, n_new):
            cache.reserve(t, n0, n0 + n)
        rows = cache.rows(tables, lengths, n_new)
        assert rows.lengths == lengths
        for layer in range(L):
            k, v = torch.randn(3, H, T, d), torch.randn(3, H, T, d)
            K, V = rows.append(layer, k, v)
            Kr, Vr = ref.append(layer, k, v)
            assert K.shape == (3, H, max(lengths) + T, d)
            for b in range(3):  # the row's own tokens: what it has plus its real new ones
                m = lengths[b] + n_new[b]
                torch.testing.assert_close(K[b, :, :m], Kr[b, :, :m], rtol=0, atol=0)
                torch.testing.assert_close(V[b, :, :m], Vr[b, :, :m], rtol=0, atol=0)
            assert torch.isfinite(K).all() and torch.isfinite(V).all()
        # the reference cache holds the padding too: move each row to its real length
        for b in range(3):
            ref._lengths[b] = lengths[b] + n_new[b]
        lengths = [a + n for a, n in zip(lengths, n_new)]


def test_length_groups_split_only_where_it_saves_more_than_a_group_costs():
    assert length_groups([3, 3, 3], 16) == [[0, 1, 2]]
    # two long rows among many short ones: reading 20 blocks for every row would waste 62 x 19 blocks
    assert length_groups([1] * 62 + [20, 20], 16, cost=1024) == [list(range(62)), [62, 63]]
    # the same rows when a group costs more than it saves: one group
    assert length_groups([1] * 62 + [20, 20], 16, cost=10 ** 6) == [list(range(64))]
    # every row in exactly one group, groups in order of length
    n = [5, 1, 9, 1, 5, 30, 2]
    groups = length_groups(n, 16, cost=0)
    assert sorted(b for g in groups for b in g) == list(range(len(n)))
    assert [max(n[b] for b in g) for g in groups] == sorted({max(n[b] for b in g) for g in groups})


def test_grouped_attention_over_the_blocks_equals_attention_over_the_padded_rows():
    """PagedRows.attend (rows grouped by length, each group reading its own blocks) gives what one attention over
    all the rows, padded to the longest, gives."""
    torch.manual_seed(0)
    H, Hq, d, bs = 2, 4, 8, 4
    lengths, n_new = [1, 2, 40, 3, 41, 0], [1, 1, 1, 1, 1, 1]
    for T in (1, 3):
        cache = PagedKVCache(1, H, d, num_blocks=128, block_size=bs)
        cache.group_cost = 0  # split wherever a row reads fewer blocks
        tables = [BlockTable() for _ in lengths]
        n_new = [T] * len(lengths)
        for t, n0 in zip(tables, lengths):
            cache.reserve(t, 0, n0 + T)
        cache.k.normal_(), cache.v.normal_()
        rows = cache.rows(tables, lengths, n_new)
        assert len(rows.groups) > 1
        B = len(lengths)
        q, k, v = torch.randn(B, Hq, T, d), torch.randn(B, H, T, d), torch.randn(B, H, T, d)
        out = rows.attend(0, q, k, v, lambda q, k, v, offset: sdpa_attention(q, k, v, offset))
        K, V = rows.append(0, k, v)  # every row padded to the longest
        ref = sdpa_attention(q, K, V, torch.tensor(lengths))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# --- the engine's use of the pool -------------------------------------------------------------------------

def test_n_copies_of_a_prompt_share_its_blocks():
    model = tiny()
    p = prompt(21)  # 5 full blocks of 4 and one partial
    engine = LLMEngine(model, block_size=4, num_blocks=64)
    params = [SamplingParams(max_new_tokens=6, temperature=1.0, seed=s, ignore_eos=True) for s in range(8)]
    for i, q in enumerate(params):
        engine.add_request(str(i), p, q)
    engine.step()  # the prompt is prefilled once; the 8 requests fork its blocks
    s = engine.stats()
    assert s["used"] == 6 and s["running"] == 8
    engine.step()  # each writes its first new token into the shared partial block: 8 private copies
    assert engine.stats()["used"] == 5 + 8
    results = {}
    while engine.has_unfinished():
        results.update((o.request_id, o.completion) for o in engine.step() if o.finished)
    alone = Engine(model).generate([p] * 8, params)
    assert [results[str(i)].token_ids for i in range(8)] == [c.token_ids for c in alone]
    assert whole(engine)


def test_prefix_cache_hit_on_a_repeated_system_prompt():
    model = tiny()
    system = prompt(24, seed=1)
    users = [system + prompt(n, seed=10 + n) for n in (3, 9, 5)]
    static = Engine(model).generate(users, GREEDY)
    engine = LLMEngine(model, block_size=8)
    first = engine.generate(users[:1], GREEDY)
    assert engine.stats()["prefix_hit_tokens"] == 0 and engine.stats()["cached"] > 0
    rest = engine.generate(users[1:], GREEDY)
    assert engine.stats()["prefix_hit_tokens"] == 2 * 24  # the system prompt's 3 full blocks, twice
    assert [c.token_ids for c in first + rest] == [c.token_ids for c in static]
    off = LLMEngine(model, block_size=8, enable_prefix_caching=False)
    assert [c.token_ids for c in off.generate(users, GREEDY)] == [c.token_ids for c in static]
    assert off.stats()["prefix_hit_tokens"] == 0 and off.stats()["cached"] == 0
    assert whole(engine) and whole(off)


def test_wasted_slots_are_in_last_blocks_only():
    model = tiny()
    engine = LLMEngine(model, block_size=8)
    for i, n in enumerate((5, 8, 13)):
        engine.add_request(str(i), prompt(n, seed=i), GREEDY)
    engine.step()
    s = engine.stats()  # after the prefill each holds its prompt (5, 8, 13 tokens): 1 + 1 + 2 blocks
    assert s["used"] == 4 and s["wasted"] == 3 + 0 + 3
    while engine.has_unfinished():
        engine.step()
    assert whole(engine)


def test_abort_frees_blocks_at_once():
    model = tiny()
    engine = LLMEngine(model, block_size=4)
    engine.add_request("a", prompt(10), GREEDY)
    engine.add_request("b", prompt(10, seed=1), GREEDY)
    engine.step()
    used = engine.stats()["used"]
    engine.abort("a")
    assert engine.stats()["used"] == used - 3
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs if o.finished] == [("a", "abort"), ("b", "length")]
    assert whole(engine)


def test_reset_prefix_cache_forgets_cached_blocks():
    model = tiny()
    engine = LLMEngine(model, block_size=4)
    p = prompt(13)
    engine.generate([p], GREEDY)
    assert engine.stats()["cached"] == 5  # 22 tokens cached: 5 full blocks
    engine.reset_prefix_cache()
    assert engine.stats()["cached"] == 0 and whole(engine)
    engine.generate([p], GREEDY)
    assert engine.stats()["prefix_hit_tokens"] == 0
