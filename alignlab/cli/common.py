"""What several commands share: loading a model for inference, and the dtype and sampling options."""

from __future__ import annotations

import sys


def load_for_inference(model_dir: str, dtype: str = "auto"):
    """The model in the precision `dtype` resolves to for inference (printed to stderr), and its tokenizer."""
    from alignlab.model.hf import load_model, resolve_model_dir
    from alignlab.model.precision import resolve_precision
    from alignlab.text import load_tokenizer

    path = resolve_model_dir(model_dir)
    from alignlab.quant.checkpoint import is_quantized, load_quantized

    if is_quantized(path):  # its layers dequantise to fp32 as they run
        print(f"quantised model: {path}", file=sys.stderr)
        return load_quantized(path), load_tokenizer(path)
    precision = resolve_precision(dtype, "cpu", "infer")
    model, tokenizer = load_model(path, dtype=precision.dtype), load_tokenizer(path)
    model.requires_grad_(False)  # inference only: the engine keeps the weights' packed layout between requests
    print(f"precision: {precision.why}", file=sys.stderr)
    return model, tokenizer


def add_dtype(p):
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="weights' dtype (default auto: bf16 where the CPU runs it natively and faster, else fp32; "
                        "$ALIGNLAB_AUTO_DTYPE overrides auto)")


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024



def add_sampling(p, temperature=0.0):
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def sampling_params(args):
    from alignlab.infer import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop or [])
