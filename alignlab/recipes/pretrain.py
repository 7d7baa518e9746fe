"""Pretraining: a GPT learns next-token prediction on raw text, from random weights (or a checkpoint).

    alignlab pretrain --config configs/pretrain/shakespeare_char.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m alignlab.cli pretrain --config ...          (data parallel)

1. data      the corpus -> a char or BPE tokenizer -> token ids in a memory-mapped file (alignlab.data)
2. model     a CausalLM from `model:` (any architecture alignlab knows), or `init_from` a model directory
3. train     random windows of block_size tokens; loss = next-token cross-entropy (objectives/lm.py);
             the shared Trainer does the rest (AdamW, schedule, accumulation, checkpoints, metrics)
4. evaluate  validation loss on the same eval_batches windows each time, plus a sample of generated text
5. save      runs/<name>/model: a Hugging Face model directory (config.json, model.safetensors,
             tokenizer) that `alignlab generate` and transformers load; plus config.yaml (the resolved
             config), metrics.jsonl, samples.jsonl, plots/loss.png, result.json
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlab.data import prepare_pretraining_data
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.objectives import lm_loss, lm_step
from alignlab.train.distributed import Dist, barrier, cleanup, init_distributed
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed


@dataclass
class DataConfig:
    source: Any = "tinyshakespeare"  # path, glob, URL(#sha256=...), known name, hf:id, or a list of them
    tokenizer: str = "char"  # char | bpe | a tokenizer directory
    vocab_size: int = 4096  # bpe only
    val_fraction: float = 0.1
    cache_dir: str | None = None  # default $ALIGNLAB_CACHE or ~/.cache/alignlab


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    # ModelConfig fields (alignlab/model/config.py); vocab_size comes from the data, max_seq_len defaults to block_size
    model: dict = field(default_factory=lambda: {"arch": "llama", "dim": 128, "n_layers": 4, "n_heads": 4})
    init_from: str | None = None  # continue pretraining a model directory instead of starting from random
    block_size: int = 256  # tokens per training window (the context the model learns)
    batch_size: int = 32  # windows per micro-batch per process; global batch = this * grad_accum * processes
    eval_batches: int = 20  # validation windows = eval_batches * batch_size
    sample_prompt: str = "\n"
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    train: TrainConfig = field(default_factory=TrainConfig)


class TrainWindows:
    """Random training windows. Every process draws the same global batch and keeps its own rows, so
    1 process with batch 8 and 2 processes with batch 4 see exactly the same data."""

    def __init__(self, data, block_size: int, batch_size: int, dist: Dist, seed: int):
        self.data, self.block_size, self.batch_size, self.dist = data, block_size, batch_size, dist
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> dict:
        x, y = self.data.get_batch("train", self.block_size, self.batch_size * self.dist.world, self.generator)
        rows = slice(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        return {"input_ids": x[rows], "labels": y[rows]}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def build_model(cfg: PretrainConfig, vocab_size: int, special: dict) -> CausalLM:
    if cfg.init_from:
        model = load_model(cfg.init_from, dtype=torch.float32)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"init_from {cfg.init_from}: its vocabulary ({model.config.vocab_size}) is smaller "
                              f"than the tokenizer's ({vocab_size})")
        return model
    # max_seq_len (the longest context the model is built for) defaults to the training window
    spec = {"arch": "llama", "max_seq_len": cfg.block_size, **cfg.model, "vocab_size": vocab_size, **special}
    try:
        return CausalLM(preset(**spec))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def run(cfg: PretrainConfig, resume: bool = False) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    out = Path(cfg.out_dir)
    try:
        # 1. data: the first process tokenizes (and downloads), the others then read the cache
        d = cfg.data
        if not dist.main:
            barrier(dist)
        data = prepare_pretraining_data(d.source, d.tokenizer, d.vocab_size, d.val_fraction, d.cache_dir,
                                        progress=dist.main, verbose=dist.main)
        if dist.main:
            barrier(dist)
        tok = data.tokenizer

        # 2. model (the same initial weights in every process)
        set_seed(cfg.train.seed)
        special = {"eos_token_id": tok.eos_token_ids[0] if tok.eos_token_ids else None}
        model = build_model(cfg, tok.vocab_size, special)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            from alignlab.config import save_config

            save_config(cfg, out / "config.yaml")
            c = model.config
            print(f"model: {c.arch}, {c.n_layers} layers, dim {c.dim}, {c.n_heads} heads, "
                  f"{model.num_params():,} parameters; window {cfg.block_size}, global batch "
                  f"{cfg.batch_size * cfg.train.grad_accum * dist.world} x {cfg.block_size} tokens")

        # 3-4. train, evaluating on fixed validation windows and sampling text
        def evaluate(m) -> dict:
            g = torch.Generator().manual_seed(1234)  # the same windows at every evaluation
            total = 0.0
            for _ in range(cfg.eval_batches):
                x, y = data.get_batch("val", cfg.block_size, cfg.batch_size, g, device)
                total += float(lm_loss(m(x), y))
            return {"val_loss": total / cfg.eval_batches}

        def sample(m) -> list[str]:
            room = cfg.block_size - len(tok.encode(cfg.sample_prompt, add_special_tokens=False))
            params = SamplingParams(max_new_tokens=max(1, min(cfg.sample_tokens, room)), seed=cfg.train.seed,
                                    temperature=cfg.sample_temperature, ignore_eos=True)
            return [Engine(m, tok).generate([cfg.sample_prompt], params)[0].text]

        windows = TrainWindows(data, cfg.block_size, cfg.batch_size, dist, seed=cfg.train.seed)
        trainer = Trainer(cfg.train, model, windows, lm_step, out, evaluate=evaluate if len(data.val) else None,
                          sample=sample, dist=dist, flops_per_token=model.config.flops_per_token(
                              cfg.block_size, training=True), run_config=asdict(cfg))
        result = trainer.fit(resume=resume)

        # 5. the model directory
        final = trainer.export_model() if result["status"] == "finished" else None  # all processes
        if dist.main and final is not None:
            meta = {"stage": "pretrain", "parent": cfg.init_from, "config": asdict(cfg),
                    "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
            result["model_dir"] = str(save_model(final, out / "model", tokenizer=tok, meta=meta))
            (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"val loss {result.get('val_loss', float('nan')):.4f} after {result['step']} steps "
                  f"({result['train_seconds']:.0f} s); model: {result['model_dir']}; curve: {out}/plots/loss.png")
        return result
    finally:
        cleanup(dist)
