"""Preference optimisation: DPO and its family, from pairs of a preferred and a dispreferred answer; KTO from
unpaired answers labelled desirable or undesirable.

    alignlab dpo --config configs/dpo/tinyworld.yaml [key=value ...] [--resume]
    alignlab dpo --config configs/dpo/tinyworld.yaml loss=kto [desirable_weight=1.0 undesirable_weight=1.0]

1. data       preference pairs in trl's formats (alignlab.data.preference): {"prompt", "chosen", "rejected"},
              conversational or standard, or implicit-prompt pairs; any file, hf:NAME or tinyworld:preferences;
              bad pairs (missing or empty answers, identical chosen and rejected) are counted and listed.
              SafeDPO reads each pair's safety labels "chosen_unsafe" / "rejected_unsafe" (true/false, 1/0,
              yes/no; absent: safe), and warns when the data have none (SafeDPO is then DPO).
              loss=kto takes unpaired records {"prompt", "completion", "label"} as they are and unpairs pairs
              (chosen: desirable, rejected: undesirable), as trl does; unpaired data needs loss=kto
2. model      the policy: a model directory (usually after SFT), all weights or LoRA adapters (method=lora)
3. reference  pi_ref, the policy at the start, three ways (`reference`):
                copy         a frozen copy of the model (twice the weights in memory)
                lora         the same model with its adapters disabled (method=lora; no second copy)
                precomputed  log pi_ref of every pair (KTO: example and its KL row) computed once before
                             training and cached on disk (<out_dir>/reference_logps.pt); no reference model
                             during training
              copy and lora are alignlab.train.reference.Reference; the cache is this recipe's
4. train      one batch = [chosen; rejected] rows; per-sequence log-probs summed over completion tokens
              (objectives.linear_sequence_logps); loss by name (`loss`): sigmoid (DPO; with label_smoothing,
              cDPO), hinge, ipo, robust (robust DPO), simpo, orpo, safedpo (objectives/preference.py has each
              formula and paper); the mean over the global batch of pairs (SafeDPO: of the pairs it keeps).
              rpo_alpha adds the winning answer's per-token NLL (RPO). kto: [completion; KL] rows, the KL row
              being the example's prompt with another example's completion (kto_examples); KTO's loss against
              the reference point z estimated from the KL rows; the mean over the global batch of examples
5. evaluate   on held-out pairs: trl's metrics (rewards/chosen, rewards/rejected, rewards/accuracies,
              rewards/margins, logps/chosen, logps/rejected; SafeDPO: of its kept pairs after the swap; KTO:
              chosen = desirable, rejected = undesirable, no accuracies, and kl = z); a warning when the chosen
              and the rejected log-probs both fall (likelihood displacement); each pair counts once, however the
              batches fall
6. save       <out_dir>/model (LoRA: adapter/ and the merged model), result.json
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignlab.data.errors import DataError
from alignlab.data.preference import (
    KTOExample,
    PairBatches,
    UnpairedBatches,
    is_unpaired,
    kto_examples,
    load_preference_data,
    make_batch,
    normalize_record,
    summarize,
    tokenize_pairs,
    tokenize_unpaired,
    unpair,
    unsafe_label,
)
from alignlab.errors import ConfigError
from alignlab.lora import LoraOptions, apply_lora, merge_and_unload, save_adapter
from alignlab.model.hf import load_model, resolve_model_dir, save_model
from alignlab.model.precision import resolve_precision
from alignlab.objectives.preference import (
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    kto_metrics,
    orpo_loss,
    pair_logps,
    preference_metrics,
    row_logps,
    safedpo_loss,
    simpo_loss,
)
from alignlab.text import load_tokenizer
from alignlab.train.reference import Reference
from alignlab.train.trainer import TrainConfig, Trainer, autocast_for, resolve_device, set_seed

LOSSES = ("sigmoid", "hinge", "ipo", "robust", "simpo", "orpo", "safedpo", "kto")
REFERENCE_FREE = ("simpo", "orpo")
REFERENCES = ("auto", "copy", "lora", "precomputed")
REF_KEYS = {"pairs": ("ref_chosen", "ref_rejected"), "kto": ("ref_logps", "ref_KL_logps")}  # cached, per half
SIDES = ("chosen", "rejected")


@dataclass
class DPOConfig:
    out_dir: str = "runs/dpo"
    model: str = ""  # the policy's starting point (a model directory, usually after SFT)
    data: str = ""  # preference pairs, or unpaired records for kto (see alignlab.data.preference)
    val_data: str = ""  # held-out pairs: the metrics and the implicit reward's accuracy
    convert: str = ""  # e.g. hh_rlhf
    loss: str = "sigmoid"  # sigmoid | hinge | ipo | robust | simpo | orpo | safedpo | kto
    beta: float = 0.1
    desirable_weight: float = 1.0  # kto's lambda_D
    undesirable_weight: float = 1.0  # kto's lambda_U (trl: lambda_D n_D / (lambda_U n_U) in [1, 4/3])
    label_smoothing: float = 0.0  # cDPO (sigmoid), robust DPO and SimPO: the assumed fraction of flipped labels
    simpo_gamma: float = 0.5
    safety_margin: float = 10.0  # safedpo's delta
    rpo_alpha: float = 0.0  # > 0 adds rpo_alpha * (the winning answer's per-token NLL) to a DPO-family loss (RPO)
    reference: str = "auto"  # auto (lora if method=lora, else copy) | copy | lora | precomputed
    method: str = "full"  # full | lora
    lora: LoraOptions = field(default_factory=LoraOptions)
    max_len: int = 512  # prompt + answer tokens
    max_prompt_len: int = 256
    batch_size: int = 8  # pairs (kto: examples) per micro-batch
    eval_batches: int = 8
    threads: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6, warmup_steps=10, min_lr_ratio=0.1))


# ----------------------------------------------------------------------------------------------------------------
# Log-probs of the policy and of the reference


def reference_logps(reference: Reference | None, policy, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of both halves of a batch: run by the reference model, or, with none (reference=precomputed),
    read from the cached columns the batch carries."""
    if reference is None:
        first, second = REF_KEYS["kto" if "label" in batch else "pairs"]
        return batch[first], batch[second]
    with reference.model(policy) as ref:
        first, second, _, _ = pair_logps(ref, batch)
    return first, second


