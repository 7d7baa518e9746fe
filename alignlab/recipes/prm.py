"""Verifiers: a process reward model (PRM) learns which worked steps are right, an outcome reward model (ORM) which
final answers are.

    alignlab prm train model=runs/table/seed0/sft/model kind=prm out_dir=runs/prm/seed0/prm
    alignlab prm train model=runs/table/seed0/sft/model kind=orm out_dir=runs/prm/seed0/orm \\
        solutions=runs/prm/seed0/prm/solutions.jsonl val_solutions=runs/prm/seed0/prm/val_solutions.jsonl

1. solutions  `samples_per_prompt` replies a prompt of `source` (TinyWorld's training prompts of levels 3-4) from
              `policy` (default: `model`, the SFT model), at temperature 1 through the engine
              (eval/overoptimization.sample_replies), and as many for `val_limit` held-out prompts of `val_source`.
              Each is labelled automatically, by checking its arithmetic (Math-Shepherd's point, Wang et al. 2023,
              arXiv:2312.08935: step labels need no human when a program can check them):
                  step labels    tasks/tinyworld.step_labels: 1 while every step "a op b = c" so far is right, 0
                                 from the first wrong one on (PRM800K's first-error convention, Lightman et al.
                                 2023, arXiv:2305.20050)
                  answer label   the task's check: the exact format with the right number
              Written to <out_dir>/solutions.jsonl and val_solutions.jsonl; `solutions=` / `val_solutions=` read
              such files instead (so a PRM and an ORM train on the very same solutions).
2. model      RewardModel.from_causal_lm(model): the SFT backbone and a new scalar head (model/reward.py), read as
              a logit: sigma(s_t) = P(right up to position t)
3. train      kind=prm: a label at the token that ends each step (model/reward.reply_positions); kind=orm: one label
              at the last token (where model/reward.score reads). Both with binary cross-entropy,
                  L = -1/N sum_{labelled (b, t)} y log sigma(s_bt) + (1 - y) log sigma(-s_bt)
              (objectives/verifier.verifier_loss; N the labels of the whole global batch). Logged: loss, accuracy
              (sigma > 1/2 agrees with the label), positive_rate, mean_prob.
4. evaluate   on the held-out solutions: val_loss, val_accuracy, val_positive_rate, and val_answer_accuracy (does
              the solution's score, a PRM's weakest step or an ORM's last token, say rightly whether the answer is
              right?); the untrained model too
5. save       <out_dir>/model: a sequence-classification directory as recipes/reward_model.py writes one
              (load_reward_model reads it; `score` gives the ORM's reward, `score_positions` the PRM's step
              scores); result.json. Checkpoints resume exactly (train/trainer.py, `--resume`).

Then `alignlab prm bon` (eval/rerank.py) reranks held-out samples with both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.cache import atomic_path
from alignlab.data.sampler import EpochSampler
from alignlab.errors import ConfigError
from alignlab.model.hf import resolve_model_dir
from alignlab.model.reward import (
    RewardModel,
    pad_right,
    reply_positions,
    reward_input_ids,
    reward_pad_id,
    save_reward_model,
)
from alignlab.objectives.lm import IGNORE_INDEX
from alignlab.objectives.verifier import verifier_loss, verifier_metrics
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, autocast_for, resolve_device, set_seed, unwrap

KINDS = ("prm", "orm")


@dataclass
class PRMConfig:
    out_dir: str = "runs/prm"
    kind: str = "prm"  # prm: a label at each step's end; orm: one label (the answer) at the last token
    model: str = ""  # the model directory whose backbone becomes the verifier: usually the SFT model
    policy: str = ""  # the model whose solutions are sampled and labelled ("" = model)
    source: str = "tinyworld:rl:3-4"  # training prompts (alignlab/tasks/sources.py)
    val_source: str = ""  # held-out prompts ("" = the source's test split)
    solutions: str = ""  # a solutions.jsonl from an earlier run to train on, instead of sampling
    val_solutions: str = ""  # likewise for the held-out solutions
    samples_per_prompt: int = 8
    limit: int = 0  # training prompts (0 = all)
    val_limit: int = 100  # held-out prompts whose solutions evaluate the verifier (0 = all)
    temperature: float = 1.0
    max_tokens: int = 96
    batch_size: int = 32  # solutions per micro-batch
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=600, lr=1e-4, warmup_steps=20,
                                                                   min_lr_ratio=0.1, weight_decay=0.0,
                                                                   eval_every=100, save_every=200))

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# 1. Solutions and their labels


def label_solutions(task, records: list[dict], replies: list[str], n: int) -> list[dict]:
    """One row a reply: {"prompt", "reply", "answer", "correct", "step_labels", "step_ends"} (replies record-major,
    n a record)."""
    from alignlab.tasks.tinyworld import step_ends, step_labels

    rows = []
    for k, reply in enumerate(replies):
        record = records[k // n]
        rows.append({"prompt": record["prompt"], "reply": reply, "answer": str(record["answer"]),
                     "correct": int(task.correct(reply, record)), "step_labels": step_labels(reply),
                     "step_ends": step_ends(reply)})
    return rows


def solutions(source: str, policy: str, n: int, limit: int, cfg: PRMConfig, seed: int, path: Path,
              given: bool = False) -> list[dict]:
    """The labelled solutions of `source`: a file the config names (`given`) as it is; else the run's cache at
    `path` when it holds n for each of the source's prompts (a resumed run sees the same), else sampled, labelled
    and written there (atomically)."""
    from alignlab.eval.overoptimization import sample_replies
    from alignlab.tasks import load_source

    if given:
        return [json.loads(line) for line in path.read_text().splitlines()]
    task, records = load_source(source, limit)
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if len(rows) == n * len(records) and all(rows[k]["prompt"] == records[k // n]["prompt"] for k in (0, -1)):
            return rows
        print(f"{path}: not {n} solutions for each of the {len(records)} prompts of {source}; sampling again")
    rows = label_solutions(task, records, sample_replies(policy, records, n, cfg.temperature, cfg.max_tokens, seed),
                           n)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def describe(rows: list[dict]) -> str:
    steps = [y for r in rows for y in r["step_labels"]]
    return (f"{len(rows):,} solutions, {sum(r['correct'] for r in rows) / len(rows):.1%} right; {len(steps):,} steps, "
            f"{sum(steps) / max(len(steps), 1):.1%} labelled right (first-error convention)")


# ----------------------------------------------------------------------------------------------------------------
# 2-3. Examples, batches, the loss


def verifier_example(tokenizer, row: dict, kind: str, pad_id: int) -> tuple[list[int], list[int], list[int]]:
    """(ids, labelled positions, labels): a PRM's at each step's last token, an ORM's at the last token."""
    ids = reward_input_ids(tokenizer, row["prompt"], row["reply"], pad_id)
    if kind == "orm":
        return ids, [len(ids) - 1], [row["correct"]]
    return ids, reply_positions(tokenizer, ids, row["reply"], row["step_ends"]), list(row["step_labels"])


