"""Reward modelling: a transformer learns to give the preferred reply of each pair the higher score.

    alignlab reward-model --config CONFIG.yaml [key=value ...] [--resume]
    alignlab reward-model model=runs/pipeline/sft/model data=tinyworld:preferences val_data=tinyworld:preferences:test

1. data      preference pairs in trl's formats: {"prompt", "chosen", "rejected"} as message lists
             (conversational) or strings (standard), or without "prompt" (implicit: each side is the whole
             conversation); optionally a per-pair "margin". From a .jsonl/.json/.csv/.parquet file, hf:NAME,
             or tinyworld:preferences[:SPLIT][@SEED], read and validated by alignlab.data.preference. Each side
             -> token ids (model/reward.py:reward_input_ids: the chat template for conversations, bos + text + eos
             for strings); pairs with a side longer than max_len are dropped, as trl does (truncating would cut
             the very reply being judged).
2. model     RewardModel.from_causal_lm(model): the backbone of the model directory `model` (usually the SFT
             model) with a new scalar head, Linear(dim, 1), read at each sequence's last token
3. train     one batch = B chosen rows then their B rejected rows, padded on the right, scored in one forward:

                 r = model(ids)  ->  r_w = r[:B],  r_l = r[B:]
                 L = -mean log sigma(r_w - r_l - m)  +  c * mean((r_w + r_l)^2)

             the Bradley-Terry model (Bradley & Terry 1952): P(y_w preferred to y_l | x) = sigma(r(x, y_w) -
             r(x, y_l)), fitted by maximum likelihood, as InstructGPT's reward model (Ouyang et al. 2022,
             arXiv:2203.02155, eq. 1). m: an optional per-pair margin (Llama 2, arXiv:2307.09288: a larger gap
             for a clearer preference); c: center_rewards_coefficient (Eisenstein et al. 2023, arXiv:2312.09244),
             which keeps rewards near zero mean, since L itself only sees differences.
             Logged per step under trl's names: accuracy (share of pairs with r_w > r_l), margin (mean r_w - r_l),
             mean_reward, min_reward, max_reward.
4. evaluate  the same on the held-out pairs: val_loss, val_accuracy, val_margin, val_{mean,min,max}_reward;
             the untrained model too, so result.json shows what training changed
5. save      <out_dir>/model: a Hugging Face sequence-classification directory (LlamaForSequenceClassification,
             ...) with the tokenizer, which transformers loads; result.json with the held-out accuracy

Defaults follow trl's RewardConfig (lr 1e-4, max_length 1024, center_rewards_coefficient None).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.errors import DataError
from alignlab.data.preference import load_preference_data, normalize_record, summarize
from alignlab.data.sampler import EpochSampler
from alignlab.errors import ConfigError
from alignlab.model.hf import resolve_model_dir
from alignlab.model.reward import RewardModel, pad_right, reward_input_ids, reward_pad_id, save_reward_model
from alignlab.objectives.preference import bradley_terry_loss
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, autocast_for, resolve_device, set_seed, unwrap


@dataclass
class RewardModelConfig:
    out_dir: str = "runs/reward_model"
    model: str = ""  # the model directory (or Hub id) whose backbone becomes the reward model: usually the SFT model
    data: str = ""  # preference pairs: .jsonl/.json/.csv/.parquet, hf:NAME[:SPLIT], tinyworld:preferences[:SPLIT]
    val_data: str = ""  # held-out pairs, the same way; empty = no evaluation
    convert: str = ""  # convert records first: hh_rlhf (Anthropic's transcripts), see alignlab.data.preference
    chat_template: str = ""  # a template name (chatml, llama3) or jinja to use instead of the model's; saved
    max_len: int = 1024  # tokens per side; longer pairs are dropped (trl's max_length)
    batch_size: int = 8  # pairs per micro-batch (2 * batch_size rows)
    margin_column: str = "margin"  # a per-pair margin field, used when every pair has it; "" = never
    center_rewards_coefficient: float | None = None  # c in c * mean((r_w + r_l)^2); None = off (trl's default)
    eval_pairs: int = 512  # held-out pairs scored at each evaluation (0 = all)
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, warmup_steps=10, min_lr_ratio=0.1,
                                                                   weight_decay=0.0))


# ----------------------------------------------------------------------------------------------------------------
# 1. Preference pairs


@dataclass
class RewardPair:
    chosen: list[int]
    rejected: list[int]
    margin: float | None = None


def tokenize_reward_pairs(tokenizer, records: list[dict], max_len: int, pad_id: int, where: list[str] | None = None,
                          margin_column: str = "margin", chat_template: str | None = None):
    """Records -> RewardPairs (each side as `reward_input_ids`); returns (pairs, counts {"kept", "dropped"}, where the
    dropped ones came from). A pair with a side longer than max_len is dropped. A record that is not a valid pair
    (alignlab.data.preference.normalize_record) is an error naming it."""
    use_margin = bool(margin_column) and bool(records) and all(margin_column in r for r in records)
    pairs, dropped = [], []
    for i, r in enumerate(records):
        at = where[i] if where is not None else f"record {i}"
        r = normalize_record(r, at)  # validated (an error names the record and field), the prompt made explicit
        sides = [reward_input_ids(tokenizer, r.get("prompt"), r[k], pad_id, tools=r.get("tools"),
                                  chat_template=chat_template) for k in ("chosen", "rejected")]
        if max(len(s) for s in sides) > max_len:
            dropped.append(at)
            continue
        margin = None
        if use_margin:
            try:
                margin = float(r[margin_column])
            except (TypeError, ValueError):
                raise DataError(f"{at}: field '{margin_column}' must be a number, got {r[margin_column]!r}") from None
        pairs.append(RewardPair(sides[0], sides[1], margin))
    return pairs, {"kept": len(pairs), "dropped": len(dropped)}, dropped


def collate_reward_pairs(pairs: list[RewardPair], pad_id: int) -> dict:
    """[chosen_1..chosen_B; rejected_1..rejected_B] as one right-padded batch (+ margins [B] if the pairs have them)."""
    ids, mask = pad_right([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if pairs[0].margin is not None:
        batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return batch


class PairBatches(EpochSampler):
    """Shuffled epochs over the pairs (alignlab.data.sampler), `batch_size` pairs at a time; resumable, so a
    resumed run sees the batches an uninterrupted one would."""

    def __init__(self, pairs: list[RewardPair], batch_size: int, pad_id: int, seed: int):
        super().__init__(len(pairs), batch_size, seed, what="pairs")
        self.pairs, self.pad_id = pairs, pad_id

    def next_batch(self) -> dict:
        return collate_reward_pairs([self.pairs[i] for i in self.next_indices()], self.pad_id)


def count_pairs(batch: dict) -> int:
    """The Trainer's normaliser counts pairs: the loss is a mean over pairs (exact under accumulation)."""
    return batch["input_ids"].shape[0] // 2


