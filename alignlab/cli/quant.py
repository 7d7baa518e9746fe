"""`alignlab quantize`: post-training quantisation of a model directory (int8, nf4, rtn, gptq, awq), written
back as a model directory with a Hugging Face `quantization_config` that every alignlab command loads."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from alignlab.cli.common import human_size
from alignlab.errors import UserError


def text_windows(source: str, tokenizer, split: str, seq_len: int, n: int | None = None,
                 world_seed: int = 0) -> torch.Tensor:
    """Token windows [n, seq_len] of a text source, in order, without overlap.

    source: "tinyworld" (TinyWorld's pretraining text: the world of `world_seed` for split "train", of
    world_seed + 1 for "test", so the held-out text is drawn afresh), a .txt file, or a .jsonl file with "text"
    or "messages" per line (split "test" takes the last tenth of a file, "train" the rest)."""
    if source == "tinyworld":
        from alignlab.data.world import TinyWorld

        texts = [TinyWorld(seed=world_seed + (split == "test")).pretraining_text()]
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{source}: no such file (give a .txt or .jsonl file, or 'tinyworld')")
        if path.suffix == ".jsonl":
            texts = []
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not JSON ({e.msg})") from None
                if "text" in row:
                    texts.append(str(row["text"]))
                elif "messages" in row:
                    texts.append(tokenizer.apply_chat_template(row["messages"]))
                else:
                    raise UserError(f"{path}:{i}: needs a 'text' or 'messages' field")
        else:
            texts = path.read_text().split("\n\n")
        cut = len(texts) - max(1, len(texts) // 10)
        texts = texts[cut:] if split == "test" else texts[:cut]
    ids = [t for text in texts for t in tokenizer.encode(text, add_special_tokens=False)]
    rows = len(ids) // seq_len if n is None else min(n, len(ids) // seq_len)
    if rows == 0:
        raise UserError(f"{source} ({split}): {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every position of the windows but the first of each."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        logits = model(x).float()
        total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                       reduction="sum"))
        count += x[:, 1:].numel()
    return math.exp(total / count)


def quantize_arguments(p):
    from alignlab.quant.post_training import METHODS

    p.description = ("Quantise a model's decoder Linear layers (embeddings, norms and the head stay in float) and "
                     "save a model directory with a Hugging Face quantization_config (bitsandbytes int8/nf4, gptq, "
                     "awq). gptq and awq calibrate on --calibration text.")
    p.add_argument("--model", required=True, help="model directory or Hugging Face Hub id")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="the quantised model directory to write")
    p.add_argument("--bits", type=int, default=4, choices=(4, 8), help="rtn/gptq: 4 or 8 (awq: 4)")
    p.add_argument("--group-size", type=int, default=128, help="input columns per scale (-1: one per row)")
    p.add_argument("--act-order", action="store_true", help="gptq: quantise columns by descending Hessian diagonal")
    p.add_argument("--asym", action="store_true", help="rtn/gptq: an asymmetric grid with a zero point")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: dampening, a fraction of mean(diag H)")
    p.add_argument("--threshold", type=float, default=6.0, help="int8: outlier threshold (0: none)")
    p.add_argument("--calibration", default="tinyworld",
                   help="gptq/awq: 'tinyworld', a .txt file or a .jsonl file (text or messages)")
    p.add_argument("--n-samples", type=int, default=128, help="calibration windows (GPTQ's paper: 128)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: min(2048, context))")
    p.add_argument("--eval", action="store_true", help="also print held-out perplexity before and after")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one, else cpu), cpu, cuda, cuda:1, ...")


def cmd_quantize(args):
    from alignlab.model.hf import load_model, resolve_model_dir
    from alignlab.quant.checkpoint import save_quantized
    from alignlab.quant.post_training import CALIBRATED, QuantConfig, quantize_post_training
    from alignlab.text import load_tokenizer

    try:
        cfg = QuantConfig(args.method, args.bits, args.group_size, sym=not args.asym, act_order=args.act_order,
                          damp=args.damp, threshold=args.threshold)
    except ValueError as e:
        raise UserError(str(e)) from None
    path = resolve_model_dir(args.model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, tokenizer = load_model(path, device=device, dtype=torch.float32), load_tokenizer(path)
    seq_len = args.seq_len or min(2048, model.config.max_seq_len)
    calibration = None
    if cfg.method in CALIBRATED:
        windows = text_windows(args.calibration, tokenizer, "train", seq_len, args.n_samples)
        calibration = list(windows.to(device).split(8))
        print(f"calibration: {len(windows)} windows of {seq_len} tokens from {args.calibration}", file=sys.stderr)
    held_out = text_windows(args.calibration, tokenizer, "test", seq_len, 64).to(device) if args.eval else None
    before = perplexity(model, held_out) if args.eval else None
    start = time.perf_counter()

    def progress(i, n):
        print(f"\rquantised block {i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    try:
        summary = quantize_post_training(model, cfg, calibration, progress)
    except ValueError as e:
        raise UserError(f"{args.model}: {e}") from None
    seconds = time.perf_counter() - start
    meta = {"stage": "quantize", "parent": str(path), "quantization": cfg.to_dict(), "seconds": round(seconds, 2)}
    if args.eval:
        meta["perplexity"] = {"before": before, "after": perplexity(model, held_out)}
    out = save_quantized(model, args.out, cfg, tokenizer, meta)
    size_in = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    size_out = (out / "model.safetensors").stat().st_size
    print(f"{cfg.method}: {summary['layers']} Linear layers quantised in {seconds:.1f} s; "
          f"model.safetensors {human_size(size_in)} -> {human_size(size_out)}; wrote {out}")
    if cfg.method == "gptq":
        errs = summary["errors"].values()
        ratio = sum(e["gptq"] for e in errs) / max(sum(e["rtn"] for e in errs), 1e-30)
        print(f"gptq: layer output error {ratio:.3f}x round-to-nearest's on the calibration data (sum over layers)")
    if args.eval:
        p = meta["perplexity"]
        print(f"held-out perplexity ({args.calibration}): {p['before']:.4f} -> {p['after']:.4f} "
              f"({100 * (p['after'] / p['before'] - 1):+.2f}%)")
