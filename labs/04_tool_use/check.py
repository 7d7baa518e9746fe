"""Lab 04's checks (labs/04_tool_use/exercises.py): serving 1-4, agents 5-7, tool calls 8.

    alignlab lab check 4                                    # every exercise: PASS, FAIL (with why) or TODO
    alignlab lab check 4 2                                  # one of them
    python labs/04_tool_use/check.py 1 4 [--module my.py]   # the same, without the CLI

Each check runs the same operations through alignlab's paged KV cache (alignlab/infer/paged.py), multi-LoRA kernels
(alignlab/lora/multi_kernels.py), agent code (envs/, ace.py, objectives/rl.py) or tool-call parser
(alignlab/tools/calls.py) and compares, or compares with values computed by hand.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from alignlab.infer.paged import BlockTable, PagedKVCache
from alignlab.lora.multi_kernels import lora_bmm, lora_sgmv, segments

BFCL = Path(__file__).resolve().parents[3] / "shared" / "data" / "bfcl"  # ../shared/data/bfcl beside the checkout


def paged_cache(num_blocks: int, block_size: int) -> PagedKVCache:
    """A pool with the smallest tensors: only its block bookkeeping matters here."""
    return PagedKVCache(n_layers=1, n_kv_heads=1, head_dim=1, num_blocks=num_blocks, block_size=block_size)


def expect(got, want, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, expected {want!r}")


# ----------------------------------------------------------------------------------------------------------------
# The checks, one per exercise


def check_1(ex) -> str:
    by_hand = [([], 16, (0, 0)), ([0], 16, (0, 0)), ([1], 16, (1, 15)), ([16], 16, (1, 0)), ([17], 16, (2, 15)),
               ([5, 16, 17, 33, 40], 16, (10, 49)), ([100, 3], 8, (14, 9))]
    for lengths, bs, want in by_hand:
        expect(tuple(ex.blocks_and_waste(lengths, bs)), want, f"blocks_and_waste({lengths}, {bs})")
    g = random.Random(1)
    for bs in (1, 4, 16, 32):
        lengths = [g.randint(0, 300) for _ in range(12)]
        cache = paged_cache(4096, bs)
        live = []
        for n in lengths:
            table = BlockTable()
            assert cache.reserve(table, 0, n)
            live.append((table, n))
        s = cache.stats(live)
        expect(tuple(ex.blocks_and_waste(lengths, bs)), (s["used"], s["wasted"]),
               f"blocks_and_waste({lengths}, {bs}) against PagedKVCache.stats")
    cases = [(40, 8, 0, 16, 3), (40, 8, 1, 16, 10), (32, 8, 1, 16, 10), (40, 1, 30, 16, 5), (40, 4, 30, 16, 14)]
    for P, n, new, bs, want in cases:
        expect(ex.blocks_with_sharing(P, n, new, bs), want, f"blocks_with_sharing({P}, {n}, {new}, {bs})")
    for _ in range(40):
        P, n, new, bs = g.randint(1, 90), g.randint(1, 9), g.randint(0, 40), g.choice([2, 4, 16])
        cache = paged_cache(4096, bs)
        first = BlockTable()
        cache.reserve(first, 0, P)
        tables = [first] + [cache.fork(first) for _ in range(n - 1)]
        for t in tables:
            assert cache.reserve(t, P, P + new)
        expect(ex.blocks_with_sharing(P, n, new, bs), cache.stats()["used"],
               f"blocks_with_sharing({P}, {n}, {new}, {bs}) against PagedKVCache (fork, then reserve)")
    return "by hand and against PagedKVCache on random lengths, block sizes and sample counts"


def check_2(ex) -> str:
    details = []
    for P, bs in ((10, 4), (8, 4), (40, 16)):
        n, steps = 5, 9
        pool, cache = ex.ToyPool(64, bs), paged_cache(64, bs)
        prompt = list(range(100, 100 + P))
        table, ref = [], BlockTable()
        for i, tok in enumerate(prompt):
            before = list(table)
            ex.append(pool, table, i, tok)
            if table[:len(before)] != before:
                raise AssertionError(f"block size {bs}: appending to a sequence nobody shares changed its table "
                                     f"{before} -> {table} (write in place; copy only a shared block)")
        cache.reserve(ref, 0, P)
        expect(pool.read(table, P), prompt, f"block size {bs}: the prompt read back")
        expect(len(pool.refs) - len(pool.free), cache.stats()["used"], f"block size {bs}: blocks after the prompt")
        tables, refs = [table] + [ex.fork(pool, table) for _ in range(n - 1)], [ref] + [cache.fork(ref)
                                                                                          for _ in range(n - 1)]
        expect(len(pool.refs) - len(pool.free), cache.stats()["used"], f"block size {bs}: blocks after {n - 1} forks")
        shared = sorted(pool.refs[b] for b in table)
        expect(shared, [n] * len(table), f"block size {bs}: reference counts of the prompt's blocks after the forks")
        own = [[] for _ in range(n)]
        for step in range(steps):
            for s in range(n):
                tok = 1000 * (s + 1) + step
                ex.append(pool, tables[s], P + step, tok)
                own[s].append(tok)
                cache.reserve(refs[s], P + step, P + step + 1)
                expect(len(pool.refs) - len(pool.free), cache.stats()["used"],
                       f"prompt {P}, block size {bs}: blocks in use after sample {s} wrote token {step + 1}")
        for s in range(n):
            got = pool.read(tables[s], P + steps)
            if got != prompt + own[s]:
                raise AssertionError(f"prompt {P}, block size {bs}: sample {s} reads {got}, expected its prompt then "
                                     f"its own tokens {prompt + own[s]} (did a write go into a shared block?)")
        details.append(f"{P}/{bs}: {cache.stats()['used']} blocks")
        for s in range(n):
            ex.free(pool, tables[s])
            if tables[s]:
                raise AssertionError("free() must empty the table")
        if any(pool.refs) or len(pool.free) != len(pool.refs):
            raise AssertionError(f"after every sequence is freed the pool is not whole: refs {pool.refs}, "
                                 f"{len(pool.free)} of {len(pool.refs)} blocks free")
    return ("prompt, 4 forks, 9 divergent tokens each; block counts equal PagedKVCache's at every write "
            f"({'; '.join(details)}), each sample reads its own tokens, the pool whole at the end")


def check_3(ex) -> str:
    g = torch.Generator().manual_seed(3)
    n_in, n_out = 24, 20
    for ranks, N, base_frac in (([4, 8, 2], 30, 0.2), ([8] * 5 + [16], 64, 0.0), ([4, 0, 6], 17, 0.5), ([3], 5, 1.0)):
        S, r_max = len(ranks), max(max(ranks), 1)
        A = torch.randn(S, r_max, n_in, generator=g, dtype=torch.float64)
        B = torch.randn(S, n_out, r_max, generator=g, dtype=torch.float64)
        A0, B0 = A.clone(), B.clone()
        for s, r in enumerate(ranks):  # MultiLora's stacking: zeros past each rank
            A0[s, r:], B0[s, :, r:] = 0, 0
        scaling = [0.5 + s for s in range(S)]
        index = torch.randint(0, S, (N,), generator=g)
        index[torch.rand(N, generator=g) < base_frac] = -1
        x = torch.randn(N, n_in, generator=g, dtype=torch.float64)
        got = torch.as_tensor(ex.sgmv_by_hand(x, A, B, scaling, ranks, index), dtype=torch.float64)
        want = lora_sgmv(x, A, B, scaling, ranks, segments(index))
        what = f"ranks {ranks}, {N} tokens, {int((index < 0).sum())} base tokens"
        if got.shape != want.shape:
            raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if not torch.allclose(got, want, atol=1e-9):
            i = int((got - want).abs().max(1).values.argmax())
            raise AssertionError(f"{what}: token {i} (slot {int(index[i])}) differs from lora_sgmv; "
                                 "does your code read A and B past each adapter's rank?")
        zeroed = torch.tensor(scaling, dtype=torch.float64).masked_fill(torch.tensor(ranks) == 0, 0.0)
        bmm = lora_bmm(x, A0, B0, zeroed, index)
        if not torch.allclose(got, bmm, atol=1e-9):
            raise AssertionError(f"{what}: differs from lora_bmm on the zero-padded weights")
    return "four mixes (base tokens, an untargeted slot, one adapter); equal to lora_sgmv and to lora_bmm"


def check_4(ex) -> str:
    g = random.Random(4)
    for bs in (4, 16):
        for length in (0, bs - 1, bs, 3 * bs + 1, 5 * bs):
            tokens = [g.randrange(1000) for _ in range(length)]
            for adapter in (None, "sql"):
                cache, table = paged_cache(64, bs), BlockTable()
                cache.reserve(table, 0, length)
                cache.commit(table, tokens, length, adapter)
                expect(list(ex.block_hashes(tokens, bs, adapter)), table.hashes,
                       f"block_hashes of {length} tokens, block size {bs}, adapter {adapter!r}")
    bs = 16
    first = [g.randrange(1000) for _ in range(80)]
    cache, table = paged_cache(64, bs), BlockTable()
    cache.reserve(table, 0, len(first))
    cache.commit(table, first, len(first), "sql")
    cache.free(table)  # its blocks stay cached at reference count 0
    cached = set(cache.pool.block_of)
    swap = list(first)
    swap[20] = -1  # block 1 differs, block 2 is the same tokens: the chain breaks at block 1
    cases = {"the same prompt": (first, "sql"), "the first 48 tokens, then others": (first[:48] + [1] * 20, "sql"),
             "exactly 32 tokens of it": (first[:32], "sql"), "33 tokens of it": (first[:33], "sql"),
             "another adapter": (first, None), "block 1 changed": (swap, "sql"), "nothing": ([], "sql")}
    for what, (tokens, adapter) in cases.items():
        t = BlockTable()
        want = cache.match_prefix(t, tokens, adapter)
        cache.free(t)
        expect(ex.cached_prefix(tokens, cached, bs, adapter), want, f"cached_prefix: {what}")
    return "hash chains with and without an adapter; seven prompts against PagedKVCache.match_prefix"


def check_5(ex) -> str:
    from alignlab.envs.tictactoe import LINES, SQUARES, invalid_reward
    from alignlab.envs.tictactoe import winner as alignlab_winner

    g, boards = random.Random(5), 0
    while boards < 3000:
        cells = "".join(g.choice("xo.") for _ in range(9))
        board = dict(zip(SQUARES, cells))
        if all(any(all(board[q] == who for q in line) for line in LINES) for who in "xo"):
            continue  # both symbols have a line: no real game gets there
        expect(ex.winner(cells), alignlab_winner(board), f"winner({cells!r})")
        boards += 1
    for result, want in (("win", 1.0), ("draw", 0.5), ("loss", 0.0)):
        expect(ex.game_reward(result, 3), want, f"game_reward({result!r}, 3)")
    for m in range(5):
        got = ex.game_reward("invalid", m)
        if abs(got - invalid_reward(m)) > 1e-9:
            raise AssertionError(f"game_reward('invalid', {m}): got {got}, expected {invalid_reward(m)}")
    return "3,000 random boards against envs.tictactoe.winner; every ending's reward"


def check_6(ex) -> str:
    from alignlab.objectives.rl import group_advantages

    g = random.Random(6)
    for G in (2, 4, 8):
        for _ in range(20):
            rewards = [g.choice((1.0, 0.5, 0.0, -0.849, -1.0)) for _ in range(3 * G)]
            replies = [g.randint(1, 5) for _ in rewards]
            adv = group_advantages(torch.tensor(rewards), G).tolist()
            want = [a for a, n in zip(adv, replies) for _ in range(n)]
            got = list(ex.row_advantages(rewards, G, replies))
            if len(got) != len(want) or any(abs(a - b) > 1e-5 for a, b in zip(got, want)):
                raise AssertionError(f"row_advantages({rewards}, {G}, {replies}): got {got}, expected {want}")
    return "groups of 2, 4 and 8 games against objectives.rl.group_advantages, repeated per reply"


def check_7(ex) -> str:
    from alignlab.ace import CuratorConfig, Playbook, curate

    g = random.Random(7)
    facts = [f"{a} * {b} = {a * b}" for a in range(2, 6) for b in range(2, 6)]
    for _ in range(200):
        playbook = Playbook()
        playbook.apply([{"op": "add", "text": t} for t in g.sample(facts, 3)], 1)
        lessons = [g.choice(facts) + g.choice(("", ".", "!", "  ")) for _ in range(g.randint(0, 12))]
        lessons = [t.upper() if g.random() < 0.2 else t for t in lessons]
        max_new = g.randint(1, 5)
        ops, _ = curate(playbook, lessons, [], CuratorConfig(max_entries=100, max_new=max_new))
        want = [op["text"] for op in ops if op["op"] == "add"]
        expect(list(ex.lessons_to_add([e.text for e in playbook.entries], lessons, max_new)), want,
               f"lessons_to_add({[e.text for e in playbook.entries]}, {lessons}, {max_new})")
    return "200 random rounds against ace.curate's additions"


HERMES_CASES = {  # what a model may write -> what alignlab's parser reads (see the exercise's rules)
    "one call": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "text before": 'I\'ll look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "text before and after": 'Let me check. <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> Back soon.',
    "parallel calls": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                       '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "h24": true}}\n</tool_call>'),
    "no call": "The weather in Paris is mild today.",
    "nothing at all": "",
    "broken JSON": 'Sure.<tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>',
    "no name": '<tool_call>{"arguments": {"x": 1}}</tool_call>',
    "a name that is not a string": '<tool_call>{"name": 7, "arguments": {"x": 1}}</tool_call>',
    "no arguments": '<tool_call>{"name": "f"}</tool_call>',
    "arguments as a JSON string": '<tool_call>{"name": "f", "arguments": "{\\"x\\": [1, 2]}"}</tool_call>',
    "arguments as a broken JSON string": '<tool_call>{"name": "f", "arguments": "{x: 1"}</tool_call>',
    "arguments that are not an object": '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
    "not an object": '<tool_call>["f", {"x": 1}]</tool_call>',
    "extra keys": '<tool_call>{"id": "c1", "name": "f", "arguments": {}, "type": "function"}</tool_call>',
    "a broken block between two calls": ('A <tool_call>{"name": "f", "arguments": {}}</tool_call> B '
                                         '<tool_call>{"name": }</tool_call> C '
                                         '<tool_call>{"name": "g", "arguments": {"y": null}}</tool_call> D'),
    "a tag inside an argument": '<tool_call>{"name": "echo", "arguments": {"text": "a <tool_call> b"}}</tool_call>',
    "not closed (the model stopped)": 'On it.\n<tool_call>\n{"name": "f", "arguments": {"x": 1.5}}\n',
    "not closed and broken": 'On it.\n<tool_call>\n{"name": "f", "argu',
    "an opening tag alone": "Hmm <tool_call>",
    "a closing tag alone": 'Done.</tool_call> {"name": "f", "arguments": {}}',
}


def check_8(ex) -> str:
    from alignlab.tools.calls import format_calls, parse_calls

    for case, text in HERMES_CASES.items():
        expect(tuple(ex.parse_hermes(text)), parse_calls(text, "hermes"), f"parse_hermes({text!r}) [{case}]")
    if not (BFCL / "possible_answer").is_dir():
        return (f"{len(HERMES_CASES)} replies by hand against tools.calls.parse_calls; BFCL's ground truth skipped: "
                f"no {BFCL}/possible_answer (see ../shared/data/SOURCES.md)")
    from alignlab.data.bfcl import ground_truth_calls
    from alignlab.data.loaders import read_bfcl

    n_calls, n_replies = 0, 0
    for category in ("simple_python", "multiple", "parallel"):
        for question, answer in read_bfcl(BFCL, category):
            functions = question.record.get("function") or []
            required = {f["name"]: f["parameters"].get("required", []) for f in functions}
            calls = ground_truth_calls(answer, required)
            text = format_calls(calls, "hermes")
            expect(tuple(ex.parse_hermes(text)), ("", calls), f"parse_hermes of BFCL {category} {answer['id']}'s "
                                                              f"ground truth written as Hermes calls, {text!r}")
            n_calls, n_replies = n_calls + len(calls), n_replies + 1
    return (f"{len(HERMES_CASES)} replies by hand against tools.calls.parse_calls; BFCL's {n_calls} ground-truth "
            f"calls ({n_replies} replies) written as Hermes calls and read back")


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7, 8: check_8}


if __name__ == "__main__":
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
