"""What quantisation costs and saves: fp32 against int8 (LLM.int8), NF4, round-to-nearest, GPTQ and AWQ.

    OMP_NUM_THREADS=2 python benchmarks/bench_quant.py --run runs/pipeline          # a pipeline's models
    OMP_NUM_THREADS=2 python benchmarks/bench_quant.py --quick                       # the random model only, smaller

For each model and method: held-out perplexity (and its change), KL(fp32 || quantised) of the next-token
distributions on the same text, TinyWorld accuracy (levels 1-4, greedy; the SFT model only), the size of
model.safetensors on disk, the bytes of the weights in memory, greedy decode speed (batch 1), and the time the
method took. Models: a pipeline's pretrained model (`RUN/pretrain/model`; held-out text: TinyWorld's
pretraining text from another world seed) and its SFT model (`RUN/sft/model`), and a random-init Llama of
27M parameters (dim 512, 8 layers, vocabulary 4096; random tokens as text). GPTQ and AWQ calibrate on 128
windows of the same kind of text. GPTQ's layer objective against RTN's on the same grid is printed beside.
The last line is JSON: the ratios the acceptance checks read (GPTQ/RTN perplexity, int8's perplexity change).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.cli.quant import perplexity, text_windows  # noqa: E402
from alignlab.infer import Engine, SamplingParams  # noqa: E402
from alignlab.model.config import preset  # noqa: E402
from alignlab.model.hf import load_model, save_model  # noqa: E402
from alignlab.model.transformer import CausalLM  # noqa: E402
from alignlab.quant import QuantConfig, load_quantized, quantize_post_training, save_quantized  # noqa: E402
from alignlab.text import load_tokenizer  # noqa: E402

METHODS = [("int8", 8), ("nf4", 4), ("rtn", 8), ("rtn", 4), ("gptq", 4), ("awq", 4)]


@torch.no_grad()
def kl_to(ref_logits: list[torch.Tensor], model, windows: torch.Tensor) -> float:
    """mean over positions of KL(p_fp32 || p_quantised)."""
    total, n = 0.0, 0
    for ref, x in zip(ref_logits, windows.split(8), strict=True):
        p, q = ref.log_softmax(-1), model(x).float().log_softmax(-1)
        total += float((p.exp() * (p - q)).sum())
        n += p.shape[0] * p.shape[1]
    return total / n


@torch.no_grad()
def decode_speed(model, vocab: int, tokens: int = 64) -> float:
    engine = Engine(model)
    prompt = [list(range(1, 9))]
    params = SamplingParams(temperature=0, max_new_tokens=tokens, ignore_eos=True)
    engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    out = engine.generate(prompt, params)
    return len(out[0].token_ids) / (time.perf_counter() - start)


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (tied weights once; RoPE tables excluded)."""
    seen, total = set(), 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or name.endswith("inv_freq"):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def accuracy(model, tokenizer, per_level: int) -> float:
    from alignlab.data.world import TinyWorld
    from alignlab.eval.world_suite import evaluate_on_world

    metrics, _ = evaluate_on_world(model, tokenizer, TinyWorld(seed=0), per_level=per_level, safety=0,
                                   max_new_tokens=96)
    return metrics["accuracy"]


def bench_model(label: str, model_dir: Path, calib: torch.Tensor, held_out: torch.Tensor, tokenizer,
                per_level: int | None, work: Path) -> list[dict]:
    base = load_model(model_dir, dtype=torch.float32).requires_grad_(False)
    ref = [base(x).float() for x in held_out.split(8)]
    ppl0 = perplexity(base, held_out)
    rows = [{"model": label, "method": "fp32", "bits": 32, "ppl": ppl0, "kl": 0.0,
             "accuracy": accuracy(base, tokenizer, per_level) if per_level else None,
             "disk_mib": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20,
             "mem_mib": weight_bytes(base) / 2**20, "tok_s": decode_speed(base, base.config.vocab_size),
             "seconds": 0.0, "gptq_vs_rtn": None}]
    print(_line(rows[0], ppl0), flush=True)
    for method, bits in METHODS:
        model = load_model(model_dir, dtype=torch.float32).requires_grad_(False)
        cfg = QuantConfig(method, bits=bits, group_size=128)
        start = time.perf_counter()
        summary = quantize_post_training(model, cfg, list(calib.split(8)))
        seconds = time.perf_counter() - start
        out = save_quantized(model, work / f"{label}-{method}{bits}", cfg, tokenizer)
        model = load_quantized(out)  # what a user gets back from the directory
        errs = summary["errors"].values()
        rows.append({"model": label, "method": method, "bits": bits, "ppl": perplexity(model, held_out),
                     "kl": kl_to(ref, model, held_out),
                     "accuracy": accuracy(model, tokenizer, per_level) if per_level else None,
                     "disk_mib": (out / "model.safetensors").stat().st_size / 2**20,
                     "mem_mib": weight_bytes(model) / 2**20, "tok_s": decode_speed(model, model.config.vocab_size),
                     "seconds": seconds,
                     "gptq_vs_rtn": (sum(e["gptq"] for e in errs) / sum(e["rtn"] for e in errs))
                     if method == "gptq" else None})
        print(_line(rows[-1], ppl0), flush=True)
    return rows


