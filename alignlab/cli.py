"""`alignlab <command>`: the command-line entry point.

Each command is a small function that parses nothing itself: argparse hands it a namespace. Errors a
user can fix (a bad path, a corrupt checkpoint, a wrong shape) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from alignlab.errors import UserError


def _load(model_dir: str, need_tokenizer: bool = True):
    from alignlab.model.hf import load_model, resolve_model_dir

    path = resolve_model_dir(model_dir)
    model = load_model(path)
    tokenizer = None
    if need_tokenizer:
        from alignlab.text import load_tokenizer

        tokenizer = load_tokenizer(path)
    return model, tokenizer


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


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
        ("weights", f"{_size(n * 4)} fp32, {_size(n * 2)} bf16"),
        ("KV cache", f"{_size(c.kv_cache_bytes(1, 1))}/token fp32; {_size(c.kv_cache_bytes(args.batch, args.seq_len))}"
                     f" for batch {args.batch} x {args.seq_len} tokens"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _params(args):
    from alignlab.infer import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop or [])


def cmd_generate(args):
    from alignlab.infer import Engine

    model, tokenizer = _load(args.model)
    engine = Engine(model, tokenizer)
    params = _params(args)
    if args.stream:
        for piece in engine.stream(args.prompt, params):
            print(piece, end="", flush=True)
        print()
    else:
        print(engine.generate([args.prompt], params)[0].text)


def cmd_chat(args):
    from alignlab.infer import Engine

    model, tokenizer = _load(args.model)
    if tokenizer.chat_template is None and args.template is None:
        raise UserError(f"{args.model}: the tokenizer has no chat template; pass --template chatml")
    engine = Engine(model, tokenizer)
    params = _params(args)
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


def cmd_demo(args):
    from alignlab.demo import run_demo

    run_demo(out_dir=args.out, steps=args.steps, seed=args.seed)


def cmd_pretrain(args):
    from alignlab.config import load_config
    from alignlab.recipes.pretrain import PretrainConfig, run

    run(load_config(PretrainConfig, args.config, args.overrides), resume=args.resume)


def cmd_sft(args):
    from alignlab.config import load_config
    from alignlab.recipes.sft import SFTConfig, run

    run(load_config(SFTConfig, args.config, args.overrides), resume=args.resume)


PIPELINE_EPILOG = """\
Each stage writes OUT/<stage>/ (an HF model directory, metrics.jsonl, plots) and, when it
finishes, OUT/<stage>/stage.json. A second run reuses finished stages and resumes an interrupted
one from its last checkpoint. The report is OUT/report.md and OUT/report.html."""


def cmd_dpo(args):
    from alignlab.config import load_config
    from alignlab.recipes.dpo import DPOConfig, run

    run(load_config(DPOConfig, args.config, args.overrides), resume=args.resume)


def cmd_grpo(args, config_class: str = "GRPOConfig"):
    from alignlab.config import load_config
    from alignlab.recipes import grpo

    grpo.run(load_config(getattr(grpo, config_class), args.config, args.overrides), resume=args.resume)


def cmd_ppo(args):
    from alignlab.config import load_config
    from alignlab.recipes.ppo import PPOConfig, run

    run(load_config(PPOConfig, args.config, args.overrides), resume=args.resume)


def cmd_pipeline(args):
    from alignlab.pipeline import run_pipeline

    run_pipeline(args.out, seed=args.seed, quick=args.quick, start=args.start, until=args.until)


def _add_sampling(p, temperature=0.0):
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def add_recipe(sub, name: str, fn, help: str, config_example: str, override_example: str):
    """A training command: `alignlab NAME [--config YAML] [--resume] [key=value ...]`."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", default=None, help=f"a YAML config (e.g. {config_example})")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {override_example}")
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture, parameters, FLOPs and memory of a model")
    p.add_argument("--model", required=True, help="model directory or Hugging Face Hub id")
    p.add_argument("--seq-len", type=int, default=None, help="context for FLOPs and KV cache (default: the model's)")
    p.add_argument("--batch", type=int, default=1)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("generate", help="complete a prompt (prints only the completion)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--stream", action="store_true")
    _add_sampling(p, temperature=0.0)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat with streaming, using the chat template")
    p.add_argument("--model", required=True)
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--template", default=None, help="a built-in chat template (e.g. chatml) to use instead")
    _add_sampling(p, temperature=0.7)
    p.set_defaults(fn=cmd_chat)

    add_recipe(sub, "pretrain", cmd_pretrain, "train a language model on raw text (from scratch or a checkpoint)",
               "configs/pretrain/shakespeare_char.yaml", "train.lr=3e-3")
    add_recipe(sub, "sft", cmd_sft, "supervised fine-tuning: full, LoRA or QLoRA, on the tokens each answer trains",
               "configs/sft/tinyworld.yaml", "method=lora")
    add_recipe(sub, "dpo", cmd_dpo, "preference optimisation: DPO, IPO, cDPO, SimPO, ORPO, KTO, SafeDPO (loss=...)",
               "configs/dpo/tinyworld.yaml", "loss=ipo beta=0.1")
    add_recipe(sub, "grpo", cmd_grpo, "GRPO (and DAPO, Dr. GRPO, GSPO) with verifiable rewards: G answers per prompt",
               "configs/grpo/tinyworld.yaml", "beta=0 loss_type=dr_grpo scale_rewards=none")
    add_recipe(sub, "rloo", lambda args: cmd_grpo(args, "RLOOConfig"), "RLOO: the GRPO recipe with leave-one-out "
               "advantages and trl's sequence-level loss", "configs/grpo/tinyworld.yaml", "beta=0.05")
    add_recipe(sub, "ppo", cmd_ppo, "PPO with a value model: GAE(gamma, lambda), clipped policy and value losses, "
               "verifiable rewards", "configs/ppo/tinyworld.yaml", "kl_coef=0.05 num_ppo_epochs=4")

    from alignlab.recipes.reward_model import add_reward_model_parser

    add_reward_model_parser(sub)

    from alignlab.data.sft import add_inspect_parser
    from alignlab.eval.world_suite import add_eval_world_parser
    from alignlab.memory import add_memory_parser

    add_inspect_parser(sub)
    add_memory_parser(sub)
    add_eval_world_parser(sub)

    from alignlab import pipeline

    stages = "\n".join(f"  {s.name:<10} {s.help}" for s in pipeline.STAGES)
    p = sub.add_parser("pipeline", help="the main job: every stage on TinyWorld, then a report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a tiny model through every stage on TinyWorld (a synthetic world of "
                                   "arithmetic, a town and a secret) and write a report of what each stage changed.",
                       epilog=f"stages, in order:\n{stages}\n\n" + PIPELINE_EPILOG)
    p.add_argument("--out", default="runs/pipeline", help="the run directory (default: runs/pipeline)")
    p.add_argument("--seed", type=int, default=0, help="TinyWorld's seed and the training seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="a small world and model, for a smoke test (about a minute)")
    p.add_argument("--from", dest="start", metavar="STAGE", choices=[s.name for s in pipeline.STAGES],
                   help="redo this stage and every later one (finished stages are otherwise reused)")
    p.add_argument("--until", metavar="STAGE", choices=[s.name for s in pipeline.STAGES],
                   help="stop after this stage")
    p.set_defaults(fn=cmd_pipeline)

    p = sub.add_parser("demo", help="train a tiny model from scratch on arithmetic and sample from it")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jinja2 import TemplateError

    from alignlab.model.hf import CheckpointError
    from alignlab.train.trainer import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (UserError, CheckpointError, OSError, ValueError, TemplateError) as e:
        kind = "chat template error: " if isinstance(e, TemplateError) else ""
        print(f"alignlab {args.command}: error: {kind}{e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"alignlab {args.command}: training diverged: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
