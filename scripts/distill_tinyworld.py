"""Distillation on TinyWorld: how much of a bigger teacher's lead does a small student recover?

    python scripts/distill_tinyworld.py --run runs/pipeline [--layers 2 --dim 128] [--lmbda 0.5] [--beta 0.5]
                                        [--init scratch|prune] [--kd-pretrain]

1. the teacher: the pipeline's SFT model (`--run`; 4 layers, 128 wide)
2. a student (default 2 layers, 128 wide) is pretrained on the same TinyWorld text with the same tokenizer (the
   pipeline's pretrain stage at the student's size)
3. from that student, two runs with the same data, steps, batch and learning rate as the pipeline's SFT:
   alone  SFT on TinyWorld's chats (the tokens of the data's replies)
   KD     alignlab.recipes.distill on the same chats: the teacher's token distributions (beta, temperature),
          with `lmbda` of the steps on the student's own samples (GKD)
   With --init prune the KD student starts instead from the teacher itself cut to --layers blocks, those of
   highest block influence (alignlab/model/prune.py, ShortGPT; prune, then distil is Minitron's recipe): the SFT
   model cut, then the chats distilled; with --kd-pretrain too, the teacher's base model cut, distilled on the
   pretraining text for the pretraining's steps (forward KL against the base), then the chats. A control trains
   the same cut model for the same steps without the teacher (the text's next tokens with --kd-pretrain, then
   SFT): what the teacher's weights give, apart from its distributions.
4. teacher, student alone and distilled student answer every held-out prompt of levels 1-4 greedily; the share of
   the gap closed is (KD - alone) / (teacher - alone)

The last line is JSON: {"teacher", "alone", "distilled", "gap_closed", ...} (with --init prune also "kept_blocks",
"block_influence", "control", "gap_closed_control").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from alignlab.cli.quant import text_windows
from alignlab.eval.world_suite import evaluate_on_world
from alignlab.model import CausalLM
from alignlab.model.hf import load_model, save_model
from alignlab.model.prune import prune_by_influence
from alignlab.pipeline import Run, stage_pretrain, stage_sft
from alignlab.recipes import distill
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig


def accuracy(model_dir: Path, world) -> tuple[float, list[bool]]:
    model, tok = load_model(model_dir, dtype=torch.float32), load_tokenizer(model_dir)
    metrics, rows = evaluate_on_world(model, tok, world, safety=0, max_new_tokens=96)
    return metrics["accuracy"], [r["correct"] for r in rows if r["task"] == "math"]


def kd_pretrain(student: Run, teacher_base: Path, out: Path, temperature: float, init: Path | None = None) -> Path:
    """The pipeline's pretraining at the student's size with the teacher's base model as the target: a fresh
    student (same config and seed), or `init`, learns the teacher's distributions over the same text (forward KL)."""
    if (out / "model").exists():
        return out / "model"
    s, like = student.sizes, student.model_dir("pretrain")
    if init is None:
        torch.manual_seed(student.seed)
        init = save_model(CausalLM(load_model(like).config), out / "init", tokenizer=load_tokenizer(like))
    text = (student.dir("tokenizer") / "corpus.txt").read_text()
    chunks = distill.text_chunks(text, s.block_size)
    cfg = distill.DistillConfig(
        out_dir=str(out), student=str(init), teacher=str(teacher_base), beta=0.0, temperature=temperature, lmbda=0.0,
        max_len=s.block_size, batch_size=s.pretrain_batch, sample_prompts=0,
        train=TrainConfig(max_steps=s.pretrain_steps, lr=s.pretrain_lr, warmup_steps=s.pretrain_steps // 20,
                          min_lr_ratio=0.1, beta2=0.99, eval_every=s.pretrain_steps, save_every=s.pretrain_steps,
                          keep_last=1, seed=student.seed, device="cpu"))
    return Path(distill.run(cfg, resume=True, train_records=chunks[:-32], val_records=chunks[-32:])["model_dir"])