def random_llama(work: Path, quick: bool) -> Path:
    torch.manual_seed(0)
    dim, layers = (256, 4) if quick else (512, 8)
    config = preset("llama", vocab_size=4096, dim=dim, n_layers=layers, n_heads=dim // 64, hidden_dim=1408,
                    max_seq_len=512, tie_embeddings=True)
    model = CausalLM(config)
    print(f"random Llama: {model.num_params() / 1e6:.1f}M parameters", file=sys.stderr)
    return save_model(model, work / "random-llama")


def name(r: dict) -> str:
    """fp32, int8, nf4, rtn4, gptq4, ...: the bits where the method has a choice."""
    return r["method"] + (str(r["bits"]) if r["method"] in ("rtn", "gptq", "awq") else "")


def _line(r: dict, ppl0: float) -> str:
    acc = "" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
    ratio = "" if r["gptq_vs_rtn"] is None else f"{r['gptq_vs_rtn']:.3f}"
    return (f"| {r['model']} | {name(r)} | {r['ppl']:.4f} | "
            f"{100 * (r['ppl'] / ppl0 - 1):+.2f}% | {r['kl']:.5f} | {acc} | {r['disk_mib']:.2f} | "
            f"{r['mem_mib']:.2f} | {r['tok_s']:.0f} | {r['seconds']:.1f} | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/pipeline", help="a pipeline run directory (pretrain/ and sft/ models)")
    ap.add_argument("--quick", action="store_true", help="the random model only, 4 layers of 256")
    ap.add_argument("--per-level", type=int, default=25, help="TinyWorld prompts per level for accuracy")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Path(args.run)
        print("| model | method | perplexity | change | KL to fp32 | accuracy L1-4 | disk MiB | memory MiB | "
              "decode tok/s | quantise s | GPTQ/RTN layer error |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        if not args.quick and (run / "sft" / "model").is_dir():
            for label, per_level in (("pretrain", None), ("sft", args.per_level)):
                d = run / label / "model"
                tok = load_tokenizer(d)
                calib, held = (text_windows("tinyworld", tok, s, 256, n) for s, n in (("train", 128), ("test", 64)))
                rows += bench_model(label, d, calib, held, tok, per_level, work)
        elif not args.quick:
            print(f"{run}: no pipeline models; run `alignlab pipeline --out {run}` first", file=sys.stderr)
        d = random_llama(work, args.quick)
        g = torch.Generator().manual_seed(1)
        calib = torch.randint(0, 4096, (128, 256), generator=g)
        held = torch.randint(0, 4096, (32, 256), generator=g)
        rows += bench_model("random-27M" if not args.quick else "random-quick", d, calib, held, None, None, work)
    summary = {}
    for label in dict.fromkeys(r["model"] for r in rows):
        by = {name(r): r for r in rows if r["model"] == label}
        summary[label] = {"gptq4_over_rtn4_ppl": by["gptq4"]["ppl"] / by["rtn4"]["ppl"],
                          "int8_ppl_change": by["int8"]["ppl"] / by["fp32"]["ppl"] - 1,
                          "gptq4_over_rtn4_layer_error": by["gptq4"]["gptq_vs_rtn"]}
    print(json.dumps({"bench": "quant", "models": summary,
                      "rows": [{k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
