"""`alignlab demo`: the smallest end-to-end run. Train a tiny Llama from scratch on addition, then sample.

1. make a corpus of "a+b=c" lines, holding out some (a, b) pairs the model never sees;
2. train a ~0.8M-parameter model for a few hundred steps on random windows of the corpus (AdamW,
   warmup + cosine, next-token cross-entropy);
3. save it as a Hugging Face model directory (loads in transformers, `alignlab generate`, `alignlab chat`);
4. greedy-decode the held-out sums with the KV-cache engine and report exact-match accuracy.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from alignlab.infer import Engine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.model.hf import save_model
from alignlab.objectives import lm_loss
from alignlab.text.char import CharTokenizer


def addition_corpus(seed: int, max_n: int = 100, held_out: int = 200):
    """All pairs a+b for a, b < max_n, shuffled; the last `held_out` pairs are the test set."""
    pairs = [(a, b) for a in range(max_n) for b in range(max_n)]
    random.Random(seed).shuffle(pairs)
    train, test = pairs[:-held_out], pairs[-held_out:]
    text = "".join(f"{a}+{b}={a + b}\n" for a, b in train)
    return text, test


def run_demo(out_dir: str = "runs/demo", steps: int = 600, seed: int = 0, batch: int = 32,
             block: int = 64, lr: float = 3e-3) -> dict:
    torch.manual_seed(seed)
    text, test = addition_corpus(seed)
    tok = CharTokenizer.from_text("0123456789+=\n", eos_token="<|endoftext|>")
    data = torch.tensor(tok.encode(text, add_special_tokens=False), dtype=torch.long)
    config = preset("llama", vocab_size=tok.vocab_size, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                    max_seq_len=block, eos_token_id=tok.eos_token_id)
    model = CausalLM(config)
    print(f"demo: {len(text):,} characters of addition, {len(test)} held-out sums, "
          f"model {model.num_params():,} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    # warm up over the first steps, then cosine decay to zero (a schedule over the whole run)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 *
                                              (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.time()
    bar = tqdm(range(steps), desc="train", unit="step")
    for step in bar:
        ix = torch.randint(len(data) - block - 1, (batch,), generator=gen)
        x = torch.stack([data[i:i + block] for i in ix])
        y = torch.stack([data[i + 1:i + block + 1] for i in ix])
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{(step + 1) * batch * block / (time.time() - t0):,.0f}")
    model.eval()

    out = save_model(model, Path(out_dir) / "model", tokenizer=tok,
                     meta={"stage": "demo", "steps": steps, "final_loss": losses[-1]})
    engine = Engine(model, tok)
    prompts = [f"\n{a}+{b}=" for a, b in test]
    params = SamplingParams(max_new_tokens=5, temperature=0.0, stop=["\n"])
    answers = [c.text.strip() for c in engine.generate(prompts, params)]
    correct = sum(ans == str(a + b) for ans, (a, b) in zip(answers, test))
    result = {"steps": steps, "initial_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4),
              "held_out_accuracy": correct / len(test),
              "train_seconds": round(time.time() - t0, 1), "model_dir": str(out)}
    print("samples:")
    for (a, b), ans in list(zip(test, answers))[:5]:
        print(f"  {a}+{b}= {ans}  {'ok' if ans == str(a + b) else f'(expected {a + b})'}")
    print(f"held-out accuracy {correct}/{len(test)} = {correct / len(test):.1%}")
    print(f"model saved to {out}; try:  alignlab generate --model {out} --prompt $'\\n12+34='")
    (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
