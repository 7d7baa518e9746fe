"""Preference optimisation: DPO and its family, from pairs of a preferred and a dispreferred answer.

    alignlab dpo --config configs/dpo/tinyworld.yaml [key=value ...] [--resume]

1. data       preference pairs in trl's formats (alignlab.data.preference): {"prompt", "chosen", "rejected"},
              conversational or standard, or implicit-prompt pairs; any file, hf:NAME or tinyworld:preferences;
              bad pairs (missing or empty answers, identical chosen and rejected) are counted and listed
2. model      the policy: a model directory (usually after SFT), all weights or LoRA adapters (method=lora)
3. reference  pi_ref, the policy at the start, three ways (`reference`):
                copy         a frozen copy of the model (twice the weights in memory)
                lora         the same model with its adapters disabled (method=lora; no second copy)
                precomputed  log pi_ref of every pair computed once before training and cached on disk
                             (<out_dir>/reference_logps.pt); no reference model during training
4. train      one batch = [chosen; rejected] rows; per-sequence log-probs summed over completion tokens
              (objectives.linear_sequence_logps); loss by name (`loss`): sigmoid (DPO), hinge, ipo, robust
              (cDPO), simpo, orpo, safedpo (objectives/preference.py has each formula and paper); the mean over
              the global batch of pairs
5. evaluate   on held-out pairs: trl's metrics (rewards/chosen, rewards/rejected, rewards/accuracies,
              rewards/margins, logps/chosen, logps/rejected); a warning when the chosen and the rejected
              log-probs both fall (likelihood displacement)
6. save       <out_dir>/model (LoRA: adapter/ and the merged model), result.json
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.sampler import EpochSampler
from alignlab.lora import apply_lora, disable_lora, merge_and_unload, save_adapter
from alignlab.model.hf import load_model, resolve_model_dir, save_model
from alignlab.objectives.preference import (
    dpo_loss,
    linear_sequence_logps,
    orpo_loss,
    preference_metrics,
    safedpo_loss,
    simpo_loss,
)
from alignlab.recipes.sft import LoraOptions
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, Trainer, resolve_device, set_seed, unwrap

LOSSES = ("sigmoid", "hinge", "ipo", "robust", "simpo", "orpo", "safedpo")
REFERENCE_FREE = ("simpo", "orpo")
REFERENCES = ("auto", "copy", "lora", "precomputed")


@dataclass
class DPOConfig:
    out_dir: str = "runs/dpo"
    model: str = ""  # the policy's starting point (a model directory, usually after SFT)
    data: str = ""  # preference pairs (see alignlab.data.preference)
    val_data: str = ""  # held-out pairs: the metrics and the implicit reward's accuracy
    convert: str = ""  # e.g. hh-rlhf
    loss: str = "sigmoid"  # sigmoid | hinge | ipo | robust | simpo | orpo | safedpo
    beta: float = 0.1
    label_smoothing: float = 0.0  # robust (cDPO): the assumed fraction of flipped labels
    simpo_gamma: float = 0.5
    safety_margin: float = 10.0  # safedpo's delta
    rpo_alpha: float = 0.0  # > 0 adds rpo_alpha * (the chosen answer's per-token NLL) to a DPO-family loss (RPO)
    reference: str = "auto"  # auto (lora if method=lora, else copy) | copy | lora | precomputed
    method: str = "full"  # full | lora
    lora: LoraOptions = field(default_factory=LoraOptions)
    max_len: int = 512  # prompt + answer tokens
    max_prompt_len: int = 256
    batch_size: int = 8  # pairs per micro-batch
    eval_batches: int = 8
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, warmup_steps=10, min_lr_ratio=0.1))


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen logps, rejected logps, chosen lengths, rejected lengths) of a [chosen; rejected] batch."""
    hidden = model(batch["input_ids"], head=False)
    logps, n = linear_sequence_logps(hidden, unwrap(model).lm_head.weight, batch["labels"])
    b = logps.shape[0] // 2
    return logps[:b], logps[b:], n[:b], n[b:]


class Reference:
    """log pi_ref of a batch, from a frozen copy, from the policy with its adapters disabled, or from a cache."""

    def __init__(self, kind: str, model):
        self.kind = kind
        self.copy = copy.deepcopy(model).eval().requires_grad_(False) if kind == "copy" else None

    @torch.no_grad()
    def logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "precomputed":
            return batch["ref_chosen"], batch["ref_rejected"]
        if self.kind == "copy":
            chosen, rejected, _, _ = pair_logps(self.copy, batch)
            return chosen, rejected
        was_training = model.training
        model.eval()  # no dropout in the reference
        with disable_lora(unwrap(model)):
            chosen, rejected, _, _ = pair_logps(model, batch)
        model.train(was_training)
        return chosen, rejected


