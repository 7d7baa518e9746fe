"""`alignlab agent-rl`: trajectory-group RL on multi-turn environments (recipes/agent_rl.py)."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.errors import UserError


def agent_rl_arguments(p):
    p.description = ("Trajectory-group GRPO on a multi-turn environment (tictactoe, guess, tools): G games from each "
                     "start state, group-relative advantages per game, the loss on the agent's tokens only. "
                     "--write-format-data writes the environment's move-format chats for `alignlab sft` first.")
    p.add_argument("--config", default=None, help="a YAML config")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--write-format-data", metavar="FILE", default=None,
                   help="write format SFT chats for env=... (tictactoe: random legal moves) to FILE and exit")
    p.add_argument("--examples", type=int, default=4000, help="chats --write-format-data writes (default 4000)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. env=tictactoe model=runs/ttt/sft/model train.max_steps=60")


def cmd_agent_rl(args):
    from alignlab.config import load_config
    from alignlab.recipes.agent_rl import AgentRLConfig, run

    cfg = load_config(AgentRLConfig, args.config, args.overrides)
    if args.write_format_data:
        write_format_data(cfg.env, args.examples, cfg.train.seed, Path(args.write_format_data))
        return
    run(cfg, resume=args.resume)


def write_format_data(env: str, n: int, seed: int, path: Path) -> None:
    from alignlab.envs import legal_move_records

    if env != "tictactoe":
        raise UserError(f"--write-format-data: only env=tictactoe has format chats (random legal moves), not {env!r}")
    records = legal_move_records(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"{len(records)} tic-tac-toe chats (a board, a random legal move) -> {path}")


def ace_arguments(p):
    p.description = ("ACE: Generator (the model answers with the playbook in its context), Reflector (lessons from "
                     "its failures: TinyWorld's worked steps by rule, or a chat model), Curator (small deduplicated "
                     "delta edits with helpful/harmful counts); then held-out accuracy with the playbook against "
                     "the fixed prompt, with a paired bootstrap CI. See alignlab/ace.py.")
    p.add_argument("--model", required=True, help="a chat model directory, or an OpenAI-compatible base URL")
    p.add_argument("--served-model", default=None, help="with a URL: the model name to ask for")
    p.add_argument("--api-key", default="none")
    p.add_argument("--source", default="tinyworld:rl:3-4", help="training tasks (a tasks source with answers)")
    p.add_argument("--val-source", default="tinyworld:rl:3-4:test@0", help="held-out tasks")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=48, help="training tasks a round")
    p.add_argument("--val-tasks", type=int, default=200)
    p.add_argument("--reflector", choices=("rules", "model"), default="rules",
                   help="rules: TinyWorld's worked steps; model: the --reflect-with model writes lessons")
    p.add_argument("--reflect-with", default=None, help="reflector=model: a chat model directory or URL "
                   "(default: --model)")
    p.add_argument("--max-entries", type=int, default=10, help="the playbook's budget in entries")
    p.add_argument("--no-gate", action="store_true",
                   help="keep every edit (ACE as published); by default an edit that lowers the round's score is "
                        "rejected")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ace")


def chat_solver(model: str, served: str | None, api_key: str, max_new_tokens: int):
    """(solve: prompts -> replies, chat: one prompt -> reply, count_tokens) for a model directory or a URL."""
    if model.startswith(("http://", "https://")):
        from concurrent.futures import ThreadPoolExecutor

        from alignlab.tools.agent import OpenAIChat

        if not served:
            raise UserError("--served-model: the model name to ask the server for is not set")
        client = OpenAIChat(model, served, api_key, max_tokens=max_new_tokens, temperature=0.0)

        def chat(messages):
            return client(messages, [])["content"] or ""

        def solve(prompts):
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(chat, prompts))

        return solve, chat, lambda text: len(text.split())
    from alignlab.eval.world_suite import generate_replies
    from alignlab.model.hf import load_model, resolve_model_dir
    from alignlab.text import load_tokenizer

    path = resolve_model_dir(model)
    lm, tok = load_model(path), load_tokenizer(path)

    def solve(prompts):
        return generate_replies(lm, tok, prompts, max_new_tokens)

    return solve, lambda messages: solve([messages])[0], lambda text: len(tok.encode(text, add_special_tokens=False))


def cmd_ace(args):
    from alignlab.ace import ACEConfig, CuratorConfig, run_ace

    solve, chat, count = chat_solver(args.model, args.served_model, args.api_key, args.max_new_tokens)
    reflect_chat = None
    if args.reflector == "model":
        reflect_chat = chat if not args.reflect_with else chat_solver(args.reflect_with, args.served_model,
                                                                      args.api_key, args.max_new_tokens)[1]
    cfg = ACEConfig(source=args.source, val_source=args.val_source, rounds=args.rounds, per_round=args.per_round,
                    val_tasks=args.val_tasks, reflector=args.reflector, gate=not args.no_gate, seed=args.seed,
                    curator=CuratorConfig(max_entries=args.max_entries))
    r = run_ace(solve, cfg, Path(args.out), count, reflect_chat)
    lo, hi = r["difference_ci"]
    print(f"held-out accuracy ({r['val_tasks']} tasks): fixed prompt {r['fixed_prompt']:.1%}, playbook "
          f"{r['playbook']:.1%} ({r['entries']} entries, {r['context_tokens']} tokens); difference "
          f"{r['difference']:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}); {args.out}/playbook.json, "
          f"{args.out}/plots/ace.png")
