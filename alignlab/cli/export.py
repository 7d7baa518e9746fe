"""`alignlab export <format>`: a model directory in another runtime's format. One format so far:

    alignlab export gguf --model DIR --type f32|f16|q8_0|q4_0 --out FILE.gguf

writes a GGUF file for llama.cpp (alignlab/quant/gguf.py says what goes in). The vocabulary is read here, not in
quant/ (which sits below text/): tokenizer.json's byte-level BPE becomes GGUF's token list, token types and merges.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.cli.common import human_size
from alignlab.errors import CheckpointError, UserError


def export_arguments(p):
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = formats.add_parser("gguf", help="a GGUF file for llama.cpp (llama, mistral, qwen2, qwen3 with a byte-level "
                                        "BPE)")
    g.add_argument("--model", required=True, help="a model directory (config.json, model.safetensors, tokenizer)")
    g.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0", "q4_0"),
                   help="the matrices' type (norms stay f32; rows that are not whole 32-blocks stay f16)")
    g.add_argument("--out", required=True, help="the .gguf file to write")
    g.add_argument("--name", default=None, help="general.name in the file (default: from the directory's name)")


def cmd_export(args):
    {"gguf": export_gguf}[args.format](args)


def gguf_vocab(model_dir: Path):
    """The directory's tokenizer as a quant.gguf.Vocab. Only GPT-2 style byte-level BPE (what alignlab trains:
    ByteLevel pre-tokenizer with GPT-2's regex, no normalizer) maps onto llama.cpp's "gpt2" model with pre
    "gpt-2"; the tokens are already in GPT-2's printable byte form in tokenizer.json."""
    from alignlab.quant.gguf import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED, Vocab
    from alignlab.text import END_OF_TURN_TOKENS, load_tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no tokenizer.json (GGUF export needs a byte-level BPE tokenizer)")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model, pre = tj.get("model") or {}, tj.get("pre_tokenizer") or {}
    gpt2_pre = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    if model.get("type") != "BPE" or model.get("byte_fallback") or tj.get("normalizer") or not gpt2_pre:
        raise CheckpointError(f"{path}: not a GPT-2 style byte-level BPE (model {model.get('type')}, pre-tokenizer "
                              f"{pre.get('type')}); GGUF export maps only that onto llama.cpp's pre-tokenizer 'gpt-2'")
    by_id = {i: (s, TOKEN_NORMAL) for s, i in model["vocab"].items()}
    for t in tj.get("added_tokens", []):
        by_id[t["id"]] = (t["content"], TOKEN_CONTROL if t.get("special") else TOKEN_USER_DEFINED)
    n = max(by_id) + 1
    tokens = [by_id.get(i, (f"<|unused_{i}|>", TOKEN_UNUSED)) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tok = load_tokenizer(model_dir)
    template = tok.chat_template
    text = " ".join(template.values()) if isinstance(template, dict) else template or ""
    turn_end = next((t for t in END_OF_TURN_TOKENS if t in text and tok.token_to_id(t) is not None), None)
    eot = tok.token_to_id(turn_end) if turn_end else None
    return Vocab(tokens=[s for s, _ in tokens], token_types=[k for _, k in tokens], merges=merges,
                 eos_id=tok.eos_token_id, bos_id=tok.bos_token_id, pad_id=tok.pad_token_id,
                 eot_id=eot if eot != tok.eos_token_id else None, add_bos=bool(tok.add_bos_token),
                 pre="gpt-2", chat_template=template)


def export_gguf(args):
    import torch

    from alignlab.model.hf import load_model, read_config, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install gguf") from None
    from alignlab.quant.gguf import gguf_arch, write_gguf

    _, config = read_config(model_dir)
    gguf_arch(config)  # refuse before loading the weights
    vocab = gguf_vocab(model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    where = model_dir.resolve()
    name = args.name or (where.name if where.name != "model" else f"{where.parent.name}-model")  # runs/x/sft/model
    report = write_gguf(model, vocab, args.out, args.type, name=name)
    counts = ", ".join(f"{n} {t}" for t, n in report.types.most_common())
    print(f"wrote {report.path}: {human_size(report.n_bytes)}, arch {report.arch}, "
          f"{sum(report.types.values())} tensors ({counts}), {len(vocab.tokens)} tokens")
    one_d = [name for name, why in report.kept.items() if why.endswith("1-D")]
    if one_d:
        print(f"kept in f32: {len(one_d)} 1-D tensors (norms, biases)")
    for name, why in report.kept.items():
        if not why.endswith("1-D"):
            stored, reason = why.split(": ", 1)
            print(f"kept in {stored}: {name} ({reason})")