# ----------------------------------------------------------------------------------------------------------------
# One step


def preference_step(cfg: DPOConfig, reference: Reference | None):
    """The loss_fn of the Trainer: the batch's summed per-pair losses over the global count of pairs.

    reference: pi_ref as a model, or None where the batch carries it (reference=precomputed) or the loss needs
    none (simpo, orpo)."""
    if cfg.loss == "kto":
        return kto_step(cfg, reference)

    def step(model, batch: dict, normaliser: float):
        # 1. log pi and log pi_ref of each chosen and rejected answer, summed over its tokens
        chosen, rejected, n_chosen, n_rejected = pair_logps(model, batch)
        ref_chosen, ref_rejected = (None, None) if cfg.loss in REFERENCE_FREE else \
            reference_logps(reference, model, batch)
        # 2. the loss of each pair, one PreferenceLoss whatever the variant
        if cfg.loss == "simpo":
            out = simpo_loss(chosen, rejected, n_chosen, n_rejected, cfg.beta, cfg.simpo_gamma, cfg.label_smoothing)
        elif cfg.loss == "orpo":  # (its SFT term is the chosen answer's per-token NLL)
            out = orpo_loss(chosen, rejected, n_chosen, n_rejected, cfg.beta)
        elif cfg.loss == "safedpo":
            out = safedpo_loss(chosen, rejected, ref_chosen, ref_rejected, batch.get("chosen_unsafe"),
                               batch.get("rejected_unsafe"), cfg.beta, cfg.safety_margin)
        else:
            out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss, cfg.label_smoothing,
                           n_chosen, n_rejected)
        # 3. the pairs as the loss ranked them: SafeDPO swaps a pair whose chosen answer is the unsafe one and
        #    drops a pair of two unsafe answers; every other loss keeps each pair as it is
        swapped = out.metrics.get("swapped", torch.zeros_like(n_chosen, dtype=torch.bool))
        kept = out.metrics.get("kept", torch.ones_like(n_chosen, dtype=torch.bool))
        win, lose = torch.where(swapped, rejected, chosen), torch.where(swapped, chosen, rejected)
        n_win = torch.where(swapped, n_rejected, n_chosen)
        # 4. RPO (Pang et al. 2024, arXiv:2404.19733): keep the winner likely, by its per-token NLL
        losses = out.losses
        if cfg.rpo_alpha and cfg.loss != "orpo":  # (ORPO has its own)
            losses = losses + cfg.rpo_alpha * torch.where(kept, -win / n_win.clamp(min=1), 0.0)
        # 5. trl's metrics of the pairs the loss trains on
        metrics = preference_metrics(out.chosen_rewards[kept], out.rejected_rewards[kept], win.detach()[kept],
                                     lose.detach()[kept]) if kept.any() else {}
        return losses.sum() / normaliser, metrics

    return step


