"""`alignlab prm`: process and outcome reward models (verifiers) on worked solutions, and best-of-n with them.

    alignlab prm train model=runs/table/seed0/sft/model kind=prm out_dir=runs/prm/seed0/prm threads=1
    alignlab prm train model=runs/table/seed0/sft/model kind=orm out_dir=runs/prm/seed0/orm threads=1 \\
        solutions=runs/prm/seed0/prm/solutions.jsonl val_solutions=runs/prm/seed0/prm/val_solutions.jsonl
    alignlab prm bon --policy runs/table/seed0/sft/model --prm runs/prm/seed0/prm/model \\
        --orm runs/prm/seed0/orm/model --out runs/prm/seed0/bon

The recipe is alignlab/recipes/prm.py, the reranking alignlab/eval/rerank.py.
"""

from __future__ import annotations

import os


def prm_arguments(p):
    p.description = ("Verifiers for worked solutions: `train` samples solutions from a policy, labels each step "
                     "(right until the first wrong one) and the answer, and trains a PRM (kind=prm) or an ORM "
                     "(kind=orm); `bon` picks one of n held-out samples by PRM, ORM or vote and reports accuracy vs n.")
    sub = p.add_subparsers(dest="prm_command", required=True)
    t = sub.add_parser("train", help="train a process (kind=prm) or outcome (kind=orm) reward model")
    t.add_argument("--config", default=None, help="a YAML config (recipes/prm.py: PRMConfig)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. model=runs/table/seed0/sft/model kind=orm threads=1")
    t.set_defaults(prm_fn=cmd_prm_train)
    b = sub.add_parser("bon", help="best-of-n on held-out prompts: PRM (min, product), ORM, majority vote, pass@n")
    b.add_argument("--policy", required=True, help="the model that samples (a chat model directory)")
    b.add_argument("--prm", required=True, help="a PRM directory (alignlab prm train kind=prm)")
    b.add_argument("--orm", required=True, help="an ORM directory (alignlab prm train kind=orm)")
    b.add_argument("--source", default="tinyworld:rl:3-4:test@0", help="held-out prompts (a tasks source)")
    b.add_argument("--n", type=int, default=8, help="samples a prompt (default 8)")
    b.add_argument("--limit", type=int, default=0, help="prompts (default 0: all)")
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--max-new-tokens", type=int, default=96)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    b.add_argument("--out", default="runs/prm_bon")
    b.set_defaults(prm_fn=cmd_prm_bon)


def cmd_prm(args):
    args.prm_fn(args)  # the subcommand's


def cmd_prm_train(args):
    from alignlab.config import load_config
    from alignlab.recipes.prm import PRMConfig, run

    run(load_config(PRMConfig, args.config, args.overrides), resume=args.resume)


def cmd_prm_bon(args):
    from alignlab.eval.rerank import run_rerank

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = run_rerank(args.policy, args.prm, args.orm, args.source, args.n, args.limit, args.temperature,
                   args.max_new_tokens, args.seed, args.out)
    ns = [row["n"] for row in next(iter(r["curves"].values()))]
    print(f"{r['prompts']} prompts x {args.n} samples; accuracy of the pick (95% bootstrap interval over prompts):")
    print(f"{'picker':<10}" + "".join(f"{'n=' + str(n):>22}" for n in ns))
    for picker, rows in r["curves"].items():
        print(f"{picker:<10}" + "".join(f"{x['accuracy']:>8.1%} [{x['ci'][0]:.1%}, {x['ci'][1]:.1%}]"
                                         for x in rows))
    for name, (d, lo, hi) in r["differences"].items():
        print(f"at n={r['differences_at_n']}: {name:<22} {d:+.1%} [{lo:+.1%}, {hi:+.1%}]")
    for name in ("prm_step_accuracy", "prm_answer_accuracy", "orm_answer_accuracy"):
        a = r[name]
        print(f"{name:<20} {a['accuracy']:.1%} [{a['ci'][0]:.1%}, {a['ci'][1]:.1%}] on {a['n']} "
              f"(always the commoner label: {a['majority_baseline']:.1%})")
    for kind, a in r["prm_step_accuracy_by_kind"].items():
        print(f"  PRM on '{kind}' steps: {a['accuracy']:.1%} of {a['steps']} right; wrong ones caught: "
              f"{a['wrong_caught']:.1%} of {a['wrong']}, right ones flagged: {a['right_flagged']:.1%}")
    print("solutions: " + ", ".join(f"{k} {v}" for k, v in r["solutions"].items()))
    print(f"plot: {os.path.join(args.out, 'rerank.png')}")
