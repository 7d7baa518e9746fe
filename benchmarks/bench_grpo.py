"""GRPO step throughput: alignlab's GRPO recipe vs trl's GRPOTrainer, same random Llama, same prompts, fp32 and bf16.

    OMP_NUM_THREADS=2 python benchmarks/bench_grpo.py [--dtype fp32,bf16] [--steps 13] [--prompts 4] [--G 8]
                                                      [--completion 64] [--engine static|paged] [--quick]

What is compared. TinyWorld's verifiable arithmetic prompts (alignlab.data.world.TinyWorld(seed=0).rl_prompts(
"train", level=--level)): conversational prompt-only records {"prompt": [system, user], "answer", "level", "id"},
given to both sides as messages (each renders them with the tokenizer's chat template, add_generation_prompt);
TinyWorld makes them on the fly, so no file of ../shared/data is read.
A byte-level BPE with 8192 ids (alignlab.text.train_bpe on TinyWorld's tokenizer text, ChatML template, eos
<|im_end|>, pad <|pad|>) and a random Llama (transformers' LlamaConfig with MODELS["5M"] of bench_generate.py,
seed 0) are saved to one directory that both sides load (bench_sft.build_model_dir): trl through AutoTokenizer /
LlamaForCausalLM.from_pretrained, alignlab through its own loaders. Two runs of --steps optimizer steps on CPU at
each dtype of --dtype, each step = one rollout batch of --prompts prompts x --G completions, then one update on all
of them:

    trl       GRPOTrainer (use_vllm=False: transformers' generate with the KV cache, then _compute_loss)
    alignlab  alignlab.recipes.grpo.run (alignlab's Engine, one batched call, or LLMEngine with --engine paged;
              then grpo_loss in the shared Trainer)

Fairness. The same work a step on both sides:
  * prompts: B = --prompts a step (trl: per_device_train_batch_size = B x G completions, gradient_accumulation_steps
    1, so its generation batch is one optimizer step; alignlab: prompts_per_step = B). trl is given the prompts in
    the order alignlab's sampler visits them in its first epoch and reads them in order (shuffle_dataset=False),
    so both sides answer the same prompts at every step; the prompt token ids each side sends to its generator are
    recorded and checked equal, step by step ("prompts:" line).
  * completions: exactly --completion new tokens each, B x G x --completion generated tokens a step on both sides
    (checked). trl: generation_kwargs={"min_new_tokens": C} with max_completion_length C (transformers' min-length
    processor suppresses EOS); alignlab's GRPOConfig has no such switch, so the benchmark sets ignore_eos=True on
    the SamplingParams the recipe hands to its rollout function (a wrapper around alignlab.recipes.grpo's
    generate_rollouts; the engine then stops on the length alone). Both sample at temperature 1, top_p 1, top_k 0.
  * reward: one cheap function in trl's convention, both sides calling this module's length_reward (characters of
    the decoded completion / 100: it varies between completions of the same token length, so the groups have
    non-zero variance and the gradient is not zero).
  * objective: loss_type dapo (trl's default since 0.22), scale_rewards group, epsilon 0.2, beta 0 (no reference
    model on either side: alignlab's track_kl=false, which it otherwise computes for its KL monitor), mu =
    num_iterations 1 (no pi_old pass on either side), no truncated-completion masking.
  * optimizer: torch's fused AdamW (lr --lr, betas 0.9/0.999, eps 1e-8, weight decay 0), constant schedule, no
    warm-up, gradient clipping at 1.0, seed 0. trl's gradient checkpointing (on by default) is off; its
    other defaults stay (its entropy and clip-ratio metrics, logging every step). alignlab runs with its defaults
    too (its RL monitors, its per-step rollout metrics, thread-isolated reward calls), no held-out evaluation
    (eval_prompts=0) and no checkpoints until the end. trl's console printing callbacks are removed.
  * dtype: --dtype (default: fp32,bf16 where the CPU runs bf16 natively, else fp32; see dtypes.py) runs both sides
    at each dtype, back to back. fp32: trl bf16=False, alignlab train.dtype=fp32. bf16: mixed precision, fp32
    master weights and optimizer state: trl bf16=True with use_cpu=True (accelerate's autocast on CPU), alignlab
    train.dtype=bf16 (its rollouts and update under the same autocast). A forward hook (dtypes.ForwardDtypes)
    checks that the Linear layers of the first training forwards produce the dtype asked for on both sides; the
    dtype of the sampling forwards is printed ("computes in").
  * step 0: the first step of trl's run is replayed on alignlab's side: the rewards of trl's completions through
    the same function and alignlab's group_advantages must give trl's advantages, and alignlab's grpo_step
    (grpo_loss, dapo) on trl's first training batch, from the same initial weights and in the same dtype, must give
    trl's loss and gradient (relative L2 error of every parameter's gradient printed; the run fails when the worst
    parameter's is above MAX_GRAD_ERROR: 1e-3 in fp32; in bf16 0.1, and 0.03 for the whole gradient: two bf16
    computations of one gradient differ by about a percent; for scale, alignlab's fp32 gradient on the same batch
    is printed against trl's bf16 one, which is trl's own bf16 rounding).

Measured. Each step is timed from the end of the previous step to the end of this one (sampling, rewards,
advantages, the update and logging all count): trl by a TrainerCallback, alignlab from metrics.jsonl (elapsed_s).
The first --warmup steps are not timed; "step s" is the median of the remaining ones. Inside a step:
    rollout   trl: GRPOTrainer._generate_and_score_completions (tokenising, generating, decoding, rewards,
              advantages, metrics); alignlab: collect_rollouts (the same) -- both timed by wrappers here
    generate  trl: GRPOTrainer._generate_single_turn (transformers' generate); alignlab: the engine call
              (Rollout.seconds, logged as rollout_s)
    train     step - rollout: the loss's forward and backward, clipping, the optimizer step, logging
(medians of each over the timed steps). completion tok/s = generated tokens a step / median step s; generate tok/s
= generated tokens a step / median generate s. ratio = alignlab completion tok/s / trl's (> 1: alignlab faster).
"other load" is the fraction of the CPUs other processes used during the run (bench_train.CpuWatch): a run with
more than a few percent was disturbed and should be repeated on an idle machine.

The last line is JSON: {"benchmark": "grpo", "ratio": {dtype: ...}, the split ratios, seconds, tokens/s, the step-0
check, the CPU}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_generate import MODELS, QUICK_IDLE_WAIT, wait_for_idle
from bench_sft import VOCAB, build_model_dir
from bench_train import CpuWatch
from dtypes import ForwardDtypes, add_dtype_argument, capability, describe, parse_dtypes

from alignlab.data.sampler import EpochSampler
from alignlab.data.world import TinyWorld
from alignlab.model.hf import load_model
from alignlab.objectives.rl import group_advantages
from alignlab.recipes import grpo
from alignlab.rl import collect as collect_module
from alignlab.rl.collect import RolloutConfig, tokenize_prompts
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig, autocast_for

SEED = 0
MAX_GRAD_ERROR = {"fp32": 1e-3, "bf16": 0.1}  # the worst parameter's relative L2 error of the step-0 gradient
MAX_GRAD_ERROR_ALL = {"fp32": 1e-3, "bf16": 0.03}  # the whole gradient's


def length_reward(completions, **kwargs) -> list[float]:
    """Characters of the completion's text / 100 (trl's convention: conversational completions are message lists)."""
    return [len(c[0]["content"] if isinstance(c, list) else c) / 100 for c in completions]


# --- data, tokenizer, model ------------------------------------------------------------------------------

def load_records(level: int) -> list[dict]:
    return TinyWorld(seed=0).rl_prompts("train", level=level)


def median_after(values: list[float], warmup: int) -> float:
    return statistics.median(values[warmup:])


def durations(ends: list[float], start: float = 0.0) -> list[float]:
    return [b - a for a, b in zip([start] + ends[:-1], ends)]


# --- the runs ----------------------------------------------------------------------------------------------

def run_trl(model_dir: str, records: list[dict], args, out: str, dtype: str) -> dict:
    import datasets
    import transformers as tf
    import trl
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class Clock(tf.TrainerCallback):
        def __init__(self):
            self.start, self.ends, self.losses = 0.0, [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    class TimedGRPOTrainer(trl.GRPOTrainer):
        """GRPOTrainer with timers around the rollout and the generation, and the first step's batch, outputs and
        gradients kept for the step-0 check."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.rollout_s, self.generate_s, self.gen_tokens, self.prompts = [], [], [], []
            self.first_rollout = self.first_inputs = self.first_grads = self.first_loss = None

        def _generate_single_turn(self, prompt_ids, *a, **kw):
            t0 = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **kw)
            self.generate_s.append(time.perf_counter() - t0)
            self.gen_tokens.append(sum(len(c) for c in completion_ids))
            self.prompts.append([list(p) for p in prompt_ids])
            return completion_ids, logprobs

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            output = super()._generate_and_score_completions(inputs)
            self.rollout_s.append(time.perf_counter() - t0)
            if self.first_rollout is None:
                self.first_rollout = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in output.items()}
            return output

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.first_inputs is None:
                self.first_inputs = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
                self.first_loss = float(loss.detach())
            return loss

        def training_step(self, model, inputs, num_items_in_batch):
            out = super().training_step(model, inputs, num_items_in_batch)
            if self.first_grads is None:  # before clipping and the optimizer step (with GA 1: this step's gradient)
                self.first_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                    if p.grad is not None}
            return out

    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    C = args.completion
    kw = dict(
        output_dir=out, per_device_train_batch_size=args.prompts * args.G, gradient_accumulation_steps=1,
        num_generations=args.G, max_completion_length=C, generation_kwargs={"min_new_tokens": C},
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group",
        epsilon=0.2, mask_truncated_completions=False, use_vllm=False, shuffle_dataset=False,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused",
        bf16=dtype == "bf16", fp16=False, use_cpu=True, logging_steps=1, report_to=[], save_strategy="no",
        dataloader_num_workers=0, seed=SEED, disable_tqdm=True, log_completions=False)
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    kw["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    cfg = trl.GRPOConfig(**kw)
    clock = Clock()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[length_reward], args=cfg,
                               train_dataset=datasets.Dataset.from_list(records), processing_class=tok,
                               callbacks=[clock])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    checkpointing = "is_activation_checkpointing" if hasattr(type(trainer.model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    assert not getattr(trainer.model, checkpointing), "trl: gradient checkpointing is still on"
    assert trainer.ref_model is None, "trl: a reference model was loaded (beta should be 0)"
    wait_for_idle(args.idle_wait)
    with CpuWatch() as watch, ForwardDtypes() as probe:
        trainer.train()
    probe.check(dtype, f"trl {dtype}")
    n = len(clock.ends)
    steps = durations(clock.ends, clock.start)
    return dict(steps=n, step_s=steps, rollout_s=trainer.rollout_s[:n], generate_s=trainer.generate_s[:n],
                gen_tokens=trainer.gen_tokens[:n], prompts=trainer.prompts[:n], losses=clock.losses,
                other=watch.other_load, computes=probe.summary(), first_rollout=trainer.first_rollout,
                first_inputs=trainer.first_inputs,
                first_grads=trainer.first_grads, first_loss=trainer.first_loss)


def alignlab_config(model_dir: str, args, out: str, dtype: str) -> grpo.GRPOConfig:
    tc = TrainConfig(max_steps=args.steps, lr=args.lr, schedule="constant", warmup_steps=0, weight_decay=0.0,
                     beta1=0.9, beta2=0.999, eps=1e-8, grad_clip=1.0, grad_accum=1, eval_every=0, save_every=0,
                     log_every=1, plot=False, peak_flops=1e11, seed=SEED, device="cpu", dtype=dtype)
    rollout = RolloutConfig(data=f"tinyworld:rl:{args.level}", num_generations=args.G, prompts_per_step=args.prompts,
                            max_prompt_len=1024, max_completion_length=args.completion, temperature=1.0, top_p=1.0,
                            top_k=0, reward_funcs={"bench_grpo:length_reward": 1.0}, allow_custom_rewards=True,
                            eval_prompts=0, engine=args.engine or RolloutConfig.engine)
    return grpo.GRPOConfig(
        out_dir=out, model=model_dir, algorithm="grpo", rollout=rollout, loss_type="dapo", scale_rewards="group",
        epsilon=0.2, beta=0.0, num_iterations=1, mask_truncated_completions=False, dynamic_sampling=False,
        reference="none", track_kl=False, method="full", train=tc)


def run_alignlab(model_dir: str, records: list[dict], args, out: str, dtype: str) -> dict:
    timed = {"collect": [], "prompts": [], "gen_tokens": []}
    original_generate, original_collect = collect_module.generate_rollouts, grpo.collect_rollouts

    def generate_rollouts(model, tok, prompt_ids, G, params, *a, **kw):
        # fixed-length completions: the recipe has no ignore_eos setting, the engine does
        rollout = original_generate(model, tok, prompt_ids, G, dataclasses.replace(params, ignore_eos=True), *a, **kw)
        timed["prompts"].append([list(p) for p in prompt_ids for _ in range(G)])
        timed["gen_tokens"].append(rollout.num_tokens)
        return rollout

    def collect(*a, **kw):
        t0 = time.perf_counter()
        try:
            return original_collect(*a, **kw)
        finally:
            timed["collect"].append(time.perf_counter() - t0)

    cfg = alignlab_config(model_dir, args, out, dtype)
    wait_for_idle(args.idle_wait)
    collect_module.generate_rollouts, grpo.collect_rollouts = generate_rollouts, collect
    try:
        with CpuWatch() as watch, ForwardDtypes() as probe:
            result = grpo.run(cfg, train_records=records, val_records=[])
    finally:
        collect_module.generate_rollouts, grpo.collect_rollouts = original_generate, original_collect
    probe.check(dtype, f"alignlab {dtype}")
    if result.get("status") != "finished":
        raise SystemExit(f"alignlab: the run did not finish ({result.get('status')})")
    with open(Path(out) / "metrics.jsonl") as f:
        log = [r for r in map(json.loads, f) if "loss" in r and "elapsed_s" in r]
    n = len(log)
    if [r.get("num_generated_tokens") for r in log] != timed["gen_tokens"][:n]:
        raise SystemExit("alignlab: the logged generated tokens are not the rollouts' (one rollout a step?)")
    return dict(steps=n, step_s=durations([r["elapsed_s"] for r in log]), rollout_s=timed["collect"][:n],
                generate_s=[r["rollout_s"] for r in log], gen_tokens=timed["gen_tokens"][:n],
                prompts=timed["prompts"][:n], losses=[r["loss"] for r in log], other=watch.other_load,
                computes=probe.summary())


# --- step 0: alignlab on trl's first batch -----------------------------------------------------------------

def check_step0(model_dir: str, trl_run: dict, args, dtype: str) -> dict:
    """alignlab's rewards -> advantages on trl's first completions, and alignlab's loss and gradient on trl's first
    training batch, from the same initial weights, in `dtype` (in bf16 also in fp32, for scale)."""
    tok = load_tokenizer(model_dir)
    pad = tok.pad_token_id
    first = trl_run["first_rollout"]
    ids, mask = first["completion_ids"], first["completion_mask"].bool()
    texts = [tok.decode(ids[i][mask[i]].tolist(), skip_special_tokens=True) for i in range(ids.shape[0])]
    rewards = torch.tensor(length_reward([[{"role": "assistant", "content": t}] for t in texts]))
    adv = group_advantages(rewards, args.G, scale="group")
    adv_err = float((adv - first["advantages"].float()).abs().max())

    x = trl_run["first_inputs"]
    comp, cmask = x["completion_ids"], x["completion_mask"].float()
    N, C = comp.shape
    prompts = [x["prompt_ids"][i][x["prompt_mask"][i].bool()].tolist() for i in range(N)]  # trl left-pads
    lens = [len(p) for p in prompts]
    input_ids = torch.full((N, max(lens) + C), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, :lens[i]] = torch.tensor(p)
        input_ids[i, lens[i]:lens[i] + C] = comp[i]
    batch = {"input_ids": input_ids, "prompt_lens": torch.tensor(lens), "completion_ids": comp,
             "completion_mask": cmask, "advantages": x["advantages"].float(), "loss_mask": cmask}
    theirs = trl_run["first_grads"]
    out = dict(advantage_max_abs_diff=adv_err, zero_std_groups=int((rewards.view(-1, args.G).std(-1) == 0).sum()),
               loss_trl=trl_run["first_loss"])
    for d in dict.fromkeys([dtype, "fp32"]):
        cfg = alignlab_config(model_dir, args, "unused", d)
        torch.manual_seed(SEED)
        model = load_model(model_dir, dtype=torch.float32)  # fp32 master weights at both dtypes
        model.train()
        with autocast_for(d, torch.device("cpu")):  # as the Trainer runs its loss_fn
            loss, _ = grpo.grpo_step(cfg)(model, batch, grpo.grpo_weight(cfg)(batch))
        loss.backward()
        errors, missing = {}, []
        for name, p in model.named_parameters():
            if name not in theirs or p.grad is None:
                missing.append(name)
                continue
            g = theirs[name]
            errors[name] = float((p.grad - g).norm() / g.norm().clamp(min=1e-30))
        ours_all = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n in errors])
        theirs_all = torch.cat([theirs[n].flatten() for n in errors])
        err_all = float((ours_all - theirs_all).norm() / theirs_all.norm())
        if d != dtype:  # fp32 against trl's bf16 gradient: how far bf16 rounding moves trl's own
            out["grad_rel_err_fp32_vs_trl"] = err_all
            continue
        worst = max(errors, key=errors.get)
        out.update(loss_alignlab=float(loss.detach()), params=len(errors), missing=missing,
                   grad_rel_err_max=errors[worst], grad_rel_err_worst=worst, grad_rel_err_all=err_all,
                   grad_norm_trl=float(theirs_all.norm()))
    return out


