"""NF4 (QLoRA) quantisation of whole models: weight error, logit error, memory, and the cost of dequantising.

    OMP_NUM_THREADS=2 python benchmarks/bench_nf4.py [--reps 20] [--models 5M 27M]

The models are the ~5M and ~27M Llama shapes of benchmarks/bench_generate.py (vocab 8192), built by alignlab
with its random init (weights ~N(0, 0.02^2), residual projections smaller), every Linear but the head turned
into a Linear4bit by `quantize_model`, with and without double quantisation. Per model and setting:

    mean / max |W - dequant(W)| over all quantised weights, the mean error relative to the weights' std, and
    ||W - dequant(W)||_F / ||W||_F;  ||logits_4bit - logits_fp32|| / ||logits_fp32|| on 2 x 64 random tokens,
    next to the same error when Gaussian noise of the same relative size replaces NF4 (a random-init model
    amplifies any weight error: that column shows how much of the logit error is just the error's size);
    bytes per quantised weight and the whole model's MB before (fp32) and after (embeddings, norms and head
    stay fp32); the time to dequantise the largest weight and all of them (the extra work of one forward
    pass), the median of --reps runs.

Trained checkpoints have heavier tails than this random init, so their errors are somewhat larger; the memory
numbers do not depend on the weights. The last line is JSON with every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from alignlab.model import CausalLM, preset
from alignlab.quant import Linear4bit, quant_stats, quantize_model

MODELS = {  # the Llama shapes of benchmarks/bench_generate.py, in ModelConfig's names
    "5M": dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=688),
    "27M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1376),
}
VOCAB = 8192


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def measure(name: str, double_quant: bool, reps: int) -> dict:
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=VOCAB, max_seq_len=1024, **MODELS[name])).eval()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head"}

    qmodel = copy.deepcopy(model)
    t = time.perf_counter()
    quantize_model(qmodel, double_quant=double_quant)
    quant_s = time.perf_counter() - t
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, Linear4bit)}
    if layers.keys() != weights.keys():
        raise SystemExit(f"{name}: quantize_model turned {sorted(layers.keys() ^ weights.keys())} into a different "
                         "set of Linear4bit layers than the model's Linears (all but the head)")

    # weight error over every quantised matrix together
    abs_sum = sq_err = sq_w = 0.0
    max_err, n, w_all = 0.0, 0, []
    for k, w in weights.items():
        err = layers[k].dequantize() - w
        abs_sum += err.abs().sum().item()
        max_err = max(max_err, err.abs().max().item())
        sq_err += err.pow(2).sum().item()
        sq_w += w.pow(2).sum().item()
        n += w.numel()
        w_all.append(w.reshape(-1))
    w_std = torch.cat(w_all).std().item()

    ids = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(1))
    ref, out = model(ids), qmodel(ids)
    logit_rel = ((out - ref).norm() / ref.norm()).item()
    # yardstick: the same model with Gaussian noise of the same relative size added to each quantised weight
    rel_fro = (sq_err / sq_w) ** 0.5
    noisy = copy.deepcopy(model)
    for k, m in noisy.named_modules():
        if k in weights:
            m.weight.add_(torch.randn_like(m.weight) * m.weight.norm() / m.weight.numel() ** 0.5 * rel_fro)
    noise_rel = ((noisy(ids) - ref).norm() / ref.norm()).item()

    stats = quant_stats(qmodel)
    largest = max(layers.values(), key=lambda m: m.in_features * m.out_features)
    return dict(
        model=name, double_quant=double_quant, params=model.num_params(), params_4bit=stats["params_4bit"],
        mae=abs_sum / n, max_err=max_err, rel_mae=abs_sum / n / w_std, rel_fro=rel_fro,
        logit_rel_err=logit_rel, logit_rel_err_noise=noise_rel, bytes_per_param_4bit=stats["bytes_per_param_4bit"],
        mb_fp32=stats["bytes_fp32"] / 2**20, mb_4bit=stats["bytes_total"] / 2**20,
        quantize_s=quant_s, largest=f"{largest.out_features}x{largest.in_features}",
        dequant_largest_ms=median_ms(largest.dequantize, reps),
        dequant_all_ms=median_ms(lambda: dequantize_all(layers.values()), reps),
    )


def dequantize_all(layers):
    for m in layers:  # one at a time, as a forward pass does (each weight is freed before the next)
        m.dequantize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()

    rows = [measure(name, dq, args.reps) for name in args.models for dq in (True, False)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    head = (f"{'model':>5} {'dq':>3} {'4-bit params':>12} {'MAE':>9} {'max err':>8} {'MAE/std':>7} {'rel F':>6} "
            f"{'logits':>6} {'noise':>6} {'B/param':>7} {'MB fp32':>7} {'MB 4bit':>7} {'quant s':>7} {'largest':>9} "
            f"{'deq ms':>6} {'deq all':>7}")
    print(head)
    for r in rows:
        print(f"{r['model']:>5} {'yes' if r['double_quant'] else 'no':>3} {r['params_4bit']:>12,} "
              f"{r['mae']:>9.2e} {r['max_err']:>8.2e} {r['rel_mae']:>7.4f} {r['rel_fro']:>6.4f} "
              f"{r['logit_rel_err']:>6.4f} {r['logit_rel_err_noise']:>6.4f} {r['bytes_per_param_4bit']:>7.4f} "
              f"{r['mb_fp32']:>7.2f} {r['mb_4bit']:>7.2f} {r['quantize_s']:>7.2f} {r['largest']:>9} "
              f"{r['dequant_largest_ms']:>6.2f} {r['dequant_all_ms']:>7.2f}")
    print("MAE, max err: |W - dequant(W)| over all quantised weights; MAE/std: relative to the weights' std; "
          "rel F: Frobenius; logits: relative logit error; noise: the same with Gaussian noise of size rel F "
          "instead of NF4; deq: ms to dequantise the largest weight / all")
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