def preference_step(cfg: DPOConfig, reference: Reference | None):
    """The loss_fn of the Trainer: the batch's summed per-pair losses over the global count of pairs."""

    def step(model, batch: dict, normaliser: float):
        chosen, rejected, n_chosen, n_rejected = pair_logps(model, batch)
        if cfg.loss in REFERENCE_FREE:
            ref_chosen = ref_rejected = None
        else:
            ref_chosen, ref_rejected = reference.logps(model, batch)
        if cfg.loss == "simpo":
            losses, r_c, r_r = simpo_loss(chosen, rejected, n_chosen, n_rejected, cfg.beta, cfg.simpo_gamma,
                                          cfg.label_smoothing)
        elif cfg.loss == "orpo":
            nll = -chosen / n_chosen.clamp(min=1)  # the SFT term on the chosen answer, per token
            losses, r_c, r_r, _ = orpo_loss(chosen, rejected, n_chosen, n_rejected, cfg.beta, nll=nll)
        elif cfg.loss == "safedpo":
            losses, r_c, r_r, _ = safedpo_loss(chosen, rejected, ref_chosen, ref_rejected,
                                               batch.get("chosen_unsafe"), batch.get("rejected_unsafe"),
                                               cfg.beta, cfg.safety_margin)
        else:
            losses, r_c, r_r = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss,
                                        cfg.label_smoothing, n_chosen, n_rejected)
        if cfg.rpo_alpha and cfg.loss != "orpo":  # RPO (Pang et al. 2024, arXiv:2404.19733): keep the chosen likely
            losses = losses + cfg.rpo_alpha * (-chosen / n_chosen.clamp(min=1))
        return losses.sum() / normaliser, preference_metrics(r_c, r_r, chosen.detach(), rejected.detach())

    return step


