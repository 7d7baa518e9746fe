"""Supervised fine-tuning: a model learns to answer, trained on the tokens it must produce only.

    alignlab sft --config configs/sft/tinyworld.yaml [key=value ...] [--resume]

1. data      records in any of TRL's SFT formats (alignlab.data.sft): {"messages": [...], "tools": [...]},
             {"prompt", "completion"} (strings or message lists), or {"text"}; from a .jsonl, .json,
             .csv or .parquet file or hf:NAME[:SPLIT] (or a list, when a pipeline calls `run`), optionally
             converted first (convert=alpaca | gsm8k | gsm8k_think | sharegpt ...) and always validated
             (an error names the file, the line and the field) -> token ids and labels: the assistant's
             replies and their end-of-turn token, the completion and eos, or all of the text
2. model     the model directory `model` (a pretrained base, in Hugging Face format) and its tokenizer
3. train     shuffled batches of whole examples, padded on the right; loss = next-token
             cross-entropy on the trained tokens, divided by their global count
4. evaluate  loss on held-out examples, plus greedy replies to a few held-out prompts
5. save      <out_dir>/model, a Hugging Face model directory with the tokenizer and chat template

`method` chooses what trains: full (every weight), lora (low-rank adapters on the `lora.targets` Linears,
the base frozen; alignlab/lora) or qlora (the same adapters over a base quantised to NF4; alignlab/quant).
LoRA runs also write <out_dir>/adapter in PEFT's format; model/ then holds the adapter merged into the
full-precision base. `packing=true` packs examples into rows of `max_len` tokens without padding, each
example attending only to itself (alignlab/data/packing.py); `batch_size` then counts rows.

Examples longer than `max_len` are truncated (`truncation`:
keep_start, TRL's default, or keep_end) and those left with no trained token are dropped; both counts
are printed and saved in result.json. `alignlab inspect-data` shows what one example trains on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.packing import PackedBatches
from alignlab.data.sft import (
    ConversationBatches,
    Example,  # noqa: F401  (recipes.sft.Example, as tests import it)
    collate,
    format_counts,
    is_conversational,
    load_sft_data,
    prompt_ids,
    tokenize_records,
)
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.lora import LoraOptions, apply_lora, count_parameters, lora_state_dict, merge_and_unload, save_adapter
from alignlab.lora.inject import load_lora_state_dict
from alignlab.model.hf import load_model, resolve_model_dir, save_model
from alignlab.objectives import IGNORE_INDEX, lm_step
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed

METHODS = ("full", "lora", "qlora")


@dataclass
class SFTConfig:
    out_dir: str = "runs/sft"
    model: str = ""  # the model directory (or Hub id) to fine-tune
    data: str = ""  # SFT records: a .jsonl/.json/.csv/.parquet file or hf:NAME[:SPLIT] (see alignlab.data.sft)
    val_data: str = ""  # held-out records, the same way; empty = no evaluation loss
    convert: str = ""  # convert records first: alpaca, gsm8k, gsm8k_think, sharegpt, ... (data.converters)
    chat_template: str = ""  # a template name (chatml, llama3) or jinja to use instead of the model's; saved
    method: str = "full"  # full | lora | qlora
    lora: LoraOptions = field(default_factory=LoraOptions)  # lora and qlora
    max_len: int = 512  # tokens per example (per packed row); longer examples are truncated
    packing: bool = False  # pack examples into rows of max_len tokens, no padding
    truncation: str = "keep_start"  # keep_start (TRL's default) or keep_end
    batch_size: int = 16  # examples per micro-batch (packed rows with packing)
    eval_batches: int = 8
    sample_prompts: int = 3  # held-out prompts answered (greedily) at each evaluation
    sample_tokens: int = 128
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, warmup_steps=20, min_lr_ratio=0.1))


def read_jsonl(path: str | Path, convert: str = "") -> list[dict]:
    """SFT records from a file (any format alignlab.data.loaders reads); a bad record is an error naming
    the file, the line and the field."""
    return load_sft_data(str(path), convert)[0]


def tokenize_conversations(tokenizer, records: list[dict], max_len: int, truncation: str = "keep_start",
                           where: list[str] | None = None, chat_template: str | None = None):
    """Each record -> an Example (labels on the trained tokens only); returns the examples and the
    counts {"kept", "truncated", "dropped"} (see alignlab.data.sft.tokenize_records)."""
    examples, counts, _ = tokenize_records(tokenizer, records, max_len, truncation, where, chat_template)
    return examples, counts


def run(cfg: SFTConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.model:
        raise ConfigError("model: the model directory to fine-tune is not set (model=path/to/model)")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)

    # 1-2. tokenizer, data, model
    model_dir = resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template  # a name becomes its text; saved with the model
    train_where = val_where = None
    if train_records is None:
        train_records, train_where = load_sft_data(cfg.data, cfg.convert)
    if val_records is None:
        val_records, val_where = load_sft_data(cfg.val_data, cfg.convert) if cfg.val_data else ([], None)
    if tok.chat_template is None and any(is_conversational(r) for r in train_records + val_records):
        raise ConfigError(f"{cfg.model}: the tokenizer has no chat template, needed for conversations; "
                          "set chat_template= (e.g. chatml)")
    train, counts, dropped = tokenize_records(tok, train_records, cfg.max_len, cfg.truncation, train_where)
    val, val_counts, _ = tokenize_records(tok, val_records, cfg.max_len, cfg.truncation, val_where)
    n_targets = sum(e.n_targets for e in train)
    formats = format_counts(train_records)
    print(f"sft data: {len(train_records):,} examples ({', '.join(f'{n:,} {f}' for f, n in formats.items())}): "
          f"{counts['kept']:,} kept, {counts['truncated']} truncated to {cfg.max_len} tokens ({cfg.truncation}), "
          f"{counts['dropped']} dropped (no trained token left); {n_targets:,} trained tokens; "
          f"{val_counts['kept']} held out ({val_counts['truncated']} truncated, {val_counts['dropped']} dropped)")
    if dropped:
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        print(f"sft data: dropped {', '.join(dropped[:5])}{more}")
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    set_seed(cfg.train.seed)
    model = build_model(cfg, model_dir, device)
    pad_id = tok.padding_id
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 3-4. train; evaluate on the held-out examples and answer a few of their prompts
    val_batches = [collate(val[i:i + cfg.batch_size], pad_id)
                   for i in range(0, min(len(val), cfg.eval_batches * cfg.batch_size), cfg.batch_size)]
    prompts = [p for p in (prompt_ids(tok, r) for r in val_records[:cfg.sample_prompts]) if p is not None]

    def evaluate(m) -> dict:
        total = sum(float(lm_step(m, {k: v.to(device) for k, v in b.items()}, 1.0)) for b in val_batches)
        count = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in val_batches)
        return {"val_loss": total / max(count, 1)}

    def sample(m) -> list[str]:
        params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.0)
        return [c.text for c in Engine(m, tok).generate(prompts, params)]

    if cfg.packing:
        data = PackedBatches(train, cfg.max_len, cfg.batch_size, cfg.train.seed, pad_id)
        st = data.stats
        print(f"sft packing: {st.examples:,} examples in {st.rows:,} rows of {cfg.max_len} tokens, "
              f"{st.fill:.1%} full")
    else:
        data = ConversationBatches(train, cfg.batch_size, pad_id, cfg.train.seed)
    # a frozen weight needs no gradient of its own: 4 of the 6 FLOPs per parameter and token remain
    flops = model.config.flops_per_token(cfg.max_len, training=True) * (1.0 if cfg.method == "full" else 2 / 3)
    trainer = Trainer(cfg.train, model, data, lm_step, out, evaluate=evaluate if val_batches else None,
                      sample=sample if prompts else None, run_config=asdict(cfg), flops_per_token=flops)
    result = trainer.fit(resume=resume)
    result["trainable_params"] = count_parameters(model)[0]
    result["data"] = {"train": counts, "val": val_counts, "formats": formats, "truncation": cfg.truncation,
                      "trained_tokens": n_targets, "dropped": dropped}
    if cfg.packing:
        result["data"]["packing"] = data.stats.as_dict()

    # 5. the model directory
    if result["status"] == "finished":
        meta = {"stage": "sft", "parent": cfg.model, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        final = trainer.export_model()
        if cfg.method != "full":
            result["adapter_dir"] = str(save_adapter(final, out / "adapter", final.lora_config,
                                                     base_model_name_or_path=cfg.model))
            final = merged_model(cfg, model_dir, final)
        result["model_dir"] = str(save_model(final, out / "model", tokenizer=tok, meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"sft: {result['step']} steps ({result['train_seconds']:.0f} s), val loss "
              f"{result.get('val_loss', float('nan')):.4f}; model: {result['model_dir']}")
    return result


def build_model(cfg: SFTConfig, model_dir, device):
    """The model to train: the base as it is (full), with LoRA adapters (lora), or quantised to NF4 with
    adapters on top (qlora). Only the adapters train in the last two."""
    model = load_model(model_dir, dtype=torch.float32)
    if cfg.method == "qlora":
        from alignlab.quant import quant_stats, quantize_model

        quantize_model(model)
        q = quant_stats(model)
        print(f"qlora: {q['n_linear4bit']} Linears in NF4, {q['bytes_total'] / 2**20:.1f} MB of weights "
              f"instead of {q['bytes_fp32'] / 2**20:.1f} MB")
    if cfg.method != "full":
        apply_lora(model, cfg.lora.to_config())
        trainable, total = count_parameters(model)
        if cfg.method == "qlora":
            total += q["params_4bit"]  # the 4-bit weights are buffers, not parameters
        print(f"{cfg.method}: {trainable:,} trainable parameters of {total:,} ({trainable / total:.2%})")
    return model.to(device)


def merged_model(cfg: SFTConfig, model_dir, trained):
    """The adapter folded into the full-precision base (W + s B A), as a plain model to save. A QLoRA base
    is only an approximation of the original weights, so the adapter goes onto a fresh fp32 copy."""
    if cfg.method == "qlora":
        base = apply_lora(load_model(model_dir, dtype=torch.float32), trained.lora_config)
        load_lora_state_dict(base, {k: v.detach().cpu() for k, v in lora_state_dict(trained).items()})
        trained = base
    return merge_and_unload(trained)
