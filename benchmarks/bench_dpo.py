"""DPO step throughput: alignlab's DPO recipe vs trl's DPOTrainer, same random Llama, same pairs, fp32 and bf16.

    OMP_NUM_THREADS=2 python benchmarks/bench_dpo.py [--dtype fp32,bf16] [--steps 30] [--batch 4] [--pairs 512]
                                                     [--max-len 512] [--quick]

What is compared. The first --pairs rows of ../shared/data/preferences/hh_rlhf_harmless_base_test.jsonl
(--data), read in place with alignlab.data.preference.load_preference_data(convert="hh_rlhf"): conversational
pairs {"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}. A byte-level BPE with 8192 ids
(alignlab.text.train_bpe on the pairs' text, ChatML template, eos <|im_end|>, pad <|pad|>) and a random Llama
(transformers' LlamaConfig with MODELS["5M"] of bench_generate.py, seed 0) are saved to one directory that both
sides load: trl through AutoTokenizer / LlamaForCausalLM.from_pretrained, alignlab through its own loaders.
Four runs of --steps optimizer steps of --batch pairs on CPU, sigmoid (DPO) loss, beta 0.1, at each dtype of --dtype:

    trl live              DPOTrainer(ref_model=None): trl loads a second copy of the model as the reference
    trl precomputed       DPOTrainer(precompute_ref_log_probs=True): one pass over the data before training
    alignlab copy         alignlab.recipes.dpo.run(reference="copy"): a frozen deep copy of the policy
    alignlab precomputed  alignlab.recipes.dpo.run(reference="precomputed"): one pass before training, cached

Fairness. Every pair is tokenised by both sides and checked to give the same prompt, chosen and rejected ids
(trl's tokenised dataset vs alignlab.data.preference.tokenize_pairs; with ChatML both train each reply, its
<|im_end|> and the newline after it, and neither adds an extra eos to conversational data). Truncation differs by
default: trl cuts prompt + completion to max_length from the start (keep_start), alignlab cuts a prompt longer than
max_prompt_len from its end, then the completions; alignlab runs with max_prompt_len = max_len, which makes the
two the same (a prompt that fills max_len is dropped by both); the pairs alignlab drops are left out on both sides
before the runs. Same hyperparameters: AdamW (lr 1e-6, betas 0.9/0.999, eps 1e-8, weight decay 0), constant
schedule with no warm-up, gradient clipping at 1.0, seed 0. trl's gradient checkpointing (on by default in
DPOConfig) is turned off; its other defaults stay (its fused LM head, dropout disabled). trl's console printing
callbacks are removed. Each run waits (up to 60 s) for the CPUs to be idle before it starts.

Dtypes. --dtype (default: fp32,bf16 where the CPU runs bf16 natively, else fp32; see dtypes.py) runs the four runs
at each dtype, back to back. fp32: trl bf16=False, alignlab train.dtype=fp32. bf16: mixed precision on both sides
(fp32 master weights and optimizer state, forwards under bf16 autocast, the reference's included): trl bf16=True
with use_cpu=True (accelerate's autocast on CPU), alignlab train.dtype=bf16. A forward hook (dtypes.ForwardDtypes)
checks in every run that the Linear layers of the first training forwards and of the first reference forwards
(no_grad) produce the dtype asked for.

Measured. Every step is timed from the end of the previous step to the end of this one (data loading, collation
and logging count, on both sides): trl by a TrainerCallback, alignlab from metrics.jsonl (elapsed_s). The first 3
steps are warm-up and not timed. pairs/s = pairs of the timed steps / their seconds; tok/s = their real (non-pad)
tokens, chosen and rejected rows, prompt included / seconds. Both sides train on the same batches: trl is given
the pairs in the order alignlab's sampler visits them in its first epoch and reads them in order (its train sampler
replaced by a SequentialSampler), which the per-step token counts confirm ("batches:" line; past one epoch, i.e.
steps x batch > pairs, the orders part and only tok/s stays comparable). The one-time reference pass of the
precomputed runs is not in the step times; it is timed on its own (trl: DPOTrainer._precompute_ref_logps, alignlab:
alignlab.recipes.dpo.precompute_reference, each wrapped by a timer here) and shown in its own column.
"loss@1" is each run's loss at step 1: the policy equals the reference there, so it is ln 2 = 0.6931 on both.
The agreement check (check_agreement) fails the run, with a non-zero exit, unless every run's training loss is ln 2
at step 1 and within the dtype's tolerance of trl live's (at the same dtype) at every step the runs share a batch:
1e-4 in fp32; 2e-3 in bf16, where the policy's and the reference's log-probabilities are each rounded and the loss
moves by beta / 2 times the rounding of the margin (chosen minus rejected, policy minus reference). Measured (30
steps, max_len 512): at most 8.8e-4 from trl live; in bf16 alignlab's loss at step 1 is 6.5e-4 from ln 2, as its
policy forward (the training path) and its reference forward (no gradient) round differently, where trl runs the
same computation for both.
"other load" is the fraction of the CPUs other processes used during the run (bench_train.CpuWatch): a run with
more than a few percent was disturbed and should be repeated on an idle machine.

The last line is JSON with the ratios by dtype (alignlab / trl, by tokens/s and by pairs/s, live and precomputed) and
the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench_generate
import torch
from bench_generate import MODELS, wait_for_idle
from bench_sft import VOCAB, build_model_dir
from bench_train import CpuWatch
from dtypes import ForwardDtypes, add_dtype_argument, capability, describe, parse_dtypes

from alignlab.data.preference import load_preference_data, tokenize_pairs
from alignlab.data.sampler import EpochSampler
from alignlab.recipes import dpo
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
DATA = str(SHARED_DATA / "preferences/hh_rlhf_harmless_base_test.jsonl")
WARMUP_STEPS = 3
SEED = 0
LR = 1e-6
BETA = 0.1


# --- data, tokenizer, model ------------------------------------------------------------------------------

def load_records(path: str, n: int) -> list[dict]:
    data = load_preference_data(path, convert="hh_rlhf")
    return data.records[:n]


def alignlab_pairs(model_dir: str, records: list[dict], max_len: int):
    """(kept records, their PairExamples, pad id, counts), tokenised as alignlab's run() will (max_prompt_len =
    max_len: see the module docstring)."""
    tok = load_tokenizer(model_dir)
    where = [f"pair {i}" for i in range(len(records))]
    toks = tokenize_pairs(tok, records, max_len, max_len, where=where)
    lost = {w for w, _ in toks.dropped}
    kept = [r for r, w in zip(records, where) if w not in lost]
    return kept, toks.examples, tok.pad_token_id, toks.counts


def check_same_tokens(trainer, examples, max_len: int) -> int:
    """trl's tokenised pairs, cut as its collator cuts them (prompt + completion [:max_len]) == alignlab's."""
    ds = trainer.train_dataset
    if len(ds) != len(examples):
        raise SystemExit(f"trl keeps {len(ds)} pairs, alignlab {len(examples)}")
    for i, (row, ex) in enumerate(zip(ds, examples)):
        p = list(row["prompt_ids"])
        if p != ex.prompt_ids:
            raise SystemExit(f"pair {i}: the prompt tokenises differently ({len(p)} vs {len(ex.prompt_ids)} tokens)")
        for side in ("chosen", "rejected"):
            theirs = (p + list(row[f"{side}_ids"]))[:max_len]
            ours = ex.prompt_ids + getattr(ex, f"{side}_ids")
            if theirs != ours:
                raise SystemExit(f"pair {i}: {side} tokenises differently ({len(theirs)} vs {len(ours)} tokens)")
            if not all(getattr(ex, f"{side}_mask")):  # trl trains every completion token
                raise SystemExit(f"pair {i}: alignlab leaves part of the {side} completion untrained, trl does not")
    return len(ds)


# --- the runs ----------------------------------------------------------------------------------------------

def window(ends: list[float], pairs: list[int], tokens: list[int]) -> tuple[int, int, float]:
    """(pairs, real tokens, seconds) of the steps after the warm-up. ends[i] = when step i + 1 finished."""
    if len(ends) <= WARMUP_STEPS:
        raise SystemExit(f"--steps must be more than {WARMUP_STEPS} (the warm-up steps are not timed)")
    n = len(ends)
    return sum(pairs[WARMUP_STEPS:n]), sum(tokens[WARMUP_STEPS:n]), ends[-1] - ends[WARMUP_STEPS - 1]


def run_trl(model_dir: str, records: list[dict], examples, args, precompute: bool, out: str, dtype: str) -> dict:
    import dataclasses

    import datasets
    import transformers as tf
    import trl
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class Clock(tf.TrainerCallback):
        def __init__(self):
            self.ends, self.losses = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    class CountingCollator:
        """trl's collator, recording each batch's pairs and real (attention_mask) tokens."""

        def __init__(self, inner):
            self.inner, self.pairs, self.real = inner, [], []

        def __call__(self, features):
            b = self.inner(features)
            self.pairs.append(int(b["input_ids"].shape[0]) // 2)
            self.real.append(int(b["attention_mask"].sum()))
            return b

    class TimedDPOTrainer(trl.DPOTrainer):
        precompute_seconds = 0.0

        def _get_train_sampler(self, train_dataset=None):
            # the pairs come already in alignlab's first-epoch order (see main); keep it
            return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None
                                                      else self.train_dataset)

        def _precompute_ref_logps(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*a, **kw)
            finally:
                TimedDPOTrainer.precompute_seconds += time.perf_counter() - t0

    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    probe = ForwardDtypes(("grad", "no_grad")).start()  # from construction on: trl precomputes the reference there
    kw = dict(
        output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
        loss_type=["sigmoid"], max_length=args.max_len, gradient_checkpointing=False, bf16=dtype == "bf16",
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, precompute_ref_log_probs=precompute,
        dataloader_num_workers=0, seed=SEED, disable_tqdm=True)
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(trl.DPOConfig)}:
        kw["activation_checkpointing"] = False
    cfg = trl.DPOConfig(**kw)
    clock = Clock()
    trainer = TimedDPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=datasets.Dataset.from_list(records),
                              processing_class=tok, callbacks=[clock])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    assert not trainer.model.is_activation_checkpointing, "trl: gradient checkpointing is still on"
    assert (trainer.ref_model is None) == precompute, "trl: unexpected reference model setup"
    checked = check_same_tokens(trainer, examples, args.max_len)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    wait_for_idle()
    with CpuWatch() as watch, probe:
        trainer.train()
    computes = probe.check(dtype, f"trl {'precomputed' if precompute else 'live'} {dtype}")
    n = len(clock.ends)
    pairs, tokens, seconds = window(clock.ends, counter.pairs[:n], counter.real[:n])
    return dict(steps=n, pairs=pairs, tokens=tokens, seconds=seconds, losses=clock.losses, other=watch.other_load,
                step_tokens=counter.real[:n], checked=checked, computes=computes,
                precompute_s=TimedDPOTrainer.precompute_seconds if precompute else None)


def run_alignlab(model_dir: str, records: list[dict], examples, pad_id: int, args, reference: str, out: str,
                 dtype: str) -> dict:
    timed = {"seconds": 0.0}
    original = dpo.precompute_reference

    def precompute_reference(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            timed["seconds"] += time.perf_counter() - t0

    tc = TrainConfig(max_steps=args.steps, lr=LR, schedule="constant", warmup_steps=0, weight_decay=0.0,
                     beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0, eval_every=0, save_every=0, plot=False,
                     peak_flops=1e11, seed=SEED, device="cpu", dtype=dtype)
    cfg = dpo.DPOConfig(out_dir=out, model=model_dir, loss="sigmoid", beta=BETA, reference=reference,
                        batch_size=args.batch, max_len=args.max_len, max_prompt_len=args.max_len, train=tc)
    wait_for_idle()
    dpo.precompute_reference = precompute_reference
    try:
        with CpuWatch() as watch, ForwardDtypes(("grad", "no_grad")) as probe:
            # val_records=None, not []: an empty held-out list still runs precompute_reference on zero pairs,
            # which fails (torch.cat of nothing)
            result = dpo.run(cfg, train_records=records, val_records=None)
    finally:
        dpo.precompute_reference = original
    computes = probe.check(dtype, f"alignlab {reference} {dtype}")
    if result.get("status") != "finished":
        raise SystemExit(f"alignlab {reference}: the run did not finish ({result.get('status')})")
    with open(Path(out) / "metrics.jsonl") as f:
        log = [r for r in map(json.loads, f) if "loss" in r and "elapsed_s" in r]
    # the same batches again, from the same seed: pairs and real tokens, checked against the trainer's count
    sampler = dpo.PairBatches(examples, {}, args.batch, pad_id, SEED)
    pairs, real, padded = [], [], []
    for _ in log:
        batch = [examples[i] for i in sampler.next_indices()]
        rows = [len(e.prompt_ids) + len(e.chosen_ids) for e in batch] + \
               [len(e.prompt_ids) + len(e.rejected_ids) for e in batch]
        pairs.append(len(batch))
        real.append(sum(rows))
        padded.append(len(rows) * max(rows))
    seen = [b["tokens_seen"] - a for a, b in zip([0] + [r["tokens_seen"] for r in log], log)]
    if seen != padded:
        raise SystemExit(f"alignlab {reference}: the rebuilt batches are not the ones the trainer saw "
                         f"(tokens_seen {seen[:4]}... vs {padded[:4]}...)")
    p, tokens, seconds = window([r["elapsed_s"] for r in log], pairs, real)
    return dict(steps=len(log), pairs=p, tokens=tokens, seconds=seconds, losses=[r["loss"] for r in log],
                other=watch.other_load, step_tokens=real, computes=computes,
                precompute_s=timed["seconds"] if reference == "precomputed" else None)


# --- the agreement check -----------------------------------------------------------------------------------

LOSS_TOLERANCE = {  # largest difference in the training loss from trl live at the same dtype
    "fp32": 1e-4,  # measured: 1.1e-5 over 30 steps
    "bf16": 2e-3,  # see the module docstring
}


def check_agreement(runs: dict[str, dict], dtype: str, tolerance: float) -> float:
    """Every run's training loss equals trl live's at every step they share the same batch (same real tokens), and
    is ln 2 at step 1 (the policy equals the reference). Returns the largest difference; a disagreement ends the
    run with a non-zero exit: the timings would compare different computations."""
    live = runs["trl live"]
    problems = []
    for name, r in runs.items():
        if not r["losses"] or abs(r["losses"][0] - math.log(2)) > tolerance:
            problems.append(f"{name}: loss at step 1 is {r['losses'][0] if r['losses'] else 'missing'}, not ln 2")
    shared = [i for i in range(min(len(r["losses"]) for r in runs.values()))
              if all(r["step_tokens"][i:i + 1] == live["step_tokens"][i:i + 1] for r in runs.values())]
    if not shared:
        problems.append("no step with the same batch on every run: nothing to compare")
    diff = max((abs(r["losses"][i] - live["losses"][i]) for r in runs.values() for i in shared), default=math.inf)
    for name, r in runs.items():
        bad = [i + 1 for i in shared if not abs(r["losses"][i] - live["losses"][i]) <= tolerance]
        if bad:
            problems.append(f"{name}: the training loss differs from trl live by more than {tolerance:g} at steps "
                            f"{bad[:5]}{' ...' if len(bad) > 5 else ''} (largest {diff:.2e})")
    step1 = max(abs(r["losses"][0] - math.log(2)) for r in runs.values() if r["losses"])
    print(f"{dtype} training loss, {len(shared)} steps on the same batches: largest difference from trl live "
          f"{diff:.2e}, largest |loss@1 - ln 2| {step1:.2e} (tolerance {tolerance:g})")
    if problems:
        raise SystemExit(f"agreement check FAILED ({dtype}): alignlab and trl do not compute the same DPO loss\n  "
                         + "\n  ".join(problems))
    return diff


# --- main ------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run (the first 3 are not timed)")
    ap.add_argument("--batch", type=int, default=4, help="pairs a step")
    ap.add_argument("--pairs", type=int, default=512, help="the first N pairs of --data")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--model", choices=tuple(MODELS), default="5M")
    ap.add_argument("--data", default=DATA, help="HH-RLHF transcripts (.jsonl with chosen/rejected)")
    ap.add_argument("--threads", type=int, default=2)
    add_dtype_argument(ap)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 steps (1 timed), 32 pairs, max_len 256, short idle waits")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.pairs, args.max_len = 4, 32, 256
        bench_generate.IDLE_WAIT = bench_generate.QUICK_IDLE_WAIT
    if args.steps <= WARMUP_STEPS:
        ap.error(f"--steps must be more than {WARMUP_STEPS}")
    dtypes = parse_dtypes(args.dtype, "train")
    torch.set_num_threads(args.threads)
    import datasets
    import transformers as tf
    import trl

    datasets.disable_progress_bars()
    records = load_records(args.data, args.pairs)
    print(f"torch {torch.__version__}, transformers {tf.__version__}, trl {trl.__version__}, threads "
          f"{torch.get_num_threads()}; {len(records)} HH-RLHF pairs; {args.steps} steps ({WARMUP_STEPS} untimed), "
          f"batch {args.batch} pairs, max_len {args.max_len}, lr {LR:g}, beta {BETA}")
    print(describe(dtypes, "train"))
    by_dtype: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "base")
        text = "\n".join(m["content"] for r in records for m in r["prompt"] + r["chosen"] + r["rejected"])
        build_model_dir(text, args.model, args.max_len, model_dir)
        records, examples, pad_id, counts = alignlab_pairs(model_dir, records, args.max_len)
        # trl gets the pairs in the order alignlab's sampler visits them in its first epoch, and reads them in
        # that order (a SequentialSampler), so both sides train on the same batches (while steps x batch <= pairs)
        sampler = EpochSampler(len(examples), args.batch, SEED)
        sampler.next_indices()
        order = sampler.order
        trl_records, trl_examples = [records[i] for i in order], [examples[i] for i in order]
        lengths = [2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples]
        n_params = sum(p.numel() for p in tf.LlamaForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model {args.model}: {n_params / 1e6:.2f}M parameters, vocab {VOCAB}; pairs: {counts['kept']} kept, "
              f"{counts['truncated']} truncated, dropped {counts['dropped'] or 'none'}; real tokens a pair (chosen + "
              f"rejected rows) mean {statistics.mean(lengths):.0f} (min {min(lengths)}, max {max(lengths)})",
              flush=True)

        for dtype in dtypes:
            out = os.path.join(work, dtype)
            runs = by_dtype[dtype] = {}
            runs["trl live"] = run_trl(model_dir, trl_records, trl_examples, args, False, os.path.join(out, "trl_live"),
                                       dtype)
            print(f"{dtype} trl: {runs['trl live']['checked']} pairs tokenised identically by trl and alignlab "
                  "(prompt, chosen and rejected ids)", flush=True)
            runs["trl precomputed"] = run_trl(model_dir, trl_records, trl_examples, args, True,
                                              os.path.join(out, "trl_pre"), dtype)
            runs["alignlab copy"] = run_alignlab(model_dir, records, examples, pad_id, args, "copy",
                                                 os.path.join(out, "al_copy"), dtype)
            runs["alignlab precomputed"] = run_alignlab(model_dir, records, examples, pad_id, args, "precomputed",
                                                        os.path.join(out, "al_pre"), dtype)
    live_tokens = next(iter(by_dtype.values()))["trl live"]["step_tokens"]
    same = all(r["step_tokens"] == live_tokens for runs in by_dtype.values() for r in runs.values())
    print("batches: " + ("the same pairs every step on every run (per-step real tokens equal)" if same else
                         "per-step real tokens differ between the runs (more steps than one epoch?): compare tok/s"))
    for runs in by_dtype.values():
        for r in runs.values():
            r["pairs_s"] = r["pairs"] / r["seconds"]
            r["tok_s"] = r["tokens"] / r["seconds"]
            r["loss1"] = r["losses"][0] if r["losses"] else float("nan")

    against = {"trl live": "trl live", "trl precomputed": "trl precomputed", "alignlab copy": "trl live",
               "alignlab precomputed": "trl precomputed"}
    print()
    print(f"{'dtype':<5} {'side':<21} {'steps':>5} {'pairs':>5} {'tokens':>8} {'seconds':>8} {'pairs/s':>8} "
          f"{'tok/s':>8} {'vs trl':>6} {'precompute s':>12} {'loss@1':>7} {'other load':>10}  computes in")
    for dtype, runs in by_dtype.items():
        for name, r in runs.items():
            ratio = r["tok_s"] / runs[against[name]]["tok_s"]
            pre = f"{r['precompute_s']:.2f}" if r["precompute_s"] is not None else "-"
            print(f"{dtype:<5} {name:<21} {r['steps']:>5} {r['pairs']:>5} {r['tokens']:>8,} {r['seconds']:>8.2f} "
                  f"{r['pairs_s']:>8.2f} {r['tok_s']:>8.0f} {ratio:>5.2f}x {pre:>12} {r['loss1']:>7.4f} "
                  f"{r['other']:>10.0%}  {r['computes']}")
    print(f"(vs trl: tok/s over trl's run with the same kind of reference at the same dtype; loss@1 should be ln 2 = "
          f"{math.log(2):.4f})")
    diffs = {dtype: check_agreement(runs, dtype, LOSS_TOLERANCE[dtype]) for dtype, runs in by_dtype.items()}
    ratios, pair_ratios = {}, {}
    for dtype, runs in by_dtype.items():
        ratios[dtype] = {
            "live": round(runs["alignlab copy"]["tok_s"] / runs["trl live"]["tok_s"], 3),
            "precomputed": round(runs["alignlab precomputed"]["tok_s"] / runs["trl precomputed"]["tok_s"], 3),
        }
        pair_ratios[dtype] = {
            "live": round(runs["alignlab copy"]["pairs_s"] / runs["trl live"]["pairs_s"], 3),
            "precomputed": round(runs["alignlab precomputed"]["pairs_s"] / runs["trl precomputed"]["pairs_s"], 3),
        }
        print(f"{dtype} alignlab / trl (tok/s): live reference {ratios[dtype]['live']:.2f}x, precomputed "
              f"{ratios[dtype]['precomputed']:.2f}x; (pairs/s): live {pair_ratios[dtype]['live']:.2f}x, precomputed "
              f"{pair_ratios[dtype]['precomputed']:.2f}x")
    flat = {f"{dtype}/{name}": r for dtype, runs in by_dtype.items() for name, r in runs.items()}
    result = {
        "ratio": ratios,
        "pair_ratio": pair_ratios,
        "tokens_per_s": {name: round(r["tok_s"], 1) for name, r in flat.items()},
        "pairs_per_s": {name: round(r["pairs_s"], 3) for name, r in flat.items()},
        "precompute_s": {name: round(r["precompute_s"], 2) for name, r in flat.items()
                         if r["precompute_s"] is not None},
        "loss_at_step1": {name: round(r["loss1"], 4) for name, r in flat.items()},
        "other_load": {name: round(r["other"], 3) for name, r in flat.items()},
        "same_batches": same, "max_loss_diff": {d: float(f"{v:.3g}") for d, v in diffs.items()},
        "loss_tolerance": {d: LOSS_TOLERANCE[d] for d in by_dtype}, "cpu": capability(),
        "steps": args.steps, "batch": args.batch, "pairs": len(examples), "max_len": args.max_len,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