# --- main ------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=13, help="optimizer steps per run (the first --warmup not timed)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4, help="B, prompts a step")
    ap.add_argument("--G", type=int, default=8, help="num_generations, completions per prompt")
    ap.add_argument("--completion", type=int, default=64, help="new tokens per completion (exactly)")
    ap.add_argument("--level", type=int, default=3, help="TinyWorld level of the prompts")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--model", choices=tuple(MODELS), default="5M")
    ap.add_argument("--engine", choices=("static", "paged"), default=None,
                    help="alignlab's rollout engine (rollout.engine; default: RolloutConfig's)")
    ap.add_argument("--threads", type=int, default=2)
    add_dtype_argument(ap)
    ap.add_argument("--idle-wait", type=float, default=60.0, help="seconds to wait for idle CPUs before each run")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 5 steps (2 timed), 2 prompts x G=4 completions of 16 tokens, short idle waits")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.prompts, args.G, args.completion = 5, 2, 4, 16
        args.idle_wait = min(args.idle_wait, QUICK_IDLE_WAIT)
    if args.steps <= args.warmup:
        ap.error(f"--steps must be more than --warmup ({args.warmup})")
    dtypes = parse_dtypes(args.dtype, "train")
    torch.set_num_threads(args.threads)
    sys.modules.setdefault("bench_grpo", sys.modules[__name__])  # reward_funcs "bench_grpo:length_reward"
    import datasets
    import transformers as tf
    import trl

    datasets.disable_progress_bars()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    records = load_records(args.level)
    B, G, C = args.prompts, args.G, args.completion
    print(f"torch {torch.__version__}, transformers {tf.__version__}, trl {trl.__version__}, threads "
          f"{torch.get_num_threads()}; {len(records)} TinyWorld level-{args.level} prompts; {args.steps} steps "
          f"({args.warmup} untimed), {B} prompts x G={G} completions of exactly {C} tokens a step, lr {args.lr:g}, "
          f"loss dapo, beta 0, mu 1")
    print(describe(dtypes, "train"))
    by_dtype: dict[str, dict[str, dict]] = {}
    step0: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "base")
        world = TinyWorld(seed=0)
        build_model_dir(world.tokenizer_training_text(), args.model, 1024, model_dir)
        tok = load_tokenizer(model_dir)
        kept, prompt_ids = tokenize_prompts(tok, records, 1024, "tinyworld")
        assert len(kept) == len(records)
        # trl gets the prompts in the order alignlab's sampler visits them in its first epoch, and reads them in
        # that order (shuffle_dataset=False), so both answer the same prompts every step (while steps x B <= prompts)
        sampler = EpochSampler(len(records), B, SEED, what="prompts")
        sampler.next_indices()
        trl_records = [records[i] for i in sampler.order]
        lens = [len(p) for p in prompt_ids]
        n_params = sum(p.numel() for p in tf.LlamaForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model {args.model}: {n_params / 1e6:.2f}M parameters, vocab {VOCAB}; prompts (chat template) mean "
              f"{statistics.mean(lens):.0f} tokens (min {min(lens)}, max {max(lens)})", flush=True)

        for dtype in dtypes:
            runs = by_dtype[dtype] = {}
            runs["trl"] = run_trl(model_dir, trl_records, args, os.path.join(work, dtype, "trl"), dtype)
            step0[dtype] = check_step0(model_dir, runs["trl"], args, dtype)
            runs["alignlab"] = run_alignlab(model_dir, records, args, os.path.join(work, dtype, "alignlab"), dtype)

    want = B * G * C
    failed = []
    for dtype, runs in by_dtype.items():
        # the same prompts and the same number of generated tokens, every step
        n = min(r["steps"] for r in runs.values())
        same_prompts = runs["trl"]["prompts"][:n] == runs["alignlab"]["prompts"][:n]
        tokens = {name: r["gen_tokens"] for name, r in runs.items()}
        same = "the same prompt token ids every step on both sides" if same_prompts else "DIFFER between the sides"
        print(f"{dtype} prompts: {same}; generated tokens a step: "
              + ", ".join(f"{k} {sorted(set(v))}" for k, v in tokens.items()) + f" (want {want})")
        if not all(t == want for v in tokens.values() for t in v):
            failed.append(f"{dtype}: the sides did not generate B x G x C tokens every step")
        if not same_prompts:
            failed.append(f"{dtype}: the sides answered different prompts")
        s0 = step0[dtype]
        scale = (f"; for scale, alignlab's fp32 gradient vs trl's bf16 one: {s0['grad_rel_err_fp32_vs_trl']:.2e}"
                 if "grad_rel_err_fp32_vs_trl" in s0 else "")
        print(f"{dtype} step 0 (alignlab on trl's first batch, same weights): advantages max |diff| "
              f"{s0['advantage_max_abs_diff']:.2e} ({s0['zero_std_groups']} of {B} groups with zero reward std); "
              f"loss trl {s0['loss_trl']:+.6f}, alignlab {s0['loss_alignlab']:+.6f}; gradient: relative L2 error "
              f"{s0['grad_rel_err_all']:.2e} over {s0['params']} tensors (worst {s0['grad_rel_err_max']:.2e}, "
              f"{s0['grad_rel_err_worst']}), trl's gradient norm {s0['grad_norm_trl']:.4f}; tolerance "
              f"{MAX_GRAD_ERROR_ALL[dtype]:g} (all), {MAX_GRAD_ERROR[dtype]:g} (worst){scale}")
        if (s0["missing"] or s0["grad_rel_err_max"] > MAX_GRAD_ERROR[dtype]
                or s0["grad_rel_err_all"] > MAX_GRAD_ERROR_ALL[dtype] or s0["advantage_max_abs_diff"] > 1e-4):
            failed.append(f"{dtype} step 0: alignlab does not compute what trl computes (missing {s0['missing']})")
    if failed:
        raise SystemExit("; ".join(failed))

    w = args.warmup
    for runs in by_dtype.values():
        for r in runs.values():
            r["step_med"] = median_after(r["step_s"], w)
            r["rollout_med"] = median_after(r["rollout_s"], w)
            r["generate_med"] = median_after(r["generate_s"], w)
            r["train_med"] = median_after([s - ro for s, ro in zip(r["step_s"], r["rollout_s"])], w)
            r["tok_step"] = statistics.mean(r["gen_tokens"][w:])
            r["tok_s"] = r["tok_step"] / r["step_med"]
            r["gen_tok_s"] = r["tok_step"] / r["generate_med"]
            r["other_rollout"] = r["rollout_med"] - r["generate_med"]
    print()
    print(f"{'dtype':<5} {'side':<9} {'steps':>5} {'timed':>5} {'step s':>7} {'rollout s':>9} {'generate s':>10} "
          f"{'rew+adv s':>9} {'train s':>7} {'gen tok/step':>12} {'tok/s':>7} {'gen tok/s':>9} {'vs trl':>6} "
          f"{'other load':>10}  computes in (train; sampling)")
    for dtype, runs in by_dtype.items():
        ref = runs["trl"]
        for name, r in runs.items():
            print(f"{dtype:<5} {name:<9} {r['steps']:>5} {r['steps'] - w:>5} {r['step_med']:>7.3f} "
                  f"{r['rollout_med']:>9.3f} {r['generate_med']:>10.3f} {r['other_rollout']:>9.3f} "
                  f"{r['train_med']:>7.3f} {r['tok_step']:>12.0f} {r['tok_s']:>7.0f} {r['gen_tok_s']:>9.0f} "
                  f"{r['tok_s'] / ref['tok_s']:>5.2f}x {r['other']:>10.0%}  {r['computes']['grad']}; "
                  f"{r['computes']['no_grad']}")
    print("(medians over the timed steps; rew+adv s = rollout s - generate s: tokenising, decoding, rewards, "
          "advantages, rollout metrics; train s = step s - rollout s)")
    ratio, split = {}, {}
    for dtype, runs in by_dtype.items():
        al, ref = runs["alignlab"], runs["trl"]
        ratio[dtype] = al["tok_s"] / ref["tok_s"]
        split[dtype] = {"generate": ref["generate_med"] / al["generate_med"],
                        "train": ref["train_med"] / al["train_med"], "rollout": ref["rollout_med"] / al["rollout_med"]}
        sp = split[dtype]
        print(f"{dtype} alignlab / trl: {ratio[dtype]:.2f}x completion tokens/s (step time); generation "
              f"{sp['generate']:.2f}x, rollout {sp['rollout']:.2f}x, train {sp['train']:.2f}x faster")
    flat = {f"{dtype}/{name}": r for dtype, runs in by_dtype.items() for name, r in runs.items()}
    result = {
        "benchmark": "grpo", "ratio": {d: round(v, 3) for d, v in ratio.items()},
        "split_ratios": {d: {k: round(v, 3) for k, v in sp.items()} for d, sp in split.items()},
        "step_s": {k: round(r["step_med"], 4) for k, r in flat.items()},
        "rollout_s": {k: round(r["rollout_med"], 4) for k, r in flat.items()},
        "generate_s": {k: round(r["generate_med"], 4) for k, r in flat.items()},
        "train_s": {k: round(r["train_med"], 4) for k, r in flat.items()},
        "completion_tokens_per_s": {k: round(r["tok_s"], 1) for k, r in flat.items()},
        "generate_tokens_per_s": {k: round(r["gen_tok_s"], 1) for k, r in flat.items()},
        "other_load": {k: round(r["other"], 3) for k, r in flat.items()},
        "computes": {k: r["computes"] for k, r in flat.items()},
        "step0": {d: {"grad_rel_err": float(f"{s0['grad_rel_err_all']:.3g}"),
                      "grad_rel_err_max": float(f"{s0['grad_rel_err_max']:.3g}"),
                      "advantage_max_abs_diff": float(f"{s0['advantage_max_abs_diff']:.3g}"),
                      "loss": {"trl": s0["loss_trl"], "alignlab": round(s0["loss_alignlab"], 8)},
                      **({"grad_rel_err_fp32_vs_trl": float(f"{s0['grad_rel_err_fp32_vs_trl']:.3g}")}
                         if "grad_rel_err_fp32_vs_trl" in s0 else {})}
                  for d, s0 in step0.items()},
        "cpu": capability(), "steps": args.steps, "warmup": w, "prompts": B, "G": G, "completion": C,
        "threads": torch.get_num_threads(), "model": args.model, "engine": args.engine or RolloutConfig.engine,
    }
    if not all(math.isfinite(v) for v in (*ratio.values(), *(x for sp in split.values() for x in sp.values()))):
        raise SystemExit("non-finite timing")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
