"""`alignlab prune`: a smaller model made by removing whole blocks of a bigger one (alignlab/model/prune.py),
the start of a Minitron-style student that `alignlab distill` then trains against the unpruned model.

    alignlab prune --model runs/pipeline/sft/model --layers 2 --out runs/pruned      # ShortGPT's block influence
    alignlab prune --model runs/pipeline/sft/model --keep 0,3 --out runs/pruned      # these blocks
"""

from __future__ import annotations

import json
import sys

import torch

from alignlab.cli.quant import text_windows
from alignlab.errors import UserError


def prune_arguments(p):
    p.description = ("Remove whole transformer blocks: keep --layers blocks of highest block influence (ShortGPT: "
                     "1 - cos(hidden state in, hidden state out), measured on --calibration text), or the blocks "
                     "--keep names. Writes a model directory; train it with `alignlab distill student=OUT "
                     "teacher=MODEL` (Minitron: prune, then distil).")
    p.add_argument("--model", required=True, help="model directory or Hugging Face Hub id")
    p.add_argument("--out", required=True, help="the pruned model directory to write")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", type=int, help="how many blocks to keep (those of highest block influence)")
    which.add_argument("--keep", help="comma-separated block indices to keep, e.g. 0,3")
    p.add_argument("--calibration", default="tinyworld",
                   help="--layers: 'tinyworld', a .txt file or a .jsonl file (text or messages)")
    p.add_argument("--n-samples", type=int, default=32, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: min(256, context))")


def cmd_prune(args):
    from alignlab.model.hf import load_model, resolve_model_dir, save_model
    from alignlab.model.prune import keep_blocks, prune_by_influence
    from alignlab.text import load_tokenizer

    path = resolve_model_dir(args.model)
    model, tokenizer = load_model(path, dtype=torch.float32), load_tokenizer(path)
    n = model.config.n_layers
    if args.keep is not None:
        try:
            keep = sorted({int(i) for i in args.keep.split(",")})
        except ValueError:
            raise UserError(f"--keep {args.keep!r}: give block indices separated by commas, e.g. 0,3") from None
        if keep[0] < 0 or keep[-1] >= n:
            raise UserError(f"--keep {args.keep}: {args.model} has blocks 0-{n - 1}")
        pruned, influence = keep_blocks(model, keep), None
    else:
        if not 1 <= args.layers <= n:
            raise UserError(f"--layers {args.layers}: {args.model} has {n} blocks; keep between 1 and {n}")
        seq_len = args.seq_len or min(256, model.config.max_seq_len)
        windows = text_windows(args.calibration, tokenizer, "train", seq_len, args.n_samples)
        pruned, keep, influence = prune_by_influence(model, windows, args.layers)
        print(f"block influence on {len(windows)} windows of {seq_len} tokens from {args.calibration}: "
              + ", ".join(f"{i}: {b:.4f}" for i, b in enumerate(influence)), file=sys.stderr)
    meta = {"stage": "prune", "parent": str(path), "kept_blocks": keep, "block_influence": influence}
    out = save_model(pruned, args.out, tokenizer=tokenizer, meta=meta)
    print(f"kept blocks {keep} of {n}: {model.num_params():,} -> {pruned.num_params():,} parameters; wrote {out}")
    print(json.dumps({"kept_blocks": keep, "block_influence": influence, "params": pruned.num_params(),
                      "out": str(out)}))
