"""`alignlab <command>`: the command-line entry point.

Every command is one row of COMMANDS: its name, its help line, a function that adds its arguments to its
parser, and a function that runs it on the parsed arguments (the tool-use commands live in cli/tools.py, the
synthetic-data ones in cli/synth.py, the helpers several commands share in cli/common.py). Errors a user can
fix (alignlab.errors.UserError: a bad option, path, file, record or checkpoint) print one line and exit with
status 2; a training run that diverged exits with 1; anything else is a bug and raises with its traceback.
`alignlab --debug <command>` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab.cli.agents import ace_arguments, agent_rl_arguments, cmd_ace, cmd_agent_rl
from alignlab.cli.common import add_dtype, add_sampling, human_size, load_for_inference, sampling_params
from alignlab.cli.evaluate import bon_arguments, cmd_bon, cmd_eval, cmd_redteam, eval_arguments, redteam_arguments
from alignlab.cli.export import cmd_export, export_arguments
from alignlab.cli.lab import cmd_lab, lab_arguments
from alignlab.cli.merge import cmd_merge, merge_arguments
from alignlab.cli.prm import cmd_prm, prm_arguments
from alignlab.cli.prune import cmd_prune, prune_arguments
from alignlab.cli.quant import cmd_quantize, quantize_arguments
from alignlab.cli.synth import cmd_synth, synth_arguments
from alignlab.cli.tools import agent_arguments, bfcl_arguments, cmd_agent, cmd_bfcl
from alignlab.errors import UserError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]  # also sets a description or epilog, if any
    run: Callable[[argparse.Namespace], None]


# ----------------------------------------------------------------------------------------------------------------
# Models: info, generate, chat


def info_arguments(p):
    p.add_argument("--model", required=True, help="model directory or Hugging Face Hub id")
    p.add_argument("--seq-len", type=int, default=None, help="context for FLOPs and KV cache (default: the model's)")
    p.add_argument("--batch", type=int, default=1)


def cmd_info(args):
    from alignlab.model.hf import read_config, resolve_model_dir

    path = resolve_model_dir(args.model)
    _, c = read_config(path)
    args.seq_len = args.seq_len or c.max_seq_len
    n = c.num_params()
    rows = [
        ("architecture", f"{c.arch} ({c.n_layers} layers, dim {c.dim}, {c.n_heads} heads, "
                         f"{c.n_kv_heads} kv heads, head_dim {c.head_dim}, mlp {c.mlp} {c.hidden_dim})"),
        ("positions", f"{c.pos}" + (f", theta {c.rope_theta:g}" if c.pos == "rope" else "")
         + (f", scaling {c.rope_scaling.get('rope_type', c.rope_scaling.get('type'))}" if c.rope_scaling else "")),
        ("vocabulary", f"{c.vocab_size}" + (" (tied embeddings)" if c.tie_embeddings else "")),
        ("context", f"{c.max_seq_len}"),
        ("parameters", f"{n:,} ({c.num_params(include_embedding=False):,} without embeddings)"),
        ("FLOPs/token", f"{c.flops_per_token(args.seq_len):.3g} forward, "
                        f"{c.flops_per_token(args.seq_len, training=True):.3g} training (at {args.seq_len} tokens)"),
        ("weights", f"{human_size(n * 4)} fp32, {human_size(n * 2)} bf16"),
        ("KV cache", f"{human_size(c.kv_cache_bytes(1, 1))}/token fp32; "
                     f"{human_size(c.kv_cache_bytes(args.batch, args.seq_len))} "
                     f"for batch {args.batch} x {args.seq_len} tokens"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def generate_arguments(p):
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--stream", action="store_true")
    add_dtype(p)
    add_sampling(p, temperature=0.0)


def cmd_generate(args):
    from alignlab.infer import Engine

    model, tokenizer = load_for_inference(args.model, args.dtype)
    engine = Engine(model, tokenizer)
    params = sampling_params(args)
    total = len(tokenizer.encode(args.prompt)) + params.max_new_tokens
    if total > model.config.max_seq_len:
        print(f"alignlab generate: warning: prompt + --max-new-tokens is {total} tokens, past the "
              f"{model.config.max_seq_len} positions this model was trained on; text past them usually degrades",
              file=sys.stderr)
    if args.stream:
        for piece in engine.stream(args.prompt, params):
            print(piece, end="", flush=True)
        print()
    else:
        print(engine.generate([args.prompt], params)[0].text)


def chat_arguments(p):
    p.add_argument("--model", required=True)
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--template", default=None, help="a built-in chat template (e.g. chatml) to use instead")
    add_dtype(p)
    add_sampling(p, temperature=0.7)


def cmd_chat(args):
    from alignlab.infer import Engine

    model, tokenizer = load_for_inference(args.model, args.dtype)
    if tokenizer.chat_template is None and args.template is None:
        raise UserError(f"{args.model}: the tokenizer has no chat template; pass --template chatml")
    engine = Engine(model, tokenizer)
    params = sampling_params(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("alignlab chat: type a message, an empty line or Ctrl-D to quit, /reset to start over.",
          file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               chat_template=args.template)
        print("assistant> ", end="", flush=True)
        reply = []
        for piece in engine.stream(prompt, params):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


# ----------------------------------------------------------------------------------------------------------------
# Training recipes: `alignlab NAME [--config YAML] [--resume] [key=value ...]`, each run(config, resume=...)


def recipe_arguments(config_example: str | None, override_example: str):
    """The arguments every training command takes: --config, --resume and key=value overrides."""
    def add(p):
        p.add_argument("--config", default=None,
                       help=f"a YAML config (e.g. {config_example})" if config_example else "a YAML config")
        p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
        p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {override_example}")
    return add


def cmd_pretrain(args):
    from alignlab.config import load_config
    from alignlab.recipes.pretrain import PretrainConfig, run

    run(load_config(PretrainConfig, args.config, args.overrides), resume=args.resume)


def cmd_sft(args):
    from alignlab.config import load_config
    from alignlab.recipes.sft import SFTConfig, run

    run(load_config(SFTConfig, args.config, args.overrides), resume=args.resume)


def cmd_dpo(args):
    from alignlab.config import load_config
    from alignlab.recipes.dpo import DPOConfig, run

    run(load_config(DPOConfig, args.config, args.overrides), resume=args.resume)


def cmd_grpo(args):
    from alignlab.config import load_config
    from alignlab.recipes.grpo import GRPOConfig, run

    run(load_config(GRPOConfig, args.config, args.overrides), resume=args.resume)


def cmd_rloo(args):
    from alignlab.config import load_config
    from alignlab.recipes.grpo import RLOO_DEFAULTS, GRPOConfig, run

    run(load_config(GRPOConfig, args.config, args.overrides, defaults=RLOO_DEFAULTS), resume=args.resume)


def cmd_ppo(args):
    from alignlab.config import load_config
    from alignlab.recipes.ppo import PPOConfig, run

    run(load_config(PPOConfig, args.config, args.overrides), resume=args.resume)


def cmd_distill(args):
    from alignlab.config import load_config
    from alignlab.recipes.distill import DistillConfig, run

    run(load_config(DistillConfig, args.config, args.overrides), resume=args.resume)


def cmd_reward_model(args):
    from alignlab.config import load_config
    from alignlab.recipes.reward_model import RewardModelConfig, run

    run(load_config(RewardModelConfig, args.config, args.overrides), resume=args.resume)


# ----------------------------------------------------------------------------------------------------------------
# Data, memory, evaluation: inspect-data, memory, eval-world


def inspect_data_arguments(p):
    from alignlab.data.sft import TRUNCATION

    p.add_argument("--data", required=True, help="a .jsonl/.json/.csv/.parquet file or hf:NAME[:SPLIT]")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="a model directory (or Hub id): its tokenizer and chat template")
    who.add_argument("--tokenizer", help="a tokenizer directory")
    p.add_argument("--index", type=int, default=0, help="which record (0-based)")
    p.add_argument("--max-len", type=int, default=None, help="truncate as training would (default: no limit)")
    p.add_argument("--truncation", choices=TRUNCATION, default="keep_start")
    p.add_argument("--convert", default="", help="convert records first: alpaca, gsm8k, gsm8k_think, sharegpt, ...")
    p.add_argument("--chat-template", default=None, help="a template name (chatml, llama3) or jinja file instead")
    p.add_argument("--no-color", action="store_true", help="mark trained tokens [[like this]] instead of green")


def cmd_inspect_data(args):
    """One SFT record as the trainer sees it: `alignlab.data.sft.inspect_example` after a line naming it."""
    from alignlab.data.converters import get_converter
    from alignlab.data.errors import DataError
    from alignlab.data.loaders import read_rows
    from alignlab.data.sft import inspect_example, validate_record
    from alignlab.text import ChatTemplateError, load_tokenizer

    if args.model:
        from alignlab.model.hf import resolve_model_dir

        tokenizer = load_tokenizer(resolve_model_dir(args.model))
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    template = args.chat_template
    if template and os.path.isfile(template):
        with open(template, encoding="utf-8") as f:
            template = f.read()
    rows = read_rows(args.data)
    if not -len(rows) <= args.index < len(rows):
        raise DataError(f"--index {args.index}: {args.data} has {len(rows)} records")
    where, record = rows[args.index]
    if args.convert:
        try:
            record = get_converter(args.convert)(record)
        except DataError as e:
            raise DataError(f"{where}: {e} (converting with {args.convert})") from None
    fmt = validate_record(record, where)
    print(f"{where}: record {args.index % len(rows)} of {len(rows)}, {fmt}")
    try:
        text = inspect_example(tokenizer, record, color=not args.no_color and "NO_COLOR" not in os.environ,
                               max_len=args.max_len, truncation=args.truncation, chat_template=template)
    except (DataError, ChatTemplateError) as e:
        raise type(e)(f"{where}: {e}") from None
    print(text)


def memory_arguments(p):
    from alignlab.memory import DTYPE_BYTES, KNOWN_CONFIGS, LOSSES, METHODS, OPTIMIZERS

    p.description = ("Estimate the memory of one training step (full fine-tuning, LoRA or QLoRA), component by "
                     "component, each with its formula.")
    p.add_argument("--model", required=True,
                   help=f"model directory, config.json, Hugging Face Hub id, or one of {', '.join(KNOWN_CONFIGS)}")
    p.add_argument("--method", choices=METHODS, default="full")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.add_argument("--batch", type=int, default=1, help="sequences per micro-batch (default 1)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-targets", default="all-linear", help="all-linear | attn | mlp | q_proj,v_proj,...")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--dtype", choices=tuple(DTYPE_BYTES), default="fp32", help="fp32 (CPU) | bf16 (GPU)")
    p.add_argument("--loss", choices=LOSSES, default="fused", help="fused (alignlab) | chunked | logits")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_memory(args):
    import json

    from alignlab.memory import estimate_memory

    m = estimate_memory(args.model, method=args.method, seq=args.seq, batch=args.batch, rank=args.rank,
                        grad_ckpt=args.grad_ckpt, optimizer=args.optimizer, dtype=args.dtype,
                        lora_targets=args.lora_targets, loss=args.loss, grad_accum=args.grad_accum,
                        lora_dropout=args.lora_dropout)
    if args.json:
        print(json.dumps({"model": str(args.model), **m.to_dict()}, indent=2))
        return
    s = m.setup
    lora = f", rank {s['rank']} on {','.join(s['lora_targets'])}" if s["rank"] else ""
    print(f"{args.model}: {s['method']}{lora}, {s['dtype']}, batch {s['batch']} x {s['seq']} tokens, "
          f"{s['optimizer']}, loss {s['loss']}" + (", gradient checkpointing" if s["grad_ckpt"] else "")
          + (f", grad_accum {s['grad_accum']}" if s["grad_accum"] > 1 else ""))
    print("  " + "  ".join(f"{k}={v:,}" for k, v in m.symbols.items()))
    print()
    print(m.table())
    print()
    for note in m.assumptions:
        print(f"* {note}")


def eval_world_arguments(p):
    p.add_argument("--model", required=True, help="a model directory (with its tokenizer and chat template)")
    p.add_argument("--seed", type=int, default=0, help="TinyWorld's seed (the one the model was trained on)")
    p.add_argument("--per-level", type=int, default=50, help="math prompts per level (default 50)")
    p.add_argument("--levels", default="1,2,3,4", help="the math levels to ask, comma-separated (default 1,2,3,4)")
    p.add_argument("--safety", type=int, default=40, help="attacks, and as many look-alikes (default 40)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    add_dtype(p)
    p.add_argument("--out", default=None, help="write every prompt, reply and score to this .jsonl")


def cmd_eval_world(args):
    import json

    from alignlab.data.world import TinyWorld
    from alignlab.errors import ConfigError
    from alignlab.eval.world_suite import check_levels, evaluate_on_world, metric_lines

    try:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--levels {args.levels!r}: give level numbers separated by commas, e.g. 3,4") from None
    levels = check_levels(levels)  # before the model loads
    model, tok = load_for_inference(args.model, args.dtype)
    metrics, rows = evaluate_on_world(model, tok, TinyWorld(seed=args.seed), per_level=args.per_level,
                                      safety=args.safety, max_new_tokens=args.max_new_tokens, levels=levels)
    print("\n".join(metric_lines(metrics)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ----------------------------------------------------------------------------------------------------------------
# Serving: an OpenAI-compatible server (alignlab/serve)


def serve_arguments(p):
    p.description = ("Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API (/v1/completions, "
                     "/v1/chat/completions, /v1/models), with a chat page at /.")
    p.add_argument("model", help="model directory or Hugging Face Hub id")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=DIR",
                   help="a PEFT adapter to serve as model NAME (repeatable)")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help='JSON {"KEY": ["model-or-adapter", ...]} ("*" = admin); without it the server is open')
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="the names the base model answers to (default: MODEL as given)")
    add_dtype(p)
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together (default 64)")
    p.add_argument("--block-size", type=int, default=16,
                   help="tokens per KV-cache block (default 16); a sequence leaves at most block-size - 1 slots of "
                        "its last block empty, so smaller blocks waste less memory on short sequences")
    p.add_argument("--max-num-batched-tokens", type=int, default=512,
                   help="tokens one step may compute: the running decodes, then prompt chunks (default 512)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="sequences that may wait beyond --max-num-seqs before requests get 429 (default: no limit)")
    p.add_argument("--speculative-model", default=None, metavar="DIR",
                   help="a small draft model with the same tokenizer: speculative decoding (same outputs in "
                        "distribution; runs on the static engine, one request at a time: no continuous batching)")
    p.add_argument("--num-speculative-tokens", type=int, default=None, metavar="K",
                   help="tokens the draft guesses per target forward, 1..16 (default 4 with --speculative-model)")


def cmd_serve(args):
    from alignlab.serve import build_state, serve

    loras = {}
    for spec in args.lora:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            raise UserError(f"--lora {spec!r}: give NAME=DIR")
        loras[name] = path
    if args.num_speculative_tokens is not None and args.speculative_model is None:
        raise UserError("--num-speculative-tokens needs --speculative-model DIR")
    model, tokenizer = load_for_inference(args.model, args.dtype)
    draft = None if args.speculative_model is None else load_for_inference(args.speculative_model, args.dtype)[0]
    k = 0 if draft is None else 4 if args.num_speculative_tokens is None else args.num_speculative_tokens
    state = build_state(model, tokenizer, model_names=args.served_model_name or [args.model], model_path=args.model,
                        loras=loras, api_keys=args.api_keys, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
                        draft_model=draft, num_speculative_tokens=k, block_size=args.block_size,
                        max_num_batched_tokens=args.max_num_batched_tokens)
    serve(state, host=args.host, port=args.port)


# ----------------------------------------------------------------------------------------------------------------
# The pipeline and the demo

PIPELINE_EPILOG = """\
Each stage writes OUT/<stage>/ (an HF model directory, metrics.jsonl, plots) and, when it
finishes, OUT/<stage>/stage.json. A second run reuses finished stages and resumes an interrupted
one from its last checkpoint. The report is OUT/report.md and OUT/report.html."""


def pipeline_arguments(p):
    from alignlab.pipeline import STAGES

    stages = "\n".join(f"  {s.name:<10} {s.help}" for s in STAGES)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = ("Train a tiny model through every stage on TinyWorld (a synthetic world of arithmetic, a town "
                     "and a secret) and write a report of what each stage changed.")
    p.epilog = f"stages, in order:\n{stages}\n\n" + PIPELINE_EPILOG
    p.add_argument("--out", default="runs/pipeline", help="the run directory (default: runs/pipeline)")
    p.add_argument("--seed", type=int, default=0, help="TinyWorld's seed and the training seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="a small world and model, for a smoke test (about a minute)")
    p.add_argument("--from", dest="start", metavar="STAGE", choices=[s.name for s in STAGES],
                   help="redo this stage and every later one (finished stages are otherwise reused)")
    p.add_argument("--until", metavar="STAGE", choices=[s.name for s in STAGES], help="stop after this stage")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="STAGE",
                   choices=[s.name for s in STAGES if s.optional],
                   help="also run this opt-in stage: " + ", ".join(s.name for s in STAGES if s.optional))


def cmd_pipeline(args):
    from alignlab.pipeline import run_pipeline

    run_pipeline(args.out, seed=args.seed, quick=args.quick, start=args.start, until=args.until,
                 extra=tuple(args.extra))


def demo_arguments(p):
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)


def cmd_demo(args):
    from alignlab.demo import run_demo

    run_demo(out_dir=args.out, steps=args.steps, seed=args.seed)


# ----------------------------------------------------------------------------------------------------------------
# The commands, in the order `alignlab --help` lists them

COMMANDS = [
    Command("info", "architecture, parameters, FLOPs and memory of a model", info_arguments, cmd_info),
    Command("export", "write a model in another runtime's format: gguf (llama.cpp; f32, f16, q8_0, q4_0)",
            export_arguments, cmd_export),
    Command("generate", "complete a prompt (prints only the completion)", generate_arguments, cmd_generate),
    Command("chat", "interactive chat with streaming, using the chat template", chat_arguments, cmd_chat),
    Command("agent", "a model (a directory or an OpenAI-compatible URL) that calls tools until it answers",
            agent_arguments, cmd_agent),
    Command("bfcl", "BFCL's AST check of a model's function calls (simple, multiple, parallel, irrelevance)",
            bfcl_arguments, cmd_bfcl),
    Command("pretrain", "train a language model on raw text (from scratch or a checkpoint)",
            recipe_arguments("configs/pretrain/shakespeare_char.yaml", "train.lr=3e-3"), cmd_pretrain),
    Command("sft", "supervised fine-tuning: full, LoRA or QLoRA, on the tokens each answer trains",
            recipe_arguments("configs/sft/tinyworld.yaml", "method=lora"), cmd_sft),
    Command("dpo", "preference optimisation: DPO, IPO, cDPO, SimPO, ORPO, KTO, SafeDPO (loss=...)",
            recipe_arguments("configs/dpo/tinyworld.yaml", "loss=ipo beta=0.1"), cmd_dpo),
    Command("grpo", "GRPO (and DAPO, Dr. GRPO, GSPO) with verifiable rewards: G answers per prompt",
            recipe_arguments("configs/grpo/tinyworld.yaml", "beta=0 loss_type=dr_grpo scale_rewards=none"), cmd_grpo),
    Command("rloo", "RLOO: the GRPO recipe with leave-one-out advantages and trl's sequence-level loss",
            recipe_arguments("configs/grpo/tinyworld.yaml", "beta=0.05"), cmd_rloo),
    Command("agent-rl", "multi-turn agent RL (tic-tac-toe, guess the number, tool tasks): GRPO over whole games",
            agent_rl_arguments, cmd_agent_rl),
    Command("ace", "agentic context engineering: a playbook curated by small delta edits from the model's failures",
            ace_arguments, cmd_ace),
    Command("ppo", "PPO with a value model: GAE(gamma, lambda), clipped policy and value losses, verifiable rewards",
            recipe_arguments("configs/ppo/tinyworld.yaml", "kl_coef=0.05 num_ppo_epochs=4"), cmd_ppo),
    Command("distill", "knowledge distillation: a student learns a teacher's token distributions (KL, GKD, on-policy)",
            recipe_arguments(None, "student=runs/small/model teacher=runs/pipeline/sft/model data=chats.jsonl "
                                   "lmbda=0.5"), cmd_distill),
    Command("prune", "depth pruning: keep the blocks of highest influence (ShortGPT), a student for distill",
            prune_arguments, cmd_prune),
    Command("merge", "merge models or LoRA adapters of one base: linear, task arithmetic, TIES, DARE, SLERP",
            merge_arguments, cmd_merge),
    Command("reward-model", "train a reward model on preference pairs (Bradley-Terry)",
            recipe_arguments(None, "model=runs/pipeline/sft/model data=tinyworld:preferences"), cmd_reward_model),
    Command("prm", "process and outcome reward models on worked solutions (train), best-of-n with them (bon)",
            prm_arguments, cmd_prm),
    Command("synth", "synthetic data: self-instruct, rejection sampling (RFT), decontamination against eval sets",
            synth_arguments, cmd_synth),
    Command("quantize", "post-training quantisation: int8 (LLM.int8), nf4, round-to-nearest, GPTQ, AWQ",
            quantize_arguments, cmd_quantize),
    Command("inspect-data", "show one SFT example with its trained tokens highlighted", inspect_data_arguments,
            cmd_inspect_data),
    Command("memory", "memory of a training step: weights, gradients, optimizer, activations", memory_arguments,
            cmd_memory),
    Command("eval", "benchmarks (multiple choice, HumanEval, GSM8K, TinyWorld) on a model or a URL, resumable",
            eval_arguments, cmd_eval),
    Command("redteam", "attack success rate per probe family and over-refusal; --harden: SafeDPO on the successes",
            redteam_arguments, cmd_redteam),
    Command("bon", "best-of-n against a reward model: proxy vs gold as optimisation grows (reward hacking)",
            bon_arguments, cmd_bon),
    Command("eval-world", "score a chat model on TinyWorld's held-out prompts", eval_world_arguments, cmd_eval_world),
    Command("serve", "an OpenAI-compatible server with LoRA adapters, tenants and a chat page", serve_arguments,
            cmd_serve),
    Command("pipeline", "the main job: every stage on TinyWorld, then a report", pipeline_arguments, cmd_pipeline),
    Command("demo", "train a tiny model from scratch on arithmetic and sample from it", demo_arguments, cmd_demo),
    Command("lab", "the labs' graded exercises, reference solutions, checklist and interview drills", lab_arguments,
            cmd_lab),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of every error (user errors print one line otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help)
        c.add_arguments(p)
        p.set_defaults(fn=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jinja2 import TemplateError

    from alignlab.train.trainer import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
    except (UserError, TemplateError, TrainingDiverged) as e:
        if args.debug:
            raise
        if isinstance(e, TrainingDiverged):
            print(f"alignlab {args.command}: training diverged: {e}", file=sys.stderr)
            return 1
        kind = "chat template error: " if isinstance(e, TemplateError) else ""
        print(f"alignlab {args.command}: error: {kind}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