def collate_verifier(examples: list[tuple], pad_id: int) -> dict:
    """Right-padded ids and mask, and labels [B, T]: 0/1 at the labelled positions, IGNORE_INDEX elsewhere.
    "answer" [B] and "last" [B] (the last labelled position) let evaluation score whole solutions."""
    ids, mask = pad_right([e[0] for e in examples], pad_id)
    labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long)
    for b, (_, positions, values, _) in enumerate(examples):
        labels[b, positions] = torch.tensor(values, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "answer": torch.tensor([e[3] for e in examples], dtype=torch.long)}


class VerifierBatches(EpochSampler):
    """Shuffled epochs over the examples, `batch_size` at a time; resumable exactly (data/sampler.py)."""

    def __init__(self, examples: list[tuple], batch_size: int, pad_id: int, seed: int):
        super().__init__(len(examples), batch_size, seed, what="solutions")
        self.examples, self.pad_id = examples, pad_id

    def next_batch(self) -> dict:
        return collate_verifier([self.examples[i] for i in self.next_indices()], self.pad_id)


def count_labels(batch: dict) -> int:
    """The Trainer's normaliser: labelled positions, so the loss is the mean over every label in the global batch."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def verifier_step(model, batch: dict, normaliser: float):
    """One micro-batch: the head at every position, BCE at the labelled ones."""
    scores = model.token_rewards(batch["input_ids"], batch["attention_mask"])  # [B, T]
    return verifier_loss(scores, batch["labels"], normaliser), verifier_metrics(scores, batch["labels"])


def solution_logits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] one logit a solution: the lowest over its labelled positions (a PRM's weakest step; an ORM has one);
    -inf for a solution without labels (no steps: nothing shows it right)."""
    return scores.float().masked_fill(labels == IGNORE_INDEX, float("inf")).min(-1).values.nan_to_num(
        posinf=float("-inf"))


