"""Commands for tool use: `alignlab agent` (a model that calls tools until it answers) and `alignlab bfcl`
(BFCL's AST check of a model's calls)."""

from __future__ import annotations

import sys

from alignlab.cli.common import add_dtype, add_sampling, load_for_inference, sampling_params
from alignlab.errors import UserError


def _backend_arguments(p):
    p.add_argument("--model", required=True,
                   help="a model directory (run here with alignlab's engine) or an OpenAI-compatible base URL")
    p.add_argument("--served-model", default=None, help="with a URL: the model name to ask for (default: the first "
                                                        "one /models lists)")
    p.add_argument("--api-key", default="none")
    p.add_argument("--template", default=None, help="a chat template (e.g. chatml) instead of the tokenizer's")
    p.add_argument("--format", default="hermes", choices=("hermes", "llama3", "pythonic"),
                   help="how the local model writes its calls (the template's format)")
    add_dtype(p)
    add_sampling(p)


def _chat_backend(args):
    """The model as a chat backend (messages, tools) -> assistant message: alignlab's engine for a directory, the
    server's /chat/completions for a URL."""
    from alignlab.tools.agent import LocalChat, OpenAIChat

    if args.model.startswith(("http://", "https://")):
        import httpx

        name = args.served_model
        if name is None:
            listed = httpx.get(args.model.rstrip("/") + "/models", headers={"Authorization": f"Bearer {args.api_key}"})
            name = listed.json()["data"][0]["id"]
        return OpenAIChat(args.model, name, api_key=args.api_key, max_tokens=args.max_new_tokens,
                          temperature=args.temperature)
    from alignlab.infer import Engine

    model, tokenizer = load_for_inference(args.model, args.dtype)
    if tokenizer.chat_template is None and args.template is None:
        raise UserError(f"{args.model}: the tokenizer has no chat template; pass --template chatml")
    return LocalChat(Engine(model, tokenizer), sampling_params(args), fmt=args.format, chat_template=args.template)


def agent_arguments(p):
    _backend_arguments(p)
    p.add_argument("--tools", default="calculator", help="comma list of built-in tools: calculator, python")
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-turns", type=int, default=5)
    p.add_argument("--out", default=None, help="append the transcript to this JSON Lines file")


def cmd_agent(args):
    from alignlab.tools import ToolBox
    from alignlab.tools.agent import run_agent

    try:
        box = ToolBox(builtins=[t.strip() for t in args.tools.split(",") if t.strip()])
    except ValueError as e:
        raise UserError(str(e)) from None
    chat = _chat_backend(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    result = run_agent(chat, messages, box, max_turns=args.max_turns)
    for m in result.messages[len(messages):]:
        calls = "".join(f"\n  -> {c['function']['name']}({c['function']['arguments']})"
                        for c in m.get("tool_calls", []))
        print(f"{m['role']}> {m.get('content') or ''}{calls}")
    print(f"({result.turns} turns, {result.calls} tool calls, {'finished' if result.finished else 'turn limit'})",
          file=sys.stderr)
    if args.out:
        result.save(args.out)


def bfcl_arguments(p):
    from alignlab.eval.bfcl import CATEGORIES

    _backend_arguments(p)
    p.add_argument("--data", default="../shared/data/bfcl", help="the folder of BFCL_v4_<category>.json files and "
                                                                  "possible_answer/")
    p.add_argument("--categories", default="simple_python,multiple,parallel,irrelevance",
                   help=f"comma list of {', '.join(CATEGORIES)}")
    p.add_argument("--limit", type=int, default=None, help="the first N questions of each category")
    p.add_argument("--out", default=None, help="write every verdict (id, valid, error, the calls) to this JSONL file")


def cmd_bfcl(args):
    import json

    from alignlab.eval.bfcl import CATEGORIES, run_bfcl

    categories = tuple(c.strip() for c in args.categories.split(",") if c.strip())
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise UserError(f"--categories: unknown {', '.join(unknown)} (choose from {', '.join(CATEGORIES)})")
    scores = run_bfcl(_chat_backend(args), args.data, categories, limit=args.limit)
    for name, c in scores["categories"].items():
        print(f"{name:>18}  {c['accuracy']:6.1%}  of {c['n']}")
    print(f"{'mean':>18}  {scores['accuracy']:6.1%}")
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in scores["rows"])
