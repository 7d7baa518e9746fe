"""The numbers of Lab 04's serving half, measured on a tiny random model in about a minute on a laptop CPU.

    python labs/04_tool_use/serving_numbers.py            # all four parts
    python labs/04_tool_use/serving_numbers.py paged lora  # some of them: paged, batching, lora, qwen
    python labs/04_tool_use/serving_numbers.py --wall      # wall-clock seconds, torch's default threads

    paged     PagedAttention's arithmetic: blocks and wasted slots by hand next to LLMEngine.stats(), a static
              cache's reservation for the same batch, n = 8 samples sharing a prompt, a prefix-cache hit
    batching  continuous (LLMEngine) vs static (Engine) batching: throughput, the cost of one decode step as the
              batch grows, and the time to first token of a request that arrives while a long batch runs
    lora      S-LoRA's heterogeneous batch: lora_bmm (gather, padded to the largest rank) vs lora_sgmv (sorted
              segments, each at its own rank), with the multiply-adds each one does
    qwen      what one token and one block of KV cache cost for Qwen2.5-0.5B/1.5B (their config.json files)

Every model is a random Llama built here (seed 0), fp32, greedy, ignore_eos. Timings are the fastest of a few
runs, on one thread, in CPU seconds of this process (time.process_time): on an idle core they equal wall-clock
time, and other load on a shared machine moves them far less. `--wall` times wall-clock seconds on torch's
default threads instead. The block counts do not depend on the machine.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from alignlab.infer import Engine, LLMEngine, SamplingParams
from alignlab.lora.multi_kernels import lora_bmm, lora_grouped, lora_sgmv, segments
from alignlab.model import CausalLM, preset

HERE = Path(__file__).resolve().parent
BS = 16
clock = time.process_time  # CPU seconds of this process (--wall: wall-clock seconds)


def tiny_model(dim: int = 128, n_layers: int = 4, vocab: int = 512, max_seq_len: int = 1024) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, max_seq_len=max_seq_len))
    return model.eval().requires_grad_(False)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)


def prompt_of(n: int, seed: int) -> list[int]:
    g = random.Random(seed)
    return [g.randrange(1, 500) for _ in range(n)]


def best(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


# ------------------------------------------------------------------------------------------------------------------
# 1. PagedAttention's arithmetic


def paged():
    print(f"== 1. PagedAttention's arithmetic (block_size {BS}) ==")
    model = tiny_model()
    prompts = [5, 16, 17, 33, 40, 64, 3, 100]
    new = [40, 8, 60, 12, 50, 30, 60, 20]
    engine = LLMEngine(model, block_size=BS, max_num_seqs=8, max_num_batched_tokens=512)
    for i, (p, n) in enumerate(zip(prompts, new)):
        engine.add_request(str(i), prompt_of(p, i), greedy(n))
    for _ in range(6):  # one prefill step, then five decode steps
        engine.step()
    held = [s.num_computed for s in engine.scheduler.running]
    blocks = sum(math.ceil(n / BS) for n in held)
    wasted = sum(math.ceil(n / BS) * BS - n for n in held)
    s = engine.stats()
    print(f"8 requests, prompts {prompts} tokens, max_new_tokens {new}")
    print(f"after 6 steps the sequences hold n = {held} tokens in the cache")
    print(f"  blocks  by hand: sum ceil(n / 16)          = {blocks:4d}    LLMEngine.stats()['used']   = {s['used']}")
    print(f"  wasted  by hand: sum (16 ceil(n/16) - n)   = {wasted:4d}    LLMEngine.stats()['wasted'] = {s['wasted']}"
          f"   ({s['wasted'] / (s['used'] * BS):.1%} of the allocated slots; at most 8 x 15 = 120)")
    reserved = len(prompts) * (max(prompts) + max(new))
    print(f"  a static cache for this batch reserves 8 rows x (longest prompt {max(prompts)} + most new tokens "
          f"{max(new)}) = {reserved} slots; at the end the requests hold {sum(prompts) + sum(new)} "
          f"({1 - (sum(prompts) + sum(new)) / reserved:.1%} never filled)")
    fractions = []
    while engine.has_unfinished():
        engine.step()
        s = engine.stats()
        if s["used"]:
            fractions.append(s["wasted"] / (s["used"] * BS))
    mean = sum(fractions) / len(fractions)
    print(f"  over the remaining {len(fractions)} steps the paged cache wasted {mean:.1%} of "
          f"its allocated slots on average (max {max(fractions):.1%}); pool whole at the end: "
          f"{engine.stats()['used'] == 0}")

    # sharing: n = 8 samples of one 40-token prompt
    prompt = prompt_of(40, 99)
    engine = LLMEngine(model, block_size=BS)
    for i in range(8):
        engine.add_request(f"s{i}", prompt, SamplingParams(max_new_tokens=20, temperature=1.0, seed=i, ignore_eos=True))
    engine.step()
    after_prefill = engine.stats()["used"]
    engine.step()
    after_decode = engine.stats()["used"]
    print("n = 8 samples of a 40-token prompt (3 blocks: 16 + 16 + 8 tokens)")
    print(f"  8 private copies: 8 x 3 = 24 blocks; shared, after the prefill: {after_prefill}; after the first "
          f"decode step: {after_decode} (2 full blocks shared by all 8, one copy of the last block each: "
          f"copy-on-write)")
    while engine.has_unfinished():
        engine.step()
    hits = engine.stats()["prefix_hit_tokens"]
    engine.add_request("again", prompt, greedy(4))
    engine.step()
    print(f"  prefix cache: the same prompt, sent again after they finished, took "
          f"{engine.stats()['prefix_hit_tokens'] - hits} of its 40 tokens from the cache (2 full blocks; the "
          f"block of the last prompt token is always computed)")
    while engine.has_unfinished():
        engine.step()
    print()


# ------------------------------------------------------------------------------------------------------------------
# 2. Continuous vs static batching


def batching():
    model = tiny_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"== 2. Continuous vs static batching ({n_params / 1e6:.1f}M-parameter random Llama, fp32, "
          f"{torch.get_num_threads()} thread(s)) ==")
    g = random.Random(0)
    work = [(prompt_of(g.randint(8, 48), i), g.choice([4, 8, 16, 32, 64])) for i in range(24)]
    wanted = sum(n for _, n in work)
    batch = 8

    def static():
        e = Engine(model)
        for s in range(0, len(work), batch):
            chunk = work[s:s + batch]
            e.generate([p for p, _ in chunk], [greedy(n) for _, n in chunk])

    def continuous():
        LLMEngine(model, max_num_seqs=batch).generate([p for p, _ in work], [greedy(n) for _, n in work])

    static(), continuous()  # warm-up
    t_static = t_cont = math.inf
    for _ in range(3):  # in turn, so that other load on the machine hits both alike
        t_static, t_cont = min(t_static, best(static, 1)), min(t_cont, best(continuous, 1))
    print(f"throughput: 24 requests, prompts of 8-48 tokens, 4-64 new tokens each ({wanted} in all), at most "
          f"{batch} at a time")
    print(f"  static Engine (batches of 8, each runs to its longest request) {t_static:6.2f} s  "
          f"{wanted / t_static:6.0f} tok/s")
    print(f"  LLMEngine (a finished request's place is taken at once)         {t_cont:6.2f} s  "
          f"{wanted / t_cont:6.0f} tok/s   ({t_static / t_cont:.2f}x)")

    print("cost of one decode step as the batch grows (LLMEngine, 32-token prompts):")
    per_token = {}
    for b in (1, 4, 16, 32):
        engine = LLMEngine(model, max_num_seqs=b)
        for i in range(b):
            engine.add_request(str(i), prompt_of(32, i), greedy(16))
        engine.step()  # the prefill
        engine.step()
        ms = best(lambda e=engine: [e.step() for _ in range(4)], 3) / 4 * 1e3  # the fastest of 3 windows of 4 steps
        per_token[b] = ms / b
        print(f"  batch {b:3d}: {ms:6.2f} ms per step, {ms / b:6.3f} ms per token")
        while engine.has_unfinished():
            engine.step()
    print(f"  a step of 32 costs {per_token[32] * 32 / per_token[1]:.1f}x a step of 1: batching still pays "
          f"({per_token[1] / per_token[32]:.1f}x less per token), but the gain is far from 32x here")

    # a late arrival: 8 requests of 128 tokens are running; a 16-token request arrives after 32 of their steps
    long = [prompt_of(24, 100 + i) for i in range(8)]
    late, k = prompt_of(16, 200), 32
    e = Engine(model)
    e.generate(long[:2], greedy(4))  # warm-up

    def ttft_static():
        t0 = clock()
        e.generate(long, greedy(k))  # the batch's first k steps (prefill + k - 1 decodes)
        t_arrive = clock() - t0
        t0 = clock()
        e.generate(long, greedy(128))
        t_batch = clock() - t0
        t0 = clock()
        e.generate([late], greedy(1))  # the next batch: its prefill gives the first token
        return t_batch - t_arrive + clock() - t0, t_batch

    def ttft_continuous():
        engine = LLMEngine(model, max_num_seqs=16)
        for i, p in enumerate(long):
            engine.add_request(str(i), p, greedy(128))
        for _ in range(k):
            engine.step()
        t0 = clock()
        engine.add_request("late", late, greedy(16))
        first = None
        while engine.has_unfinished():
            outs = engine.step()
            if first is None and any(o.request_id == "late" and o.new_token_ids for o in outs):
                first = clock() - t0
        return first

    runs = [ttft_static() for _ in range(1)]
    t_static, t_batch = min(r[0] for r in runs), min(r[1] for r in runs)
    t_cont = ttft_continuous()
    print(f"a late request: 8 requests of 128 new tokens are running (the whole batch takes {t_batch:.2f} s); a "
          f"16-token request arrives after {k} of their steps")
    print(f"  time to its first token, static:     {t_static * 1e3:7.1f} ms (it waits for the batch to end)")
    print(f"  time to its first token, continuous: {t_cont * 1e3:7.1f} ms (it joins at the next step: "
          f"{t_static / t_cont:.0f}x sooner)")
    print()


# ------------------------------------------------------------------------------------------------------------------
# 3. S-LoRA's heterogeneous batch: lora_bmm vs lora_sgmv


def lora():
    d = 512
    print(f"== 3. Many adapters in one batch: lora_bmm vs lora_sgmv vs lora_grouped (one {d} x {d} layer, fp32) ==")

    def case(label, n_tokens, ranks, index):
        g = torch.Generator().manual_seed(0)
        S, r_max = len(ranks), max(ranks)
        A = torch.zeros(S, r_max, d)
        B = torch.zeros(S, d, r_max)
        for s, r in enumerate(ranks):  # zeros past each adapter's rank, as MultiLora stacks them
            A[s, :r] = torch.randn(r, d, generator=g) * 0.02
            B[s, :, :r] = torch.randn(d, r, generator=g) * 0.02
        x = torch.randn(n_tokens, d, generator=g)
        scaling = torch.full((S,), 2.0)
        segs = segments(index)
        a = lora_bmm(x, A, B, scaling, index)
        b = lora_sgmv(x, A, B, scaling.tolist(), ranks, segs)
        c = lora_grouped(x, A, B, scaling, segments(index, S))
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5), "the kernels disagree"
        t_bmm = best(lambda: lora_bmm(x, A, B, scaling, index), 5)
        t_sgmv = best(lambda: lora_sgmv(x, A, B, scaling.tolist(), ranks, segments(index)), 5)
        t_grouped = best(lambda: lora_grouped(x, A, B, scaling, segments(index, S)), 5)
        counts = torch.bincount(index[index >= 0], minlength=S).tolist()
        mac_bmm = n_tokens * r_max * 2 * d
        mac_sgmv = sum(c * r * 2 * d for c, r in zip(counts, ranks))
        print(f"  {label}")
        print(f"    lora_bmm  {t_bmm * 1e3:7.2f} ms   {mac_bmm / 1e6:6.1f}M multiply-adds (N x r_max x (in + out))")
        print(f"    lora_sgmv {t_sgmv * 1e3:7.2f} ms   {mac_sgmv / 1e6:6.1f}M multiply-adds (sum of n_i x r_i x "
              f"(in + out)), {len(segs.runs)} segments")
        print(f"    lora_grouped {t_grouped * 1e3:4.2f} ms   {mac_bmm / 1e6:6.1f}M multiply-adds (N x r_max x "
              f"(in + out)), {len(segs.runs)} segments in one grouped product per side")

    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 8, (256,), generator=g)
    case("prefill-like: 256 tokens, 8 adapters of rank 8, shuffled", 256, [8] * 8, idx)
    case("the same tokens, one of the 8 adapters rank 64 (r_max = 64)", 256, [8] * 7 + [64], idx)
    case("decode-like: 64 tokens, 64 adapters of rank 8, one token each", 64, [8] * 64, torch.randperm(64, generator=g))
    print()


# ------------------------------------------------------------------------------------------------------------------
# 4. KV memory of real models


def qwen():
    print("== 4. KV cache of real models (bf16, from config.json) ==")
    for name in ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct"):
        c = json.loads((HERE.parent / "03_reasoning_rl" / "models" / f"{name}.json").read_text())
        L, hkv = c["num_hidden_layers"], c["num_key_value_heads"]
        hd = c["hidden_size"] // c["num_attention_heads"]
        per_token = 2 * L * hkv * hd * 2
        print(f"  {name}: 2 (K, V) x {L} layers x {hkv} KV heads x {hd} x 2 bytes = {per_token:,} bytes per token, "
              f"{per_token * BS / 2**10:.0f} KiB per block of 16; 64 sequences x 2,048 tokens = "
              f"{per_token * 64 * 2048 / 2**30:.2f} GiB")
    print()


PARTS = {"paged": paged, "batching": batching, "lora": lora, "qwen": qwen}

if __name__ == "__main__":
    chosen = [a for a in sys.argv[1:] if a != "--wall"] or list(PARTS)
    if "--wall" in sys.argv:
        clock = time.perf_counter
    else:  # one thread, timed in CPU seconds: other load on a shared machine barely moves them
        torch.set_num_threads(1)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {unknown[0]!r}; choose from {list(PARTS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), timed in "
          f"{'wall-clock' if clock is time.perf_counter else 'CPU'} seconds")
    for part in chosen:
        PARTS[part]()