# ----------------------------------------------------------------------------------------------------------------
# 3. The loss: objectives.preference.bradley_terry_loss, trl's metrics, one micro-batch


@torch.no_grad()
def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """trl's RewardTrainer metrics: accuracy (r_w > r_l; ties count as wrong), margin, mean/min/max_reward."""
    every = torch.cat([chosen_rewards, rejected_rewards]).float()
    return {"accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "margin": (chosen_rewards - rejected_rewards).float().mean().item(),
            "mean_reward": every.mean().item(), "min_reward": every.min().item(), "max_reward": every.max().item()}


def reward_step(model, batch: dict, normaliser: float, center_coefficient: float | None = None):
    """One micro-batch: rewards of its 2B rows in one forward, the Bradley-Terry loss, trl's metrics.

    The loss is a mean over this micro-batch's B pairs; times B / normaliser (the global count of pairs, see
    Trainer) it becomes the sum over pairs divided by the global count: the mean over the whole global batch."""
    rewards = model(batch["input_ids"], batch["attention_mask"])
    chosen, rejected = rewards.float().chunk(2)
    loss = bradley_terry_loss(chosen, rejected, batch.get("margin"), center_coefficient).loss
    return loss * (len(chosen) / normaliser), reward_metrics(chosen, rejected)