@torch.no_grad()
def evaluate_verifier(model, batches: list[dict], device) -> dict[str, float]:
    """val_loss, val_accuracy, val_positive_rate, val_mean_prob over the labels; val_answer_accuracy over solutions."""
    scores, labels, sol, answers = [], [], [], []
    for b in batches:
        s = model.token_rewards(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu()  # [B, T]
        labelled = b["labels"] != IGNORE_INDEX
        scores.append(s[labelled])
        labels.append(b["labels"][labelled])
        sol.append(solution_logits(s, b["labels"]))
        answers.append(b["answer"])
    s, y = torch.cat(scores), torch.cat(labels)
    sol, answers = torch.cat(sol), torch.cat(answers)
    out = {"val_loss": verifier_loss(s, y).item(), **{f"val_{k}": v for k, v in verifier_metrics(s, y).items()}}
    out["val_answer_accuracy"] = ((sol > 0).long() == answers).float().mean().item()
    return out


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def run(cfg: PRMConfig, resume: bool = False) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.model:
        raise ConfigError("model: the model directory whose backbone becomes the verifier is not set "
                         "(model=path/to/sft/model)")
    from alignlab.tasks import default_val_source

    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)
    model_dir = resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    pad_id = reward_pad_id(tok)

    # 1. solutions, labelled
    policy = cfg.policy or cfg.model
    n, seed = cfg.samples_per_prompt, cfg.train.seed
    train_rows = solutions(cfg.source, policy, n, cfg.limit, cfg, seed,
                           Path(cfg.solutions or out / "solutions.jsonl"), given=bool(cfg.solutions))
    val_source = cfg.val_source or default_val_source(cfg.source)
    val_rows = solutions(val_source, policy, n, cfg.val_limit, cfg, seed + 10**6,
                         Path(cfg.val_solutions or out / "val_solutions.jsonl"), given=bool(cfg.val_solutions)) \
        if val_source else []
    print(f"{cfg.kind} data: {cfg.source}: {describe(train_rows)}")
    if val_rows:
        print(f"{cfg.kind} data: {val_source}: {describe(val_rows)}")

    # 2. examples (a PRM learns nothing from a solution without steps); the model
    set_seed(cfg.train.seed)
    model = RewardModel.from_causal_lm(model_dir, dtype=torch.float32)
    model.config.pad_token_id = pad_id
    max_len = model.config.max_seq_len

    def examples(rows):
        kept = []
        for r in rows:
            ids, positions, values = verifier_example(tok, r, cfg.kind, pad_id)
            if positions and len(ids) <= max_len:
                kept.append((ids, positions, values, r["correct"]))
        return kept

    train, val = examples(train_rows), examples(val_rows)
    print(f"{cfg.kind} data: {len(train):,} training solutions with labels ({len(train_rows) - len(train)} without "
          f"steps or too long, dropped), {len(val):,} held out")
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 3-4. train; evaluate on the held-out solutions
    val_batches = [collate_verifier(val[i:i + cfg.batch_size], pad_id) for i in range(0, len(val), cfg.batch_size)]

    def evaluate(m) -> dict:
        return evaluate_verifier(m, val_batches, device)

    before = {}
    if val_batches:
        model.to(device).eval()
        with autocast_for(cfg.train.dtype, device):
            before = evaluate(model)
        print(f"{cfg.kind}: before training, held-out accuracy {before['val_accuracy']:.1%} "
              f"(labels right: {before['val_positive_rate']:.1%}), loss {before['val_loss']:.4f}")
    data = VerifierBatches(train, cfg.batch_size, pad_id, cfg.train.seed)
    mc = model.config  # the backbone's FLOPs without its (dropped) vocabulary head
    flops = mc.flops_per_token(max_len, training=True) - 3 * 2 * mc.vocab_size * mc.dim
    trainer = Trainer(cfg.train, model, data, verifier_step, out, evaluate=evaluate if val_batches else None,
                      run_config=asdict(cfg), flops_per_token=flops, weight_fn=count_labels)
    result = trainer.fit(resume=resume)
    result["data"] = {"train": {"solutions": len(train_rows), "kept": len(train), "describe": describe(train_rows)},
                      "val": {"solutions": len(val_rows), "kept": len(val),
                              "describe": describe(val_rows) if val_rows else ""}}
    if before:
        result["before"] = before

    # 5. the model directory
    if result["status"] == "finished":
        reads = "the token that ends each worked step" if cfg.kind == "prm" else "the last token"
        meta = {"stage": cfg.kind, "parent": cfg.model, "reads": reads, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        result["model_dir"] = str(save_reward_model(unwrap(trainer.export_model()), out / "model", tokenizer=tok,
                                                    meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        shown = (f"held-out accuracy {before['val_accuracy']:.1%} -> {result['val_accuracy']:.1%}, answer accuracy "
                 f"{before['val_answer_accuracy']:.1%} -> {result['val_answer_accuracy']:.1%}"
                 if before else "no held-out solutions")
        print(f"{cfg.kind}: {result['step']} steps ({result['train_seconds']:.0f} s), {shown}; "
              f"model: {result['model_dir']}")
    return result
