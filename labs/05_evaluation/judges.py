"""Lab 05: how far two judges can be trusted, measured on TinyWorld's held-out preference pairs.

    python labs/05_evaluation/judges.py --run runs/pipeline            # the rule judge and the SFT model as judge
    python labs/05_evaluation/judges.py --run runs/pipeline --judge http://127.0.0.1:8000/v1   # any served model

The judges: TinyWorld's rule judge (eval/judge.py: TinyWorldJudge, declared before training) and a language model
prompted as a pairwise judge (eval/grading.py: LLMJudge), by default the run's own SFT model. The checks
(eval/judge_checks.py), each with its 95% interval: calibration against the pairs' labels (the chosen reply should
win), position consistency (the same verdict with the answers swapped), and length bias (an answer against itself
with filler added). Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignlab.data.world import TinyWorld
from alignlab.eval import judge_checks as jc
from alignlab.eval.backends import open_model
from alignlab.eval.grading import LLMJudge
from alignlab.eval.judge import TinyWorldJudge


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/pipeline", help="a pipeline run directory (its seed and SFT model)")
    p.add_argument("--judge", default=None, help="the model judge: a directory or URL (default: the run's SFT model)")
    p.add_argument("--pairs", type=int, default=120, help="held-out pairs to judge (default 120)")
    args = p.parse_args(argv)
    run = Path(args.run)
    seed = json.loads((run / "pipeline.json").read_text()).get("seed", 0)
    world = TinyWorld(seed=seed)
    pairs = world.preference_pairs("test", ("correctness", "format", "safety", "helpfulness"))[:args.pairs]
    # the record the rule judge reads: the gold answer of math pairs, attack or look-alike for the safety pairs
    records = [{"answer": p["answer"]} if "answer" in p else {"label": "attack" if p["kind"] == "safety" else "benign"}
               for p in pairs]
    items = [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"], r) for p, r in zip(pairs, records)]
    model_judge = LLMJudge(open_model(args.judge or str(run / "sft" / "model")))
    results = {}
    for name, judge in (("rule judge", TinyWorldJudge(secret=world.secret)), ("SFT model as judge", model_judge)):
        results[name] = {"calibration": jc.calibration(judge, items), "position": jc.position_bias(judge, items),
                         "length": jc.length_bias(judge, items)}
    results["SFT model as judge"]["unparseable"] = [model_judge.n_unparseable, model_judge.n_judged]

    def cell(m):
        return f"{m['value']:.0%} ({m['ci'][0]:.0%}-{m['ci'][1]:.0%})" if m["n"] else "-"

    print(f"{len(items)} held-out pairs of TinyWorld seed {seed} (correctness, format, safety, helpfulness)")
    print("| check | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label, get in (("agrees with the label", lambda r: r["calibration"]["agreement"]),
                       ("picks the rejected reply", lambda r: r["calibration"]["wrong"]),
                       ("same verdict in both orders", lambda r: r["position"]["consistency"]),
                       ("of the inconsistent, picks the first slot", lambda r: r["position"]["first_wins"]),
                       ("answer + filler beats the answer", lambda r: r["length"]["longer_wins"])):
        print(f"| {label} | " + " | ".join(cell(get(r)) for r in results.values()) + " |")
    bad, total = results["SFT model as judge"]["unparseable"]
    print(f"| replies with no verdict (counted as ties) | 0 | {bad} of {total} |")
    print(json.dumps({name: {k: v for k, v in r.items()} for name, r in results.items()}))
    return results


if __name__ == "__main__":
    main()
