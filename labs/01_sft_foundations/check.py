"""Grade Lab 01's exercises (labs/01_sft_foundations/exercises.py) against alignlab's own code.

    alignlab lab check 1                                     # every exercise: PASS, FAIL (with why) or TODO
    python labs/01_sft_foundations/check.py 2 4              # the same, for some of them
    python labs/01_sft_foundations/check.py --module my.py   # grade another file with the same functions

Each check runs the learner's functions on seeded inputs and compares them with alignlab: `to_labels` and the
labels of real TinyWorld chats, `LoraLinear` (forward, gradients, merge), `apply_lora` + `count_parameters`,
`quantize_nf4` / `dequantize_nf4`, and `block_influence` / `keep_blocks` (depth pruning).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
import torch.nn as nn

from alignlab.data.sft import encode_record, to_labels, tokenize_record
from alignlab.lab import assert_close as close
from alignlab.lora.inject import LoraConfig, apply_lora, count_parameters, find_targets
from alignlab.lora.layer import LoraLinear
from alignlab.memory import linear_shapes, load_config
from alignlab.memory import lora_params as memory_lora_params
from alignlab.model.config import preset
from alignlab.model.prune import block_influence, keep_blocks
from alignlab.model.transformer import CausalLM
from alignlab.quant.nf4 import NF4, dequantize_nf4, quantize_nf4

# ----------------------------------------------------------------------------------------------------------------
# 1. SFT labels


def same_labels(got, want: list[int], what: str, describe=None) -> None:
    got = [int(y) for y in got]
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} labels, expected {len(want)} (one per token)")
    for t, (g, w) in enumerate(zip(got, want)):
        if g != w:
            where = describe(t) if describe else ""
            raise AssertionError(f"{what}: labels[{t}] = {g}, expected {w}{where} "
                                 f"({sum(a != b for a, b in zip(got, want))} of {len(want)} labels differ)")


def check_1(ex) -> str:
    rng = random.Random(1)
    for case in range(200):
        n = rng.randint(1, 24)
        ids = [rng.randrange(1, 500) for _ in range(n)]
        if case % 2:  # random masks
            trained = [rng.randint(0, 1) for _ in range(n)]
        else:  # a prompt, then a reply: 0s, then 1s, then 0s
            a = rng.randint(0, n)
            b = rng.randint(a, n)
            trained = [0] * a + [1] * (b - a) + [0] * (n - b)
        got = ex.sft_labels(list(ids), list(trained))
        same_labels(got, to_labels(ids, trained), f"sft_labels(ids={ids}, trained={trained})")

    from alignlab.data.world import TinyWorld  # real chats through the chat template (the tokenizer is cached)

    world = TinyWorld(seed=0, size="quick")
    tok = world.tokenizer()
    chats = world.sft_conversations("train")
    records = [next(r for r in chats if r["kind"] == kind) for kind in ("math", "refusal", "lookalike", "qa")]
    records.append({"prompt": "What is 2 + 3?", "completion": " 5"})
    for k, record in enumerate(records):
        ids, mask = encode_record(tok, record)
        want = tokenize_record(tok, record).labels

        def describe(t, ids=ids):
            nxt = repr(tok.decode(ids[t + 1:t + 2])) if t + 1 < len(ids) else "nothing"
            return f" (position {t} of {len(ids)}, {repr(tok.decode(ids[t:t + 1]))} predicting {nxt})"

        kind = record.get("kind", "prompt-completion")
        same_labels(ex.sft_labels(list(ids), list(mask)), want, f"sft_labels on TinyWorld record {k} ({kind})",
                       describe)
    return "200 random (ids, mask) cases; TinyWorld's math, refusal, look-alike and qa chats and a prompt-completion"


# ----------------------------------------------------------------------------------------------------------------
# 2. LoRA forward, gradients and merge


def _lora_layer(W, b, A, B, alpha, r, rslora) -> LoraLinear:
    base = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=W.dtype)
    with torch.no_grad():
        base.weight.copy_(W)
        if b is not None:
            base.bias.copy_(b)
    base.requires_grad_(False)  # frozen, as apply_lora leaves it
    layer = LoraLinear(base, r=r, lora_alpha=alpha, use_rslora=rslora, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_A.weight.copy_(A)
        layer.lora_B.weight.copy_(B)
    return layer


def check_2(ex) -> str:
    g = torch.Generator().manual_seed(2)
    cases = [  # (in, out, r, alpha, rslora, bias, B = 0 as in a fresh adapter)
        (12, 7, 4, 8, False, True, False),
        (12, 7, 4, 16, True, True, False),
        (9, 9, 1, 2, False, False, False),
        (16, 5, 8, 8, False, True, True),
        (8, 12, 16, 32, True, False, False),
    ]
    for d_in, d_out, r, alpha, rslora, bias, fresh in cases:
        what = f"in={d_in}, out={d_out}, r={r}, alpha={alpha}, rslora={rslora}, bias={bias}" + (", B = 0" * fresh)
        W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * 0.5
        b = torch.randn(d_out, generator=g, dtype=torch.float64) if bias else None
        A = torch.randn(r, d_in, generator=g, dtype=torch.float64) * 0.3
        B = torch.zeros(d_out, r, dtype=torch.float64) if fresh else torch.randn(d_out, r, generator=g,
                                                                                    dtype=torch.float64) * 0.3
        x = torch.randn(2, 3, d_in, generator=g, dtype=torch.float64)
        layer = _lora_layer(W, b, A, B, alpha, r, rslora)

        # forward, then the gradients of a random projection of the output
        mine_x, mine_A, mine_B = (t.clone().requires_grad_(True) for t in (x, A, B))
        ref_x = x.clone().requires_grad_(True)
        got = ex.lora_forward(mine_x, W.clone(), None if b is None else b.clone(), mine_A, mine_B, alpha, r, rslora)
        want = layer(ref_x)
        close(got, want, f"lora_forward ({what}): y")
        proj = torch.randn(want.shape, generator=g, dtype=torch.float64)
        (want * proj).sum().backward()
        (got * proj).sum().backward()
        for name, mine, ref in (("A", mine_A, layer.lora_A.weight), ("B", mine_B, layer.lora_B.weight),
                                ("x", mine_x, ref_x)):
            if mine.grad is None:
                raise AssertionError(f"lora_forward ({what}): no gradient reached {name} (detached somewhere?)")
            close(mine.grad, ref.grad, f"lora_forward ({what}): the gradient of {name}")

        # merge: W + s B A, and the merged layer computes the same y
        merged = ex.lora_merge(W.clone(), A.clone(), B.clone(), alpha, r, rslora)
        layer.merge()
        close(merged, layer.base_layer.weight, f"lora_merge ({what}): W'")
        y_merged = x @ torch.as_tensor(merged).to(W.dtype).T + (0 if b is None else b)
        close(y_merged, want, f"lora_merge ({what}): x W'^T + b against the unmerged layer's y")
    return ("forward, gradients of A, B and x, and merge against LoraLinear: alpha/r and rsLoRA's alpha/sqrt(r), "
            "square and rectangular, with and without bias, B = 0")


# ----------------------------------------------------------------------------------------------------------------
# 3. LoRA's parameter count


def check_3(ex) -> str:
    cases = [  # (targets, r, DoRA)
        (["q_proj", "v_proj"], 8, False),
        ("all-linear", 4, False),
        ("all-linear", 2, True),
        (r".*\.(k|o|down)_proj", 16, False),
        (["gate_proj", "up_proj"], 3, True),
    ]
    for targets, r, dora in cases:
        torch.manual_seed(3)  # grouped-query attention, so k_proj and v_proj are narrower than q_proj
        model = CausalLM(preset("llama", vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=80))
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, use_dora=dora)
        shapes = [tuple(model.get_submodule(name).weight.shape) for name in find_targets(model, config)]
        apply_lora(model, config)
        want = count_parameters(model)[0]
        got = ex.lora_params(list(shapes), r, dora)
        if got != want:
            raise AssertionError(f"lora_params(shapes={shapes}, r={r}, use_dora={dora}) = {got}, expected {want} "
                                 f"(count_parameters after apply_lora with target_modules={targets!r})")

    c = load_config("llama-2-7b")  # the README's table: rank 16 on every Linear of Llama-2-7B
    shapes = [(d_out, d_in) for d_in, d_out in linear_shapes(c).values()] * c.n_layers
    want = memory_lora_params(c, 16, "all-linear")
    got = ex.lora_params(shapes, 16)
    if got != want:
        raise AssertionError(f"lora_params on Llama-2-7B's {len(shapes)} Linears, r=16: {got:,}, expected {want:,}")
    return (f"5 adapters on a small GQA model against count_parameters (incl. DoRA); Llama-2-7B all-linear r=16: "
            f"{want:,} = {want / 6.74e9:.2%} of 6.74e9")


# ----------------------------------------------------------------------------------------------------------------
# 4. NF4


def check_4(ex) -> str:
    g = torch.Generator().manual_seed(4)
    mids = (NF4[:-1] + NF4[1:]) / 2
    ties = torch.cat([mids, torch.tensor([1.0]), -mids])  # absmax exactly 1: every midpoint is a tie
    cases = [
        ("1,000 N(0, 0.02^2) weights", torch.randn(1000, generator=g) * 0.02, 64),
        ("256 weights with outliers", torch.randn(256, generator=g) * torch.tensor([1.0, 1.0, 1.0, 30.0]).repeat(64),
         64),
        ("a block of zeros between two", torch.cat([torch.randn(16, generator=g), torch.zeros(16),
                                                    torch.randn(10, generator=g)]), 16),
        ("values exactly halfway between two levels", ties, 32),
        ("uniform weights, block 8", torch.rand(40, generator=g) * 2 - 1, 8),
    ]
    for what, w, block in cases:
        n = w.numel()
        q = quantize_nf4(w, block=block, double_quant=False)
        want_codes, want_absmax, want_w = q.codes()[:n].long(), q.absmax, dequantize_nf4(q).view(-1)
        codes, absmax = ex.nf4_quantize(w.clone(), block)
        name = f"nf4_quantize(w, block={block}) on {what}"
        close(absmax, want_absmax, f"{name}: absmax per block")
        codes = torch.as_tensor(codes)
        if codes.is_floating_point():
            raise AssertionError(f"{name}: codes are {codes.dtype}; return integer codes 0..15")
        close(codes.long(), want_codes, f"{name}: codes", atol=0)
        close(ex.nf4_dequantize(want_codes.clone(), want_absmax.clone(), block), want_w,
              f"nf4_dequantize(codes, absmax, block={block}) on the codes of {what}")
    return "codes, absmax and dequantised weights against quantize_nf4(double_quant=False): 5 cases incl. ties"


# ----------------------------------------------------------------------------------------------------------------
# 5. Depth pruning


def check_5(ex) -> str:
    torch.manual_seed(5)
    model = CausalLM(preset("llama", vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=32))
    model.eval()
    batches = [torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (3, 7))]
    entering, leaving = {i: [] for i in range(4)}, {i: [] for i in range(4)}
    hooks = []
    for i, block in enumerate(model.model.layers):
        hooks.append(block.register_forward_pre_hook(lambda m, args, i=i: entering[i].append(args[0].detach())))
        hooks.append(block.register_forward_hook(lambda m, args, out, i=i: leaving[i].append(out.detach())))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    want = block_influence(model, batches)
    for i in range(4):
        got = float(ex.block_influence([t.clone() for t in entering[i]], [t.clone() for t in leaving[i]]))
        close(torch.tensor(got), torch.tensor(want[i]), f"block_influence of block {i} (2 batches: 24 + 21 tokens)",
              atol=1e-5)
    ids = torch.randint(0, 64, (2, 10))
    for keep in ([0, 3], [3, 1, 2], [2]):
        state = ex.keep_blocks_state(dict(model.state_dict()), list(keep))
        small = CausalLM(preset("llama", vocab_size=64, dim=32, n_layers=len(keep), n_heads=4, n_kv_heads=2,
                                max_seq_len=32)).eval()
        try:
            small.load_state_dict(state)
        except RuntimeError as e:
            raise AssertionError(f"keep_blocks_state(state, {keep}): a {len(keep)}-layer model cannot load it: "
                                 f"{str(e).splitlines()[0]}") from None
        with torch.no_grad():
            close(small(ids), keep_blocks(model, keep)(ids), f"logits of the model cut to blocks {keep}", atol=1e-6)
    return ("block influence of each of 4 blocks against alignlab.model.prune.block_influence; the kept blocks' "
            "logits against keep_blocks for 3 choices")


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5}

if __name__ == "__main__":
    from alignlab.lab import check_main

    sys.exit(check_main(Path(__file__).parent))