def pruned_teacher(teacher_dir: Path, n_layers: int, out: Path, world_seed: int) -> tuple[Path, list[int], list]:
    """The teacher cut to its n_layers blocks of highest influence on TinyWorld's pretraining text."""
    teacher, tok = load_model(teacher_dir, dtype=torch.float32), load_tokenizer(teacher_dir)
    windows = text_windows("tinyworld", tok, "train", 256, 32, world_seed)
    pruned, keep, influence = prune_by_influence(teacher, windows, n_layers)
    if not (out / "config.json").exists():
        save_model(pruned, out, tokenizer=tok, meta={"stage": "prune", "parent": str(teacher_dir), "kept_blocks": keep})
    return out, keep, influence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/pipeline", help="a finished `alignlab pipeline` run (the teacher)")
    ap.add_argument("--out", default=None, help="default: RUN/distill")
    ap.add_argument("--beta", type=float, default=0.5, help="0 forward KL, 1 reverse KL, between: generalized JSD")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lmbda", type=float, default=0.5, help="share of steps on the student's own samples")
    ap.add_argument("--dim", type=int, default=128, help="the student's width (the teacher's: 128)")
    ap.add_argument("--layers", type=int, default=2, help="the student's layers (the teacher's: 4)")
    ap.add_argument("--init", choices=("scratch", "prune"), default="scratch",
                    help="the KD student's start: its own pretraining (scratch), or the teacher cut to --layers "
                         "blocks (prune; --dim must be the teacher's), with a control from the same start")
    ap.add_argument("--kd-pretrain", action="store_true",
                    help="distil the pretraining too: the KD student learns the teacher's base model on the same "
                         "text, steps and learning rate (forward KL), then the chats as above")
    args = ap.parse_args()
    teacher_run = Path(args.run)
    seed = json.loads((teacher_run / "pipeline.json").read_text())["seed"]
    out = Path(args.out) if args.out else teacher_run / f"distill_{args.layers}x{args.dim}"
    times = {}

    # 2. the student's base: the pipeline's pretraining at the student's size, same text and tokenizer
    student = Run(out, seed, quick=False)
    student.sizes = replace(student.sizes, model=dict(arch="llama", dim=args.dim, n_layers=args.layers, n_heads=4,
                                                      n_kv_heads=4))
    if not (out / "tokenizer").exists():
        shutil.copytree(teacher_run / "tokenizer", out / "tokenizer")
    t = time.time()
    if not student.model_dir("pretrain").exists():
        stage_pretrain(student)
    times["pretrain"] = time.time() - t

    # 3. alone: the pipeline's SFT stage; KD: the same data, steps, batch and learning rate, the teacher's targets
    t = time.time()
    if not student.model_dir("sft").exists():
        stage_sft(student)
    times["alone"] = time.time() - t
    s = student.sizes
    start = student.model_dir("pretrain")
    tag = "kd" + ("_pre" if args.kd_pretrain else "") + ("_prune" if args.init == "prune" else "")
    tag += f"_beta{args.beta}_lmbda{args.lmbda}"
    pruned = None
    if args.init == "prune":
        if args.dim != load_model(teacher_run / "sft" / "model").config.dim:
            raise SystemExit("--init prune removes blocks, not width: --dim must be the teacher's")
        source = "pretrain" if args.kd_pretrain else "sft"  # with --kd-pretrain the base is pruned, then distilled
        start, keep, influence = pruned_teacher(teacher_run / source / "model", args.layers,
                                                out / f"pruned_from_{source}", seed)
        # the control: the same pruned start and steps without the teacher: the chats' replies (SFT), after the
        # pretraining text's next tokens with --kd-pretrain
        control = Run(out / f"pruned_from_{source}_{'then_pretrain_sft' if args.kd_pretrain else 'then_sft'}", seed,
                      quick=False)
        control.sizes = student.sizes
        if not (control.out / "tokenizer").exists():
            shutil.copytree(out / "tokenizer", control.out / "tokenizer")
        t = time.time()
        if not control.model_dir("pretrain").exists():
            if args.kd_pretrain:
                stage_pretrain(control, init_from=str(start))
            else:
                shutil.copytree(start, control.model_dir("pretrain"))
        if not control.model_dir("sft").exists():
            stage_sft(control)
        times["control"] = time.time() - t
        pruned = {"kept_blocks": keep, "block_influence": [round(b, 4) for b in influence], "dir": control}
    if args.kd_pretrain:
        t = time.time()
        start = kd_pretrain(student, teacher_run / "pretrain" / "model", out / f"{tag}_pretrain", args.temperature,
                            start if args.init == "prune" else None)
        times["kd_pretrain"] = time.time() - t
    cfg = distill.DistillConfig(
        out_dir=str(out / tag), student=str(start),
        teacher=str(teacher_run / "sft" / "model"), beta=args.beta, temperature=args.temperature, lmbda=args.lmbda,
        max_len=2 * s.block_size, batch_size=s.sft_batch, max_new_tokens=s.max_new_tokens,
        train=TrainConfig(max_steps=s.sft_steps, lr=s.sft_lr, warmup_steps=s.sft_steps // 20, min_lr_ratio=0.1,
                          beta2=0.99, eval_every=s.sft_steps, save_every=s.sft_steps, keep_last=1, seed=seed,
                          device="cpu"))
    t = time.time()
    result = distill.run(cfg, resume=True, train_records=student.world.sft_conversations("train"),
                         val_records=student.world.sft_conversations("test"))
    times["distill"] = time.time() - t

    # 4. held-out accuracy, levels 1-4
    world = student.world
    teacher_acc, _ = accuracy(teacher_run / "sft" / "model", world)
    alone_acc, alone_rows = accuracy(student.model_dir("sft"), world)
    kd_acc, kd_rows = accuracy(Path(result["model_dir"]), world)
    gap = teacher_acc - alone_acc
    summary = {"seed": seed, "prompts": len(kd_rows), "teacher": teacher_acc, "alone": alone_acc,
               "distilled": kd_acc, "gap_closed": (kd_acc - alone_acc) / gap if gap > 0 else None,
               "init": args.init, "beta": args.beta, "temperature": args.temperature, "lmbda": args.lmbda,
               "steps": s.sft_steps, "seconds": {k: round(v) for k, v in times.items()}}
    if pruned is not None:
        control_acc, _ = accuracy(pruned.pop("dir").model_dir("sft"), world)
        summary.update(pruned, control=control_acc,
                       gap_closed_control=(control_acc - alone_acc) / gap if gap > 0 else None)
        print(f"cut to blocks {pruned['kept_blocks']} (block influence {pruned['block_influence']}); the same start "
              f"and steps without the teacher: {control_acc:.1%}")
    (Path(cfg.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"levels 1-4 held-out accuracy: teacher {teacher_acc:.1%}, student alone {alone_acc:.1%}, "
          f"distilled {kd_acc:.1%}: {summary['gap_closed']:.0%} of the gap closed" if gap > 0 else
          f"the student alone ({alone_acc:.1%}) is not behind the teacher ({teacher_acc:.1%})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
