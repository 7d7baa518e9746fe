"""`alignlab merge`: merge fine-tunes of one base (full model directories or PEFT adapters) into one model.

    alignlab merge --method ties --base runs/pretrain/model --models runs/a/model:1 runs/b/model:0.5 \\
        --density 0.5 --out runs/merged
    alignlab merge --method linear --base runs/pretrain/model --models a/adapter b/adapter --as-adapter --out ab

The methods and their formulas are in alignlab/merge/methods.py; adapters are merged through their exact
deltas s B A (alignlab/merge/models.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignlab.errors import ConfigError


def merge_arguments(p):
    from alignlab.merge.methods import METHODS

    p.description = ("Merge models that share a base: linear (weighted average), task_arithmetic (base + λ Σ w τ), "
                     "ties (trim, elect sign, disjoint mean), dare_linear / dare_ties (random drop and rescale), "
                     "slerp (two models). Models may be model directories or PEFT adapter directories (applied on "
                     "--base). Parameter names follow mergekit.")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--base", default=None, help="the base model directory: needed by task_arithmetic, ties and DARE "
                                                "(task vectors are model - base) and by adapters")
    p.add_argument("--models", required=True, nargs="+", metavar="DIR[:WEIGHT]",
                   help="the models to merge, each with an optional weight (default 1); linear averages these "
                        "(the base only if listed); slerp goes from the first (t=0) to the second (t=1)")
    p.add_argument("--density", type=float, default=None,
                   help="ties/dare: the fraction of each task vector kept, in (0, 1] (default 1: all of it)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="task-vector methods: scale of the merged task vector (default 1)")
    p.add_argument("--t", type=float, default=None, help="slerp: the interpolation factor in [0, 1] (default 0.5)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="divide by the sum of the weights (default: on for linear and ties, off for the others)")
    p.add_argument("--seed", type=int, default=None, help="dare: the seed of the drop masks (default 0)")
    p.add_argument("--as-adapter", action="store_true",
                   help="linear merge of adapters on the same modules: write one PEFT adapter (their concatenation, "
                        "rank Σ r) instead of a full model")
    p.add_argument("--out", required=True, help="the output directory (a model directory, or an adapter)")


def parse_model(spec: str) -> tuple[str, float]:
    """DIR or DIR:WEIGHT -> (DIR, weight); a path that exists as given is a path, even with a colon in it."""
    path, sep, weight = spec.rpartition(":")
    if not sep or Path(spec).exists():
        return spec, 1.0
    try:
        return path, float(weight)
    except ValueError:
        raise ConfigError(f"--models {spec!r}: the part after ':' must be a number (the weight)") from None


# which options each method reads; giving another is a mistake worth saying
APPLIES = {"density": ("ties", "dare_linear", "dare_ties"), "lam": ("task_arithmetic", "ties", "dare_linear",
                                                                   "dare_ties"),
           "t": ("slerp",), "seed": ("dare_linear", "dare_ties")}
FLAGS = {"density": "--density", "lam": "--lambda", "t": "--t", "seed": "--seed"}


def cmd_merge(args):
    from alignlab.merge.models import MergeOptions, merge_directories

    for key, methods in APPLIES.items():
        if getattr(args, key) is not None and args.method not in methods:
            raise ConfigError(f"{FLAGS[key]} does not apply to {args.method} (only to {', '.join(methods)})")
    given = {k: getattr(args, k) for k in ("density", "lam", "t", "seed", "normalize") if getattr(args, k) is not None}
    options = MergeOptions(args.method, **given)
    models = [parse_model(s) for s in args.models]
    report = merge_directories(options, models, args.out, base=args.base, as_adapter=args.as_adapter)
    for m in report["models"]:
        print(f"  {m['kind']:<7} {m['weight']:>6g}  {m['path']}")
    settings = ", ".join(f"{k}={v}" for k, v in options.describe().items() if k != "method")
    if report["result"] == "adapter":
        print(f"{args.method} ({settings}): one adapter of rank {report['rank']} on {report['modules']} modules "
              f"-> {report['out']}")
    else:
        print(f"{args.method} ({settings}): {report['merged']} tensors merged, {report['copied']} copied from the "
              f"{'base' if args.base else 'first model'} -> {report['out']}")
    print(json.dumps(report))