def kto_step(cfg: DPOConfig, reference: Reference | None):
    """KTO's loss_fn: the batch's summed per-example losses over the global count of examples. The reference
    point z comes from the KL rows of the micro-batch (trl also averages it over processes); being detached, the
    policy's KL rows need no gradient."""

    def step(model, batch: dict, normaliser: float):
        b = batch["label"].shape[0]
        logps, _ = row_logps(model, batch["input_ids"][:b], batch["labels"][:b])
        with torch.no_grad():
            kl_logps, _ = row_logps(model, batch["input_ids"][b:], batch["labels"][b:])
        ref_logps, ref_kl_logps = reference_logps(reference, model, batch)
        z = kto_kl_estimate(kl_logps, ref_kl_logps)
        out = kto_loss(logps, ref_logps, batch["label"], z, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        return out.losses.sum() / normaliser, kto_metrics(out, logps.detach(), batch["label"])

    return step


# ----------------------------------------------------------------------------------------------------------------
# What a batch's loss and metrics are means of


def count_pairs(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def count_kept_pairs(batch: dict) -> int:
    """SafeDPO drops pairs whose two answers are both unsafe; its mean is over the pairs it keeps."""
    both = batch["chosen_unsafe"] & batch["rejected_unsafe"]
    return int((~both).sum())


def count_examples(batch: dict) -> int:
    return batch["label"].shape[0]


def count_fn(loss: str):
    """The Trainer's weight_fn: what the mean loss of a batch is over."""
    return count_examples if loss == "kto" else count_kept_pairs if loss == "safedpo" else count_pairs


def metric_count(name: str, batch: dict, loss: str) -> int:
    """How many items a batch's metric `name` is the mean of: its pairs (SafeDPO: the kept ones); for KTO, its
    desirable examples (*/chosen), its undesirable ones (*/rejected) or all of them (kl)."""
    if loss != "kto":
        return count_fn(loss)(batch)
    label = batch["label"].bool()
    if name.endswith("/chosen"):
        return int(label.sum())
    if name.endswith("/rejected"):
        return int((~label).sum())
    return count_examples(batch)


# ----------------------------------------------------------------------------------------------------------------
# Data: tokenised pairs (KTO: examples with their KL rows) and their batches


def pair_data(tok, records: list[dict], where: list[str], cfg: DPOConfig, source: str):
    """Pairs -> (tokens and counts, examples, extras: SafeDPO's safety labels of each kept pair)."""
    if any(is_unpaired(r) for r in records):
        raise ConfigError(f"{source or 'records'}: unpaired records (prompt, completion, label): KTO is the loss for "
                          f"unpaired data (loss=kto), loss={cfg.loss} needs pairs (prompt, chosen, rejected)")
    toks = tokenize_pairs(tok, records, cfg.max_len, cfg.max_prompt_len, where=where)
    if cfg.loss != "safedpo":
        return toks, toks.examples, {}
    lost = {w for w, _ in toks.dropped}
    kept = [(r, w) for r, w in zip(records, where, strict=True) if w not in lost]
    if not any(r.get(f"{side}_unsafe") is not None for r, _ in kept for side in SIDES):
        print(f"warning: loss=safedpo, but no pair of {source or 'the records'} has a safety label (chosen_unsafe, "
              "rejected_unsafe): every answer counts as safe, and SafeDPO is plain DPO")
    unsafe = {f"{side}_unsafe": torch.tensor([unsafe_label(r, side, w) for r, w in kept], dtype=torch.bool)
              for side in SIDES}
    return toks, toks.examples, unsafe


def kto_data(tok, records: list[dict], where: list[str], cfg: DPOConfig, source: str):
    """KTO's data -> (tokens and counts, KTOExamples, no extras): unpaired records as they are, each pair as two
    (chosen: desirable, rejected: undesirable), as trl does."""
    unpaired, at = [], []
    for r, w in zip(records, where, strict=True):
        if is_unpaired(r):
            unpaired.append(r)
            at.append(w)
        else:
            unpaired += unpair(normalize_record(r, w))
            at += [f"{w} (chosen)", f"{w} (rejected)"]
    toks = tokenize_unpaired(tok, unpaired, cfg.max_len, cfg.max_prompt_len, where=at)
    return toks, kto_examples(toks.examples, cfg.max_len), {}


# ----------------------------------------------------------------------------------------------------------------
# The precomputed reference: log pi_ref of every pair, once, cached on disk


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


@torch.no_grad()
def precompute_reference(model, examples: list, pad_id: int, cfg: DPOConfig, path: Path, model_dir: Path) -> dict:
    """log pi_ref of every pair (of every KTO example and its KL row), computed once with the starting model and
    cached at `path` (reused while the model's weights and the examples are the same)."""
    kto = bool(examples) and isinstance(examples[0], KTOExample)
    keys = REF_KEYS["kto" if kto else "pairs"]
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.train.dtype, device)  # the run's: the policy's log-probs are computed alike
    key = reference_cache_key(model_dir, [(e.example.sequence(), e.kl.sequence()) if kto
                                          else (e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples])
    key += f"-{precision.name}"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            print(f"reference log-probs: reused {path}")
            return {k: cached[k] for k in keys}
    was_training = model.training
    model.eval()
    halves: tuple[list, list] = ([], [])
    for i in range(0, len(examples), cfg.batch_size):
        batch = make_batch(examples, {}, list(range(i, min(i + cfg.batch_size, len(examples)))), pad_id)
        with autocast_for(precision, device):
            first, second, _, _ = pair_logps(model, {k: v.to(device) for k, v in batch.items()})
        halves[0].append(first.float().cpu())
        halves[1].append(second.float().cpu())
    model.train(was_training)
    result = {k: torch.cat(h) for k, h in zip(keys, halves, strict=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, **result}, tmp)
    tmp.replace(path)
    print(f"reference log-probs: {len(examples):,} {'examples' if kto else 'pairs'} computed once, cached in {path}")
    return result


# ----------------------------------------------------------------------------------------------------------------
# The recipe


def run(cfg: DPOConfig, resume: bool = False, train_records: list[dict] | None = None,
        val_records: list[dict] | None = None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for name, value, allowed in (("loss", cfg.loss, LOSSES), ("reference", cfg.reference, REFERENCES),
                                 ("method", cfg.method, ("full", "lora"))):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if not cfg.model:
        raise ConfigError("model: the model directory to start from is not set (model=path/to/model)")
    if cfg.rpo_alpha and cfg.loss == "kto":
        raise ConfigError("rpo_alpha adds the chosen answer's NLL to a pairwise loss; KTO has no pairs (rpo_alpha=0)")
    reference = cfg.reference if cfg.reference != "auto" else ("lora" if cfg.method == "lora" else "copy")
    if reference == "lora" and cfg.method != "lora":
        raise ConfigError("reference=lora needs method=lora: the reference is the model with its adapters disabled")
    device = resolve_device(cfg.train.device)
    out = Path(cfg.out_dir)
    model_dir = resolve_model_dir(cfg.model)
    tok = load_tokenizer(model_dir)

    # 1. data: validated pairs (kto: unpaired examples), tokenised; every drop counted and located
    def load(source: str, records: list[dict] | None):
        where = None
        if records is None:
            data = load_preference_data(source, cfg.convert)
            print(summarize(data, source))
            records, where = data.records, data.where
        where = where or [f"record {i}" for i in range(len(records))]
        return (kto_data if cfg.loss == "kto" else pair_data)(tok, records, where, cfg, source)

    train, examples, extras = load(cfg.data, train_records)
    has_val = bool(val_records) if val_records is not None else bool(cfg.val_data)
    val, val_examples, val_extras = load(cfg.val_data, val_records) if has_val else (None, [], {})
    c, unit = train.counts, "examples" if cfg.loss == "kto" else "pairs"
    labels = f" ({c['desirable']:,} desirable, {c['undesirable']:,} undesirable)" if cfg.loss == "kto" else ""
    print(f"dpo data: {c['kept']:,} {unit} kept{labels}, {c['truncated']} truncated, "
          f"{sum(c['dropped'].values())} dropped {dict(c['dropped']) or ''}".rstrip()
          + (f"; {val.counts['kept']} held out" if val else ""))
    if not examples:
        raise DataError(f"{cfg.data or 'data'}: no usable preference {unit[:-1]}")

    # 2-3. the policy and the reference
    set_seed(cfg.train.seed)
    model = load_model(model_dir, dtype=torch.float32)
    if cfg.method == "lora":
        apply_lora(model, cfg.lora.to_config())
    model.to(device)
    pad_id = tok.padding_id
    ref = Reference(reference, model) if cfg.loss not in REFERENCE_FREE and reference != "precomputed" else None
    if reference == "precomputed" and cfg.loss not in REFERENCE_FREE:
        extras.update(precompute_reference(model, examples, pad_id, cfg, out / "reference_logps.pt", model_dir))
        if val:
            val_extras.update(precompute_reference(model, val_examples, pad_id, cfg,
                                                   out / "reference_logps_val.pt", model_dir))
    out.mkdir(parents=True, exist_ok=True)
    from alignlab.config import save_config

    save_config(cfg, out / "config.yaml")

    # 4-5. train; evaluate the implicit reward on held-out pairs
    step = preference_step(cfg, ref)
    weight = count_fn(cfg.loss)
    val_batches = [make_batch(val_examples, val_extras, list(range(i, min(i + cfg.batch_size, len(val_examples)))),
                              pad_id)
                   for i in range(0, min(len(val_examples), cfg.eval_batches * cfg.batch_size), cfg.batch_size)]
    first: dict = {}

    def evaluate(m) -> dict:
        """Held-out loss and metrics with every pair (KTO: example) counted once: each batch's means are weighted
        by how many pairs or examples they average over, so a short last batch weighs what it holds."""
        loss_sum, loss_count = 0.0, 0
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # (a KTO batch may hold no desirable or no undesirable example)
        for b in val_batches:
            b = {k: v.to(device) for k, v in b.items()}
            loss, metrics = step(m, b, 1.0)  # the batch's summed loss
            loss_sum, loss_count = loss_sum + float(loss), loss_count + weight(b)
            for k, v in metrics.items():
                n = metric_count(k, b, cfg.loss)
                sums[k], counts[k] = sums.get(k, 0.0) + v * n, counts.get(k, 0) + n
        sums = {k: v / counts[k] for k, v in sums.items() if counts[k]}
        if cfg.loss == "kto" and "rewards/chosen" in sums and "rewards/rejected" in sums:
            sums["rewards/margins"] = sums["rewards/chosen"] - sums["rewards/rejected"]
        if loss_count:  # (SafeDPO: none if it dropped every held-out pair)
            sums["val_loss"] = loss_sum / loss_count
        logps = ("logps/chosen", "logps/rejected")
        if not first:
            first.update(sums)
        elif (all(k in sums and k in first and sums[k] < first[k] - 1.0 for k in logps)
              and not first.get("warned")):
            first["warned"] = True
            print(f"warning: likelihood displacement: the held-out chosen and rejected log-probs both fell "
                  f"({first['logps/chosen']:.2f} -> {sums['logps/chosen']:.2f}, {first['logps/rejected']:.2f} -> "
                  f"{sums['logps/rejected']:.2f}); DPO only widens their gap, and probability mass is going to "
                  "answers in neither set (lower the learning rate, raise beta, or add an SFT term: rpo_alpha=1.0 or "
                  "loss=orpo)")
        return {("val/" + k if k != "val_loss" else k): v for k, v in sums.items()}

    batches = UnpairedBatches if cfg.loss == "kto" else PairBatches
    data = batches(examples, extras, cfg.batch_size, pad_id, cfg.train.seed)
    trainer = Trainer(cfg.train, model, data, step, out, evaluate=evaluate if val_batches else None,
                      weight_fn=weight, run_config=asdict(cfg))
    if val_batches:  # the starting point of the metrics: the policy equals the reference
        model.eval()
        with torch.no_grad(), trainer.autocast:
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
        shown = {k: result[k] for k in ("val_loss", "val/rewards/accuracies", "val/rewards/margins", "val/kl")
                 if k in result}
        print(f"dpo ({cfg.loss}): {result['step']} steps ({result['train_seconds']:.0f} s); "
              + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) + f"; model: {result['model_dir']}")
    return result
