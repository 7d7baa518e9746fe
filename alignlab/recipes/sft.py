"""Supervised fine-tuning: a model learns to answer in conversations, trained on the assistant's tokens only.

    alignlab sft --config configs/sft/tinyworld.yaml [key=value ...] [--resume]

1. data      conversations ({"messages": [...], "tools": [...]}) from a .jsonl file (or a list, when a
             pipeline calls `run`) -> the chat template -> token ids and an assistant mask
             (alignlab.text.render_chat: the reply and its end-of-turn token are trained, nothing else)
2. model     the model directory `model` (a pretrained base, in Hugging Face format) and its tokenizer
3. train     shuffled batches of whole conversations, padded on the right; loss = next-token
             cross-entropy on assistant tokens, divided by the global count of assistant tokens
4. evaluate  loss on held-out conversations, plus greedy replies to a few held-out prompts
5. save      <out_dir>/model, a Hugging Face model directory with the tokenizer and chat template

Full-parameter fine-tuning of every weight. Conversations longer than `max_len` are truncated and
those left with no assistant token are dropped; both counts are printed and saved in result.json.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.infer import Engine, SamplingParams
from alignlab.model.hf import load_model, save_model
from alignlab.objectives import IGNORE_INDEX
from alignlab.recipes.pretrain import lm_step
from alignlab.text import load_tokenizer, render_chat
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed


@dataclass
class SFTConfig:
    out_dir: str = "runs/sft"
    model: str = ""  # the model directory (or Hub id) to fine-tune
    data: str = ""  # a .jsonl file of conversations ({"messages": [...], "tools": [...] optional})
    val_data: str = ""  # held-out conversations (.jsonl); empty = no evaluation loss
    max_len: int = 512  # tokens per conversation; longer ones are truncated
    batch_size: int = 16  # conversations per micro-batch
    eval_batches: int = 8
    sample_prompts: int = 3  # held-out prompts answered (greedily) at each evaluation
    sample_tokens: int = 128
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4, warmup_steps=20, min_lr_ratio=0.1))


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # labels[t] = input_ids[t + 1] where that token is the assistant's, else IGNORE_INDEX


def read_jsonl(path: str | Path) -> list[dict]:
    """Conversations from a .jsonl file; a bad line is an error naming the file, the line and the field."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{path}:{n}: field 'messages' must be a non-empty list of messages")
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise ValueError(f"{path}:{n}: messages[{i}] needs a 'role' (and 'content')")
            records.append(record)
    return records


def tokenize_conversations(tokenizer, records: list[dict], max_len: int) -> tuple[list[Example], dict]:
    """Each conversation -> an Example, with next-token labels on assistant tokens only.
    Returns the examples and the counts {"kept", "truncated", "dropped"}."""
    examples, counts = [], {"kept": 0, "truncated": 0, "dropped": 0}
    for record in records:
        ids, mask = render_chat(tokenizer, record["messages"], tools=record.get("tools"))
        if len(ids) > max_len:
            ids, mask = ids[:max_len], mask[:max_len]
            counts["truncated"] += 1
        labels = [y if m else IGNORE_INDEX for y, m in zip(ids[1:], mask[1:], strict=True)] + [IGNORE_INDEX]
        if all(y == IGNORE_INDEX for y in labels):
            counts["dropped"] += 1
            continue
        examples.append(Example(ids, labels))
        counts["kept"] += 1
    return examples, counts


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad to the longest example. Causal attention never looks right, so the padding changes nothing
    for the real tokens, and its labels are IGNORE_INDEX."""
    T = max(len(e.input_ids) for e in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        y[i, :len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": x, "labels": y}


class ConversationBatches:
    """Epochs over the examples in a seeded random order, `batch_size` at a time. The order and the
    position are checkpointed, so a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int):
        if not examples:
            raise ValueError("no training conversations left (every one was dropped)")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.rng = random.Random(seed)
        self.epoch, self.order, self.pos = 0, [], 0

    def next_batch(self) -> dict:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self.order):
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
                self.epoch, self.pos = self.epoch + 1, 0
            take = self.order[self.pos:self.pos + self.batch_size - len(picked)]
            picked += take
            self.pos += len(take)
        return collate([self.examples[i] for i in picked], self.pad_id)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "epoch": self.epoch, "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.epoch, self.order, self.pos = state["epoch"], list(state["order"]), state["pos"]


def prompt_of(record: dict) -> tuple[list[dict], str | None]:
    """The messages before the first assistant reply, and that reply (the reference)."""
    messages = record.get("messages") or record.get("prompt")
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return messages[:i], m.get("content")
    return messages, None


def run(cfg: SFTConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.model:
        raise ValueError("model: the model directory to fine-tune is not set (model=path/to/model)")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)

    # 1-2. model, tokenizer, data
    tok = load_tokenizer(cfg.model)
    if tok.chat_template is None:
        raise ValueError(f"{cfg.model}: the tokenizer has no chat template; SFT renders conversations with it")
    train_records = read_jsonl(cfg.data) if train_records is None else train_records
    val_records = (read_jsonl(cfg.val_data) if cfg.val_data else []) if val_records is None else val_records
    train, counts = tokenize_conversations(tok, train_records, cfg.max_len)
    val, val_counts = tokenize_conversations(tok, val_records, cfg.max_len)
    n_targets = sum(sum(y != IGNORE_INDEX for y in e.labels) for e in train)
    print(f"sft data: {counts['kept']:,} conversations kept, {counts['truncated']} truncated to {cfg.max_len} "
          f"tokens, {counts['dropped']} dropped (no assistant token left); {n_targets:,} assistant tokens; "
          f"{val_counts['kept']} held out")
    set_seed(cfg.train.seed)
    model = load_model(cfg.model, dtype=torch.float32).to(device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_ids or [0])[0]
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 3-4. train; evaluate on the held-out conversations and answer a few of their prompts
    val_batches = [collate(val[i:i + cfg.batch_size], pad_id)
                   for i in range(0, min(len(val), cfg.eval_batches * cfg.batch_size), cfg.batch_size)]
    prompts = [prompt_of(r) for r in val_records[:cfg.sample_prompts]]

    def evaluate(m) -> dict:
        total = sum(float(lm_step(m, {k: v.to(device) for k, v in b.items()}, 1.0)) for b in val_batches)
        count = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in val_batches)
        return {"val_loss": total / max(count, 1)}

    def sample(m) -> list[str]:
        params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.0)
        ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p, _ in prompts]
        return [c.text for c in Engine(m, tok).generate(ids, params)]

    data = ConversationBatches(train, cfg.batch_size, pad_id, cfg.train.seed)
    trainer = Trainer(cfg.train, model, data, lm_step, out, evaluate=evaluate if val_batches else None,
                      sample=sample if prompts else None, run_config=asdict(cfg),
                      flops_per_token=model.config.flops_per_token(cfg.max_len, training=True))
    result = trainer.fit(resume=resume)
    result["data"] = {"train": counts, "val": val_counts, "assistant_tokens": n_targets}

    # 5. the model directory
    if result["status"] == "finished":
        meta = {"stage": "sft", "parent": cfg.model, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        result["model_dir"] = str(save_model(trainer.export_model(), out / "model", tokenizer=tok, meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"sft: {result['step']} steps ({result['train_seconds']:.0f} s), val loss "
              f"{result.get('val_loss', float('nan')):.4f}; model: {result['model_dir']}")
    return result