def count_pairs(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def reference_cache_key(model_dir: Path, examples) -> str:
    """What the cached reference log-probs depend on: the model's weights file and the tokenised pairs."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        h.update(str(f.stat().st_mtime_ns).encode())
    for e in examples:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


class PairBatches(EpochSampler):
    """Shuffled epochs over the pairs (alignlab.data.sampler), `batch_size` pairs at a time, as [chosen; rejected]
    rows. Extra per-pair tensors (cached reference log-probs, safety labels) ride along. Resumable."""

    def __init__(self, examples: list, extras: dict[str, torch.Tensor], batch_size: int, pad_id: int, seed: int):
        super().__init__(len(examples), batch_size, seed, what="pairs")
        self.examples, self.extras, self.pad_id = examples, extras, pad_id

    def next_batch(self) -> dict:
        return make_batch(self.examples, self.extras, self.next_indices(), self.pad_id)


def make_batch(examples: list, extras: dict[str, torch.Tensor], idx: list[int], pad_id: int) -> dict:
    from alignlab.data.preference import collate_pairs

    batch = collate_pairs([examples[i] for i in idx], pad_id)
    batch.pop("attention_mask", None)
    batch.pop("lengths", None)
    batch.update({k: v[idx] for k, v in extras.items()})
    return batch


def run(cfg: DPOConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    from alignlab.data.preference import load_preference_data, summarize, tokenize_pairs

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for name, value, allowed in (("loss", cfg.loss, LOSSES), ("reference", cfg.reference, REFERENCES),
                                 ("method", cfg.method, ("full", "lora"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not cfg.model:
        raise ValueError("model: the model directory to start from is not set (model=path/to/model)")
    reference = cfg.reference if cfg.reference != "auto" else ("lora" if cfg.method == "lora" else "copy")
    if reference == "lora" and cfg.method != "lora":
        raise ValueError("reference=lora needs method=lora: the reference is the model with its adapters disabled")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)
    model_dir = resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)

    # 1. data: validated pairs, tokenised; every drop counted and located
    def pairs(source: str, records: list[dict] | None):
        where = None
        if records is None:
            data = load_preference_data(source, cfg.convert)
            print(summarize(data, source))
            records, where = data.records, data.where
        where = where or [f"pair {i}" for i in range(len(records))]
        toks = tokenize_pairs(tok, records, cfg.max_len, cfg.max_prompt_len, where=where)
        lost = {w for w, _ in toks.dropped}
        kept = [r for r, w in zip(records, where, strict=True) if w not in lost]
        unsafe = {side: torch.tensor([bool(r.get(f"{side}_unsafe", False)) for r in kept])
                  for side in ("chosen", "rejected")}
        return toks, unsafe

    train, train_unsafe = pairs(cfg.data, train_records)
    has_val = bool(val_records) if val_records is not None else bool(cfg.val_data)
    val, val_unsafe = pairs(cfg.val_data, val_records) if has_val else (None, None)
    print(f"dpo data: {train.counts['kept']:,} pairs kept, {train.counts['truncated']} truncated, "
          f"{sum(train.counts['dropped'].values())} dropped {dict(train.counts['dropped']) or ''}".rstrip()
          + (f"; {val.counts['kept']} held out" if val else ""))
    if not train.examples:
        raise ValueError(f"{cfg.data or 'data'}: no usable preference pair")

    # 2-3. the policy and the reference
    set_seed(cfg.train.seed)
    model = load_model(model_dir, dtype=torch.float32)
    if cfg.method == "lora":
        apply_lora(model, cfg.lora.to_config())
    model.to(device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_ids or [0])[0]
    extras = {"chosen_unsafe": train_unsafe["chosen"], "rejected_unsafe": train_unsafe["rejected"]}
    val_extras = {"chosen_unsafe": val_unsafe["chosen"], "rejected_unsafe": val_unsafe["rejected"]} if val else {}
    ref = None if cfg.loss in REFERENCE_FREE else Reference(reference, model)
    if reference == "precomputed" and ref is not None:
        extras.update(precompute_reference(model, train.examples, pad_id, cfg, out / "reference_logps.pt", model_dir))
        if val:
            val_extras.update(precompute_reference(model, val.examples, pad_id, cfg,
                                                   out / "reference_logps_val.pt", model_dir))
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 4-5. train; evaluate the implicit reward on held-out pairs
    step = preference_step(cfg, ref)
    val_batches = [make_batch(val.examples, val_extras, list(range(i, min(i + cfg.batch_size, len(val.examples)))),
                              pad_id)
                   for i in range(0, min(len(val.examples), cfg.eval_batches * cfg.batch_size), cfg.batch_size)] \
        if val else []
    first: dict = {}

    def evaluate(m) -> dict:
        sums: dict[str, float] = {}
        for b in val_batches:
            b = {k: v.to(device) for k, v in b.items()}
            loss, metrics = step(m, b, float(count_pairs(b)))
            for k, v in {"val_loss": float(loss), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v / len(val_batches)
        if not first:
            first.update(sums)
        elif (sums["logps/chosen"] < first["logps/chosen"] - 1.0
              and sums["logps/rejected"] < first["logps/rejected"] - 1.0 and not first.get("warned")):
            first["warned"] = True
            print(f"warning: likelihood displacement: the held-out chosen and rejected log-probs both fell "
                  f"({first['logps/chosen']:.2f} -> {sums['logps/chosen']:.2f}, {first['logps/rejected']:.2f} -> "
                  f"{sums['logps/rejected']:.2f}); DPO only widens their gap, and probability mass is going to "
                  "answers in neither set (lower the learning rate or beta, or add an SFT term: loss=orpo)")
        return {("val/" + k if k != "val_loss" else k): v for k, v in sums.items()}

    data = PairBatches(train.examples, extras, cfg.batch_size, pad_id, cfg.train.seed)
    weight = count_kept_pairs if cfg.loss == "safedpo" else count_pairs
    trainer = Trainer(cfg.train, model, data, step, out, evaluate=evaluate if val_batches else None,
                      weight_fn=weight, run_config=asdict(cfg))
    if val_batches:  # the starting point of the metrics: the policy equals the reference
        model.eval()
        with torch.no_grad():
            start = evaluate(model)
        model.train()
        print("at the start: " + ", ".join(f"{k} {v:.4f}" for k, v in start.items()))
    result = trainer.fit(resume=resume)
    result["data"] = {"train": train.counts, "val": val.counts if val else None}

    # 6. the model directory
    if result["status"] == "finished":
        final = trainer.export_model()
        meta = {"stage": "dpo", "parent": cfg.model, "config": asdict(cfg),
                "metrics": {k: v for k, v in result.items() if k != "last_checkpoint"}}
        if cfg.method == "lora":
            result["adapter_dir"] = str(save_adapter(final, out / "adapter", final.lora_config,
                                                     base_model_name_or_path=cfg.model))
            final = merge_and_unload(final)
        result["model_dir"] = str(save_model(final, out / "model", tokenizer=tok, meta=meta))
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        shown = {k: result[k] for k in ("val_loss", "val/rewards/accuracies", "val/rewards/margins") if k in result}
        print(f"dpo ({cfg.loss}): {result['step']} steps ({result['train_seconds']:.0f} s); "
              + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) + f"; model: {result['model_dir']}")
    return result


def count_kept_pairs(batch: dict) -> int:
    """SafeDPO drops pairs whose two answers are both unsafe; its mean is over the pairs it keeps."""
    both = batch["chosen_unsafe"] & batch["rejected_unsafe"]
    return int((~both).sum())


@torch.no_grad()
def precompute_reference(model, examples: list, pad_id: int, cfg: DPOConfig, path: Path, model_dir: Path) -> dict:
    """log pi_ref of every pair, computed once with the starting model and cached at `path` (reused while the
    model's weights and the pairs are the same)."""
    key = reference_cache_key(model_dir, [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples])
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            print(f"reference log-probs: reused {path}")
            return {"ref_chosen": cached["ref_chosen"], "ref_rejected": cached["ref_rejected"]}
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    device = next(model.parameters()).device
    for i in range(0, len(examples), cfg.batch_size):
        batch = make_batch(examples, {}, list(range(i, min(i + cfg.batch_size, len(examples)))), pad_id)
        c, r, _, _ = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    model.train(was_training)
    result = {"ref_chosen": torch.cat(chosen), "ref_rejected": torch.cat(rejected)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, **result}, tmp)
    tmp.replace(path)
    print(f"reference log-probs: {len(examples):,} pairs computed once, cached in {path}")
    return result
