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
                   help="comma-separated: mc:PATH, mmlu[:CONFIG], humaneval[:PATH], mt_bench:PATH (with --judge), "
                        "gsm8k[:PATH], tinyworld:rl:LEVELS:test[@SEED], tinyworld:safety, tinyworld:tools, "
                        "tinyworld:ifeval, a prompt-only file")
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
    p.add_argument("--fewshot", type=int, default=0, help="generation tasks: the first N records as worked examples "
                                                          "before each prompt (default 0: zero-shot chat)")
    p.add_argument("--judge", default=None, help="the judge model of graded tasks (mt_bench): a directory or a URL")
    p.add_argument("--judge-model-name", default=None, help="with a judge URL: the model to ask")
    add_dtype(p)


def cmd_eval(args):
    from alignlab.eval.backends import open_model
    from alignlab.eval.harness import evaluate, fmt, fmt_ci

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model = open_model(args.model, name=args.served_model_name, api_key=args.api_key, dtype=args.dtype,
                       concurrency=args.concurrency)
    judge = open_model(args.judge, name=args.judge_model_name, api_key=args.api_key, dtype=args.dtype,
                       concurrency=args.concurrency) if args.judge else None
    summary = evaluate(model, tasks, args.out, limit=args.limit, samples=args.samples, temperature=args.temperature,
                       max_tokens=args.max_new_tokens, seed=args.seed, judge=judge, fewshot=args.fewshot)
    for spec, res in summary["tasks"].items():
        for name, m in res["metrics"].items():
            ci = f"  [{fmt_ci(m)}]" if fmt_ci(m) else ""
            print(f"{spec:40s} {name:12s} {fmt(m):>7s}{ci}  n={m['n']}")
    print(f"{summary['cached']} results from the cache; report: {os.path.join(args.out, 'report.md')}")


def redteam_arguments(p):
    p.description = ("Red-team a TinyWorld chat model: six probe families (persona, encoding, injection, extraction, "
                     "many-shot, multi-turn), attack success rate per family with 95%% intervals, over-refusal on "
                     "look-alikes in the same frames (and on XSTest with --xstest); --harden turns the successes "
                     "into SafeDPO pairs, trains, and measures again on held-out probes. See alignlab/eval/redteam.py.")
    p.add_argument("--model", required=True, help="a model directory, or an OpenAI-compatible URL (not with --harden)")
    p.add_argument("--seed", type=int, default=0, help="the TinyWorld seed the model was trained on (default 0)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="the probes to send (default test)")
    p.add_argument("--per-combination", type=int, default=2, help="fills of each family x frame x request")
    p.add_argument("--xstest", default=None, help="XSTest's xstest_prompts.csv: over-refusal in real English")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default="runs/redteam")
    p.add_argument("--harden", action="store_true", help="then SafeDPO on the train split's successes (local model)")
    p.add_argument("--steps", type=int, default=60, help="--harden: SafeDPO steps (default 60)")
    p.add_argument("--attacker", default=None, help="a model (directory or URL) that rewrites the attacks that failed")
    p.add_argument("--rounds", type=int, default=1, help="--attacker: rounds of rewrites (default 1)")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    add_dtype(p)


def cmd_redteam(args):
    import json
    from pathlib import Path

    from alignlab.data.world import TinyWorld
    from alignlab.errors import UserError
    from alignlab.eval import redteam
    from alignlab.eval.backends import open_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.harden:
        from alignlab.harden import HardenConfig, harden

        if args.model.startswith(("http://", "https://")):
            raise UserError("--harden trains the model: give a model directory, not a URL")
        result = harden(HardenConfig(model=args.model, out_dir=str(out), seed=args.seed, steps=args.steps,
                                     per_combination=args.per_combination, max_new_tokens=args.max_new_tokens))
        print((out / "harden.md").read_text())
        print(f"hardened model: {result['model_dir']}")
        return
    model = open_model(args.model, name=args.served_model_name, api_key=args.api_key, dtype=args.dtype)
    attacker = open_model(args.attacker, api_key=args.api_key, dtype=args.dtype) if args.attacker else None
    scores, rows = redteam.red_team(model, TinyWorld(seed=args.seed), args.split, args.per_combination,
                                    args.max_new_tokens, args.xstest, attacker, args.rounds)
    (out / "redteam.json").write_text(json.dumps(scores, indent=1))
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# Red team", "", f"Model: {model.label}; the {args.split} split's probes.", "",
             *redteam.score_table(scores)]
    if "xstest" in scores:
        x = scores["xstest"]
        lines += ["", f"XSTest: safe prompts refused {x['safe_refused']['value']:.1%} (full "
                      f"{x['safe_full_refusal']['value']:.1%}, partial {x['safe_partial_refusal']['value']:.1%}, "
                      f"n={x['safe_refused']['n']}); unsafe prompts refused {x['unsafe_refused']['value']:.1%}."]
    (out / "redteam.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bon_arguments(p):
    p.description = ("Best-of-n against a reward model (the proxy) and the task's verifier (gold): N samples a prompt, "
                     "the expected proxy and gold score of the best-of-n pick for n = 1, 2, 4, ... N, against "
                     "KL = log n - (n-1)/n (Gao et al. 2022); see alignlab/eval/overoptimization.py.")
    p.add_argument("--policy", required=True, help="the model that samples (a chat model directory)")
    p.add_argument("--reward-model", required=True, help="a reward model directory (alignlab reward-model)")
    p.add_argument("--source", default="tinyworld:rl:3-4:test@0", help="prompts with a verifier (a tasks source)")
    p.add_argument("--n", type=int, default=32, help="samples a prompt (default 32)")
    p.add_argument("--limit", type=int, default=100, help="prompts (default 100)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bon")


def cmd_bon(args):
    from alignlab.eval.overoptimization import run_best_of_n

    result = run_best_of_n(args.policy, args.reward_model, args.source, args.n, args.limit, args.temperature,
                           args.max_new_tokens, args.seed, args.out)
    print(f"{result['prompts']} prompts x {args.n} samples; best-of-n by the reward model:")
    print("    n   KL (nats)   proxy   gold")
    for r in result["curve"]:
        print(f"{r['n']:5d}   {r['kl']:9.3f}   {r['proxy']:5.2f}   {r['gold']:5.1%}")
    print(f"plot: {os.path.join(args.out, 'bon.png')}")
