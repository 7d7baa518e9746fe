"""The evaluation commands: `alignlab eval` (benchmarks over a model directory or a URL)."""

from __future__ import annotations

import os

from alignlab.cli.common import add_dtype


def eval_arguments(p):
    p.description = ("Benchmarks over a local model or any OpenAI-compatible URL, resumable (a cache of every "
                     "result under --out), every number with its 95%% interval; see alignlab/eval/harness.py.")
    p.add_argument("--model", required=True, help="a model directory or Hub id, or an OpenAI-compatible URL "
                                                  "(http://HOST:PORT/v1)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated: mc:PATH, mmlu[:CONFIG], humaneval[:PATH], gsm8k[:PATH], "
                        "tinyworld:rl:LEVELS:test[@SEED], tinyworld:safety, tinyworld:tools, a prompt-only file")
    p.add_argument("--out", default="runs/eval", help="results, samples, report and the cache that makes a run "
                                                      "resumable (default runs/eval)")
    p.add_argument("--limit", type=int, default=0, help="the first N records of each task (0: all)")
    p.add_argument("--samples", type=int, default=1, help="completions per HumanEval problem, for pass@k (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--served-model-name", default=None, help="with a URL: the model to ask (default: the first "
                                                             "/v1/models lists)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="with a URL (default $OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=8, help="with a URL: requests in flight (default 8)")
    add_dtype(p)


def cmd_eval(args):
    from alignlab.eval.backends import open_model
    from alignlab.eval.harness import evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model = open_model(args.model, name=args.served_model_name, api_key=args.api_key, dtype=args.dtype,
                       concurrency=args.concurrency)
    summary = evaluate(model, tasks, args.out, limit=args.limit, samples=args.samples, temperature=args.temperature,
                       max_tokens=args.max_new_tokens, seed=args.seed)
    for spec, res in summary["tasks"].items():
        for name, m in res["metrics"].items():
            lo, hi = m["ci"]
            ci = f"  [{lo:.1%}, {hi:.1%}]" if lo == lo else ""
            print(f"{spec:40s} {name:10s} {m['value']:7.1%}{ci}  n={m['n']}")
    print(f"{summary['cached']} results from the cache; report: {os.path.join(args.out, 'report.md')}")