@torch.no_grad()
def evaluate_pairs(model, batches: list[dict], device, center_coefficient: float | None = None) -> dict[str, float]:
    """val_loss (the training loss on held-out pairs), val_accuracy, val_margin, val_{mean,min,max}_reward."""
    chosen, rejected, margins = [], [], []
    for b in batches:
        r = model(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu()
        chosen.append(r[:len(r) // 2])
        rejected.append(r[len(r) // 2:])
        if "margin" in b:
            margins.append(b["margin"])
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    margin = torch.cat(margins) if margins else None
    loss = bradley_terry_loss(chosen, rejected, margin, center_coefficient).loss.item()
    return {"val_loss": loss, **{f"val_{k}": v for k, v in reward_metrics(chosen, rejected).items()}}


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def run(cfg: RewardModelConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.model:
        raise ConfigError("model: the model directory whose backbone becomes the reward model is not set "
                         "(model=path/to/sft/model)")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)

    # 1. tokenizer and pairs
    model_dir = resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template  # a name becomes its text; saved with the model
    pad_id = reward_pad_id(tok)
    train_where = val_where = None
    read = {}  # what the loader read and dropped, per split
    if train_records is None:
        if not cfg.data:
            raise ConfigError("data: no preference pairs (data=pairs.jsonl or data=tinyworld:preferences)")
        loaded = load_preference_data(cfg.data, cfg.convert)  # invalid rows are dropped, counted and shown
        print(summarize(loaded, cfg.data))
        read["train"] = loaded.counts
        train_records, train_where = loaded.records, loaded.where
    if val_records is None and cfg.val_data:
        loaded = load_preference_data(cfg.val_data, cfg.convert)
        print(summarize(loaded, cfg.val_data))
        read["val"] = loaded.counts
        val_records, val_where = loaded.records, loaded.where
    val_records = val_records or []
    conversational = any(isinstance(r.get("chosen"), list) for r in train_records + val_records)
    if tok.chat_template is None and conversational:
        raise ConfigError(f"{cfg.model}: the tokenizer has no chat template, needed for conversational pairs; "
                         "set chat_template= (e.g. chatml)")
    margin = cfg.margin_column
    train, counts, dropped = tokenize_reward_pairs(tok, train_records, cfg.max_len, pad_id, train_where, margin)
    val, val_counts, _ = tokenize_reward_pairs(tok, val_records, cfg.max_len, pad_id, val_where, margin)
    with_margin = train and train[0].margin is not None
    print(f"reward-model data: {len(train_records):,} pairs ({'conversational' if conversational else 'standard'}"
          f"{', with margins' if with_margin else ''}): {counts['kept']:,} kept, {counts['dropped']} dropped (a side "
          f"longer than {cfg.max_len} tokens); {val_counts['kept']} held out ({val_counts['dropped']} dropped)")
    if dropped:
        print(f"reward-model data: dropped {', '.join(dropped[:5])}" +
              (f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""))

    # 2. the model: the backbone of `model` and a new scalar head
    set_seed(cfg.train.seed)
    model = RewardModel.from_causal_lm(model_dir, dtype=torch.float32)
    model.config.pad_token_id = pad_id  # saved in config.json: transformers finds the last token with it
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 3-4. train; evaluate on the held-out pairs
    held_out = val[:cfg.eval_pairs] if cfg.eval_pairs else val
    val_batches = [collate_reward_pairs(held_out[i:i + cfg.batch_size], pad_id)
                   for i in range(0, len(held_out), cfg.batch_size)]
    c = cfg.center_rewards_coefficient

    def evaluate(m) -> dict:
        return evaluate_pairs(m, val_batches, device, c)

    def loss_fn(m, batch, normaliser):
        return reward_step(m, batch, normaliser, c)

    before = {}
    if val_batches:
        model.to(device).eval()
        with autocast_for(cfg.train.dtype, device):  # the run's precision, as at every later evaluation
            before = evaluate(model)
        print(f"reward-model: before training, held-out accuracy {before['val_accuracy']:.1%}, "
              f"loss {before['val_loss']:.4f}")
    data = PairBatches(train, cfg.batch_size, pad_id, cfg.train.seed)
    mc = model.config  # the backbone's FLOPs without its (dropped) vocabulary head
    flops = mc.flops_per_token(cfg.max_len, training=True) - 3 * 2 * mc.vocab_size * mc.dim
    trainer = Trainer(cfg.train, model, data, loss_fn, out, evaluate=evaluate if val_batches else None,
                      run_config=asdict(cfg), flops_per_token=flops, weight_fn=count_pairs)
    result = trainer.fit(resume=resume)
    result["data"] = {"train": counts, "val": val_counts, "dropped": dropped, "margins": bool(with_margin),
                      "read": read}
    if before:
        result["before"] = before

    # 5. the model directory
    if result["status"] == "finished":
        meta = {"stage": "reward_model", "parent": cfg.model, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        result["model_dir"] = str(save_reward_model(unwrap(trainer.export_model()), out / "model", tokenizer=tok,
                                                    meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        shown = (f"held-out accuracy {before['val_accuracy']:.1%} -> {result['val_accuracy']:.1%}"
                 if before else "no held-out pairs")
        print(f"reward-model: {result['step']} steps ({result['train_seconds']:.0f} s), {shown}; "
              f"model: {result['model_dir']}")
    return result
