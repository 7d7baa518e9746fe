"""Knowledge distillation: a student learns a teacher's next-token distributions, not only its chosen tokens.

    alignlab distill student=runs/small/pretrain/model teacher=runs/pipeline/sft/model data=chats.jsonl [lmbda=0.5]

1. data      SFT records in any of trl's formats (alignlab.data.sft), tokenized with the student's tokenizer and
             chat template; the reply tokens are the ones distilled
2. models    the student (trained, full weights) and the teacher (frozen, in eval mode); they must share the
             tokenizer, and may differ in every other size
3. train     each step, with probability `lmbda` the batch's replies are replaced by the student's own samples
             (on-policy, GKD's lambda; Agarwal et al. 2023, arXiv:2306.13649), else the data's replies are used
             (off-policy, supervised KD). Both models read the same tokens; the loss at each reply position is
             alignlab.objectives.distill.token_divergence(student, teacher, beta, temperature) * temperature^2
             (beta 0 forward KL, Hinton et al. 2015; beta 1 reverse KL; between, the generalized JSD), summed and
             divided by the global count of reply tokens
4. evaluate  the same divergence on held-out records, and the student's greedy replies to a few of their prompts
5. save      <out_dir>/model, a Hugging Face model directory

Sequence-level KD (Kim & Rush 2016) is SFT on the teacher's samples: `alignlab synth rejection --model TEACHER`
writes them, `alignlab sft` trains on them. `prune_and_distill` starts the student from the teacher itself, cut to
its most influential blocks (Minitron; the pipeline's opt-in `distill` stage).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.sft import ConversationBatches, Example, collate, load_sft_data, prompt_ids, tokenize_records
from alignlab.errors import ConfigError
from alignlab.infer import Engine, SamplingParams
from alignlab.model.hf import load_model, resolve_model_dir, save_model
from alignlab.objectives import IGNORE_INDEX
from alignlab.objectives.distill import token_divergence
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed


@dataclass
class DistillConfig:
    out_dir: str = "runs/distill"
    student: str = ""  # the model directory to train (any size)
    teacher: str = ""  # the frozen teacher (same tokenizer)
    data: str = ""  # SFT records (a file or hf:NAME[:SPLIT]); their prompts are used on-policy
    val_data: str = ""
    beta: float = 0.5  # 0 forward KL, 1 reverse KL, between: generalized JSD (trl GKD's default 0.5)
    temperature: float = 1.0
    lmbda: float = 0.0  # probability that a step trains on the student's own samples (trl GKD's default 0.5)
    sample_temperature: float = 1.0  # on-policy sampling
    max_new_tokens: int = 96  # on-policy reply length
    max_len: int = 256
    batch_size: int = 16
    eval_batches: int = 4
    sample_prompts: int = 2
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1))


class OnPolicyBatches:
    """The data's batches; with probability `lmbda` each batch's replies are swapped for the student's samples
    (the prompt is every token before the first trained one)."""

    def __init__(self, batches: ConversationBatches, student, tokenizer, cfg: DistillConfig):
        self.batches, self.student, self.tok, self.cfg = batches, student, tokenizer, cfg
        self.rng = random.Random(cfg.train.seed)
        self.draws = 0

    def next_batch(self) -> dict:
        indices = self.batches.next_indices()
        examples = [self.batches.examples[i] for i in indices]
        self.draws += 1
        if self.rng.random() >= self.cfg.lmbda:
            return collate(examples, self.batches.pad_id)
        prompts = [e.input_ids[:next(t for t, y in enumerate(e.labels) if y != IGNORE_INDEX) + 1] for e in examples]
        params = SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.sample_temperature,
                                seed=self.cfg.train.seed * 1_000_003 + self.draws)
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            outs = Engine(self.student, self.tok).generate(prompts, params)
        self.student.train(was_training)
        rows = []
        for p, o in zip(prompts, outs):
            ids = p + o.token_ids
            labels = [IGNORE_INDEX] * (len(p) - 1) + o.token_ids + [IGNORE_INDEX]
            rows.append(Example(ids, labels))
        return collate(rows, self.batches.pad_id)

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict(), "rng": self.rng.getstate(), "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.rng.setstate(state["rng"])
        self.draws = state["draws"]


def divergence_sum(student, teacher, batch: dict, beta: float, temperature: float) -> tuple[torch.Tensor, int]:
    """The summed per-token divergence over the reply positions of one batch, and their count."""
    ids, labels = batch["input_ids"], batch["labels"]
    keep = labels != IGNORE_INDEX
    with torch.no_grad():
        t_logits = teacher(ids)
    s_logits = student(ids)
    v = min(s_logits.shape[-1], t_logits.shape[-1])  # padded vocabularies: compare the real tokens
    d = token_divergence(s_logits[..., :v][keep], t_logits[..., :v][keep], beta, temperature)
    return d.sum() * temperature ** 2, int(keep.sum())


def run(cfg: DistillConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for name in ("student", "teacher"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name}: not set ({name}=path/to/model)")
    if not 0.0 <= cfg.lmbda <= 1.0:
        raise ConfigError(f"lmbda must be in [0, 1], got {cfg.lmbda}")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)

    # 1-2. data and models
    student_dir, teacher_dir = resolve_model_dir(cfg.student), resolve_model_dir(cfg.teacher)
    tok = load_tokenizer(student_dir)
    teacher_tok, probe = load_tokenizer(teacher_dir), "Ada has 12 apples; she buys 30 more. <think>12 + 30</think>"
    if teacher_tok.vocab_size != tok.vocab_size or teacher_tok.encode(probe) != tok.encode(probe):
        raise ConfigError(f"{cfg.teacher} and {cfg.student}: the teacher and the student must share a tokenizer")
    train_where = val_where = None
    if train_records is None:
        train_records, train_where = load_sft_data(cfg.data)
    if val_records is None:
        val_records, val_where = load_sft_data(cfg.val_data) if cfg.val_data else ([], None)
    train, counts, _ = tokenize_records(tok, train_records, cfg.max_len, "keep_start", train_where)
    val, _, _ = tokenize_records(tok, val_records, cfg.max_len, "keep_start", val_where)
    print(f"distill data: {counts['kept']:,} examples ({counts['truncated']} truncated, {counts['dropped']} dropped); "
          f"{len(val)} held out")
    set_seed(cfg.train.seed)
    student = load_model(student_dir, dtype=torch.float32).to(device)
    teacher = load_model(teacher_dir, dtype=torch.float32).to(device).eval().requires_grad_(False)
    print(f"distill: teacher {teacher.num_params():,} parameters -> student {student.num_params():,}; "
          f"beta {cfg.beta}, temperature {cfg.temperature}, on-policy share {cfg.lmbda}")
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 3-4. train, evaluate
    def step(model, batch, normaliser):
        total, _ = divergence_sum(model, teacher, batch, cfg.beta, cfg.temperature)
        return total / normaliser

    val_batches = [collate(val[i:i + cfg.batch_size], tok.padding_id)
                   for i in range(0, min(len(val), cfg.eval_batches * cfg.batch_size), cfg.batch_size)]

    def evaluate(m) -> dict:
        with torch.no_grad():
            sums = [divergence_sum(m, teacher, {k: v.to(device) for k, v in b.items()}, cfg.beta, cfg.temperature)
                    for b in val_batches]
        return {"val_loss": float(sum(s for s, _ in sums)) / max(sum(n for _, n in sums), 1)}

    prompts = [p for p in (prompt_ids(tok, r) for r in val_records[:cfg.sample_prompts]) if p is not None]

    def sample(m) -> list[str]:
        return [c.text for c in Engine(m, tok).generate(prompts, SamplingParams(max_new_tokens=cfg.max_new_tokens))]

    data = OnPolicyBatches(ConversationBatches(train, cfg.batch_size, tok.padding_id, cfg.train.seed), student, tok,
                           cfg)
    flops = (student.config.flops_per_token(cfg.max_len, training=True)
             + teacher.config.flops_per_token(cfg.max_len, training=False))
    trainer = Trainer(cfg.train, student, data, step, out, evaluate=evaluate if val_batches else None,
                      sample=sample if prompts else None, run_config=asdict(cfg), flops_per_token=flops)
    result = trainer.fit(resume=resume)

    # 5. the model directory
    if result["status"] == "finished":
        meta = {"stage": "distill", "parent": cfg.student, "teacher": cfg.teacher, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        result["model_dir"] = str(save_model(trainer.export_model(), out / "model", tokenizer=tok, meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"distill: {result['step']} steps ({result['train_seconds']:.0f} s); model: {result['model_dir']}")
    return result


def text_chunks(text: str, block_size: int) -> list[dict]:
    """Plain text cut into {"text"} records of 2 * block_size characters: about block_size tokens each."""
    return [{"text": text[i:i + 2 * block_size]} for i in range(0, len(text), 2 * block_size)]


def prune_and_distill(base: str | Path, teacher: str | Path, n_layers: int, out_dir: str | Path, text: str,
                      chats: list[dict], val_chats: list[dict], text_train: TrainConfig, chat_train: TrainConfig,
                      block_size: int, text_batch: int, chat_batch: int) -> dict:
    """Minitron's recipe (Muralidharan et al. 2024, arXiv:2407.14679), in depth: cut `base` to its n_layers blocks of
    highest block influence on `text` (alignlab/model/prune.py), distil the cut model from `base` on `text` (forward
    KL, windows of about block_size tokens), then from `teacher`, the base's fine-tune, on `chats`. The student is
    out_dir/model; returns the second run's result with "kept_blocks" and "block_influence"."""
    from alignlab.model.prune import prune_by_influence

    out, base_dir = Path(out_dir), resolve_model_dir(str(base))
    model, tok = load_model(base_dir, dtype=torch.float32), load_tokenizer(base_dir)
    ids = tok.encode(text[:256 * block_size], add_special_tokens=False)
    windows = torch.tensor(ids[:len(ids) // block_size * block_size]).view(-1, block_size)[:32]
    pruned, keep, influence = prune_by_influence(model, windows, n_layers)
    start = out / "pruned"
    if not (start / "config.json").exists():
        save_model(pruned, start, tokenizer=tok,
                   meta={"stage": "prune", "parent": str(base_dir), "kept_blocks": keep, "block_influence": influence})
    chunks = text_chunks(text, block_size)
    first = run(DistillConfig(out_dir=str(out / "text"), student=str(start), teacher=str(base_dir), beta=0.0,
                              max_len=block_size, batch_size=text_batch, sample_prompts=0, train=text_train),
                resume=True, train_records=chunks[:-32], val_records=chunks[-32:])
    if first["status"] != "finished":
        return first
    second = run(DistillConfig(out_dir=str(out), student=first["model_dir"], teacher=str(teacher), beta=0.0,
                               max_len=2 * block_size, batch_size=chat_batch, train=chat_train),
                 resume=True, train_records=chats, val_records=val_chats)
    return {**second, "kept_blocks": keep, "block_influence": [round(b, 4) for b in influence]}
