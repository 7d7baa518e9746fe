"""Merging two skills on TinyWorld: the pipeline's tool-use and GRPO models, merged as task vectors of their parent.

    nice -n 10 python scripts/merge_tinyworld.py --run runs/table/seed0 --out runs/merge/seed0-pipeline
    nice -n 10 python scripts/merge_tinyworld.py --run runs/table/seed0 --mode adapters   # the earlier experiment
    nice -n 10 python scripts/merge_tinyworld.py --run runs/table/seed0 --mode lora-from-sft   # two LoRAs from SFT

Mode `pipeline` (the default): the usual setting for merging, fine-tunes of one instruct model.

1. base: the pipeline's SFT model (RUN/sft/model). Its two fine-tunes, full weights (the script checks the lineage
   in each model's alignlab.json):
   - tools (RUN/tools/model): SFT from the SFT model on tool-use chats, with SFT chats replayed
   - grpo (RUN/grpo/model): the DPO -> GRPO line from the SFT model (GRPO trained on levels 3-4 of math)
   Their task vectors are τ = θ - θ_sft; printed: ‖τ‖ / ‖θ_sft‖ over every tensor, cos(τ_tools, τ_grpo), and the
   smallest cosine between the two models' own weights over the tensors (above 0.9995 slerp falls back to linear).
2. merged (alignlab.merge, mergekit's names and defaults): linear 0.5/0.5 (the average), task arithmetic
   θ_sft + λ (τ_tools + τ_grpo) with λ = 1 and 0.5 (λ = 0.5 is the average again: the same model as linear, a
   check), TIES at density 0.5 and 0.8 (trim, elect a sign, the disjoint mean), DARE-TIES at density 0.8 (random
   drop with rescale from `--seed`, elect, the sum), slerp t = 0.5
3. scored greedily on held-out prompts (bf16 where the CPU has it, as the pipeline's eval): TinyWorld math accuracy
   on levels 1-4 (`--per-level` prompts each, default 25: level 1 has 25), accuracy on levels 3-4 again with more
   prompts (`--hard-per-level` each, default 200: all of them; its first 25 per level are the levels 1-4 prompts),
   and tool use (evaluate_tool_use on the first `--tool-prompts` held-out tool prompts: exact_call where a tool is
   needed, no_call where none is, answer after the calls ran)
4. for each merge the kept ratios: merged math / grpo math (levels 1-4 and levels 3-4), merged exact_call /
   tools exact_call, and merged minus SFT on levels 3-4 in points (next to GRPO's own gain over SFT)
5. optionally (`--tools-weights 0.6,0.7,0.8,0.9`), task arithmetic θ_sft + w τ_tools + τ_grpo for each w: a scan
   of the tools vector's strength with GRPO's kept whole

Result on an earlier TinyWorld curriculum's pipeline models (the README's table has seed 0 on the current one;
runs/merge/seed{0,1,2}-pipeline.log, about 40 s a seed on 2 CPU cores): no merge keeps both skills. The two
task vectors are nearly orthogonal (cosine -0.02 to -0.05) but of very different sizes, ‖τ‖/‖θ_sft‖ 0.40-0.41 for
tools (full fine-tune at lr 3e-3) against 0.02 for grpo, and τ_tools carries the tools stage's forgetting: the tools
model itself answers 2.5-7.2% of levels 3-4 (sft 21.5-41.2%, grpo 18.2-46.2%). Seed 0, levels 3-4 (400 prompts) /
exact call:

    sft 41.2% / 0, tools 7.2% / 98.8%, grpo 46.2% / 0
    linear 0.5/0.5 = task arithmetic λ 0.5: 14.8% / 0 (half of τ_tools: no call at all); slerp 14.2% / 0.6%
    task arithmetic λ 1: 6.0% / 99.4%; ties d 0.5: 4.5% / 95.6%, d 0.8: 2.0% / 84.4%; dare_ties d 0.8: 6.2% / 96.2%

Whatever keeps the tool calls is within about a point of the tools model on levels 3-4; whatever halves τ_tools
loses tool calling and still loses 13-26 points on levels 3-4.
Seeds 1 and 2 agree (there GRPO does not beat SFT on levels 3-4). Task arithmetic λ 1 and DARE-TIES keep 97-101% of
the tools model's exact calls; none keeps GRPO's math.

Mode `adapters`: a negative result, kept for the record (runs/merge/seed0.eval.log, seed 0). A tool-use LoRA adapter
trained on the *pretrained* base (rank 16 on every Linear as the sft_lora stage, the tools stage's chats and settings
without the replayed SFT chats, 150 steps, 792 s on CPU) and the pipeline's math LoRA adapter (RUN/sft_lora/adapter),
merged with linear, task arithmetic, TIES and DARE-TIES (density 0.5) from their exact deltas s B A:

    levels 1-3 math (105 prompts) / exact call (200 tool prompts): base 0.0 / 0.0, math adapter 58.1% / 0.0,
    tools adapter 0.0 / 24.4%, and every merge 0.0% / 0.0% (linear: format rate 1.9%)

Each adapter alone changes its adapted weights by ‖Δ‖/‖W‖ = 0.46 (math) and 0.45 (tools), and the two are nearly
orthogonal (cosine 0.05): two large moves in unrelated directions from a raw pretrained model that knows neither the
chat format nor either skill. Averaging halves each move, and neither skill survives at half strength; summing
them (task arithmetic) and trimming (TIES, DARE) land far from both fine-tunes. Merging has nothing shared to build
on here, which is why this mode is no longer the default: the pipeline mode merges fine-tunes of a parent that
already holds the chat format and most of the math. It trains its adapter once into OUT/tools_lora (default OUT:
runs/merge/<run's name>) and reuses it after.

Mode `lora-from-sft`: two small LoRA adapters from the same instruct model, one per skill (the setting where
merging is said to work). Rank 16, alpha 32, every Linear (as the sft_lora stage; the tied embedding and head stay
frozen), both from RUN/sft/model:
   - tools adapter: the tools stage's chats with its replay of every 5th SFT chat and its settings
     (RUN/tools/config.yaml, alignlab.pipeline.stage_tools), LoRA at `--tools-lr` for `--tools-steps`
   - math adapter: rejection-sampling fine-tuning as scripts/rft_tinyworld.py (the SFT model's own verified answers
     to the training prompts of levels 3-4, 8 samples, up to 2 a prompt, decontaminated; its SFT settings), LoRA at
     `--math-lr` (1e-3; full RFT used 3e-4) for 150 steps
Each is trained once into OUT/{tools,math}_lora_lr<lr>_steps<steps> (the RFT data into OUT/rft_n8_k2) and reused.
Merged onto the SFT model from their exact deltas: linear 1/1 without normalizing (the sum of both deltas; the same
model as task arithmetic λ 1, a check), linear 0.5/0.5, task arithmetic λ 1, TIES density 0.5 and 0.8, DARE-TIES
density 0.8 (`--seed`); each adapter alone is merged into SFT the same way. Scored as in pipeline mode (the full
tools model too, for reference); "kept": levels 3-4 minus SFT's, paired bootstrap 95% interval over the 400 prompts,
over the math adapter's own gain; levels 3-4 minus the tools adapter's (what the math delta adds on top of the tools
delta) over the same gain; exact call and answer over the tools adapter's.

Settings tried, all on seed 0 (runs/merge/seed0-lora-from-sft*.log), the tools adapter only (the math adapter was
fine at its first setting: +5.5 points on levels 3-4, 95% interval +1.0 to +10.0):
   tools lr 2e-3, 150 steps (the stage's):  exact call 26.9%, call rate 50%, val loss 0.50 (full fine-tune: 0.044)
   tools lr 5e-3, 150 steps:                exact call 51.2%, call rate 71%, val loss 0.42
   tools lr 5e-3, 450 steps (the default):  exact call 90.6%, call rate 98%, val loss 0.37 (98.1%, 100%, 0.34 on
                                            the directory questions as they are now drawn, the table below)
The loss a LoRA keeps is on the tool-call syntax (`tool`, `>{"`, `name`, `arguments`: tokens the pretraining text
never holds, whose tied embedding/head rows LoRA cannot move). All three tools adapters lose 20-25 points of levels
3-4 (their arithmetic degrades: "8 * 20 = 120"), so the first result was not off for the merge, only for tool use.

Result (default settings; training 11 min in all on seed 0, the tools LoRA 608 s of it under CPU contention, and 3.3
min on seed 1 on an idle machine, 150 s the tools LoRA; 2 CPU cores). Levels 3-4 (400 prompts) / exact call:

                           seed 0           seed 1
    sft (base)             41.2% / 0        28.0% / 0
    tools (full, pipeline)  7.2% / 98.8%     2.5% / 97.5%
    math adapter           46.8% / 0        34.2% / 0         (+5.5, +6.2 points over SFT)
    tools adapter          19.5% / 98.1%    16.8% / 93.1%     (-21.8, -11.2 points)
    sum = task arith. λ 1  20.2% / 95.0%    14.0% / 95.6%
    linear 0.5/0.5         39.0% / 0        30.8% / 0
    ties d 0.5             21.5% / 43.8%    20.0% / 0
    ties d 0.8             17.0% / 52.5%    17.0% / 0
    dare_ties d 0.8         9.8% / 32.5%     9.0% / 44.4%

No merge keeps most of both skills. The sum (task arithmetic λ 1) keeps 97-103% of the tools adapter's exact calls,
but it is 14-21 points under SFT on levels 3-4: the tools delta carries its own forgetting, and what the math delta
adds on top of it is +0.8 points (seed 0, interval -3.0 to +4.2: 14% of the math adapter's +5.5) and -2.8 (seed 1,
-6.5 to +0.8). The average keeps SFT's math (-2.2 and +2.8 points, both intervals across zero; none of the math
adapter's gain for sure) and loses every tool call, as the pipeline mode's average did; TIES and DARE-TIES lose most
tool calls and the math as well. The two deltas are orthogonal (cosine 0.004), but the adapter that learns tool
calling is not small: ‖Δ‖/‖W‖ over the adapted weights 0.57 (tools) against 0.07-0.08 (math), more than the full
tools model's 0.46-0.47 over the same weights. The LoRA tools model does keep more math than the full one (19.5% vs
7.2%, 16.8% vs 2.5%), so of the three modes this one comes closest, through the tools adapter itself, not the merge.

Prints Markdown tables; the last line is JSON: {"settings", "task_vectors", "models": {name: metrics}} (pipeline
and lora-from-sft modes also "kept": {merge: ratios}; lora-from-sft also "training").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from alignlab.config import load_config
from alignlab.data.world import TinyWorld
from alignlab.eval.backends import EngineModel
from alignlab.eval.stats import paired_bootstrap_ci, wilson_interval
from alignlab.eval.tool_use import evaluate_tool_use
from alignlab.eval.world_suite import evaluate_on_world
from alignlab.lora import LoraOptions
from alignlab.merge import MergeOptions, merge_directories, read_adapter_deltas
from alignlab.merge.models import model_tensors
from alignlab.model.hf import load_model
from alignlab.model.precision import resolve_precision
from alignlab.pipeline import TOOLS_REPLAY_EVERY
from alignlab.recipes import sft
from alignlab.synth import rejection as rj
from alignlab.synth.decontam import decontaminate, eval_index, world_test_sources
from alignlab.synth.output import write_dataset
from alignlab.tasks import TinyWorldMath
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig

# ----------------------------------------------------------------------------------------------------------------
# Shared


def tool_metrics(model, tok, world: TinyWorld, tool_records: list[dict], max_new_tokens: int) -> dict:
    tools, _ = evaluate_tool_use(model, tok, world, tool_records, max_new_tokens=max_new_tokens)
    return {"exact_call": tools["exact_call"], "call_rate": tools["call_rate"], "no_call": tools["no_call"],
            "tool_answer": tools["answer"], "direct_answer": tools["answer_direct"], "n_tool": tools["prompts"]}


def markdown_table(results: dict[str, dict], cols: list[tuple[str, str]]) -> str:
    """One row per model; cols are (header, key); a float is a percentage, a string is printed as it is."""
    def cell(v):
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.1%}"
        return "—" if v is None else str(v)
    lines = ["| model | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(cell(r.get(k)) for _, k in cols) + " |" for name, r in results.items()]
    return "\n".join(lines)


def span(levels: list[int]) -> str:
    """[1, 2, 3, 4] -> "L1-4", [1, 3] -> "L1,3"."""
    if len(levels) > 1 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"L{levels[0]}-{levels[-1]}"
    return "L" + ",".join(map(str, levels))


def results_table(results: dict[str, dict], levels: list[int], hard_name: str) -> str:
    """The Markdown table of every model's math (levels, the hard levels with their interval) and tool use."""
    for r in results.values():
        lo, hi = r["hard_ci"]
        r["hard_cell"] = f"{r['hard_accuracy']:.1%} ({lo:.0%}-{hi:.0%})"
    n_hard = next(iter(results.values()))["n_hard"]
    cols = [(f"math {span(levels)}", "math_accuracy"), *[(f"L{lv}", f"accuracy_L{lv}") for lv in levels],
            (f"{hard_name} (n={n_hard})", "hard_cell"), ("format", "format_rate"),
            ("exact call", "exact_call"), ("call rate", "call_rate"), ("no call", "no_call"),
            ("answer", "tool_answer"), ("direct", "direct_answer")]
    return markdown_table(results, cols)


def merge_all(jobs: dict, dirs: dict, base: Path, out: Path) -> float:
    """Write each job's merge under OUT/models/ (adding it to `dirs`); returns the seconds it took."""
    t0 = time.time()
    for name, (sub, options, models) in jobs.items():
        dirs[name] = out / "models" / sub
        report = merge_directories(options, [(str(d), w) for d, w in models], dirs[name], base=str(base))
        print(f"merge {name}: {report['merged']} tensors merged, {report['copied']} copied")
    return time.time() - t0


def score_all(dirs: dict, world, args, keep_rows: bool = False):
    """Math (levels 1-4 and the hard levels) and tool use of every model in `dirs`, greedy, in the inference
    precision. Returns (levels, hard_levels, per_level, precision, results, eval_seconds)."""
    levels = [int(x) for x in (args.levels or "1,2,3,4").split(",")]
    hard_levels = [int(x) for x in args.hard_levels.split(",")]
    per_level = args.per_level or 25
    tool_records = world.service_conversations("test")[:args.tool_prompts]
    precision = resolve_precision("auto", "cpu", "infer")
    print(f"eval precision: {precision.why}")

    def score(d: Path) -> dict:
        model, tok = load_model(d, dtype=precision.dtype).requires_grad_(False), load_tokenizer(d)
        return {**math_metrics(model, tok, world, levels, per_level, hard_levels, args.hard_per_level,
                               args.max_new_tokens, keep_rows=keep_rows),
                **tool_metrics(model, tok, world, tool_records, args.max_new_tokens)}

    results, eval_seconds = evaluate_all(dirs, score)
    return levels, hard_levels, per_level, precision, results, eval_seconds


def evaluate_all(dirs: dict[str, Path], score) -> tuple[dict[str, dict], float]:
    results, t1 = {}, time.time()
    for name, d in dirs.items():
        t = time.time()
        results[name] = score(d)
        r = results[name]
        print(f"eval {name}: math {r['math_accuracy']:.1%}, exact call {r['exact_call']:.1%} ({time.time() - t:.0f} s)",
              flush=True)
    return results, time.time() - t1


# ----------------------------------------------------------------------------------------------------------------
# Mode pipeline: the tools and GRPO models, task vectors from the SFT model


def check_lineage(run: Path) -> None:
    """tools and dpo start from sft, grpo from dpo (each model's alignlab.json names its parent)."""
    for stage, parent in (("tools", "sft"), ("dpo", "sft"), ("grpo", "dpo")):
        meta = json.loads((run / stage / "model" / "alignlab.json").read_text())
        got = Path(meta.get("parent") or "")
        if got.parts[-2:] != (parent, "model"):
            raise SystemExit(f"{run / stage / 'model'}: its parent is {str(got)!r}, not the {parent} model: "
                             "the merge needs fine-tunes of one parent")


@torch.no_grad()
def task_vector_sizes(base: Path, a: Path, b: Path) -> dict:
    """‖τ‖ / ‖θ_base‖ of both models over every float tensor, cos(τ_a, τ_b), and the smallest per-tensor cosine
    between the two models' weights themselves (slerp interpolates linearly above 0.9995)."""
    w0, wa, wb = (model_tensors(load_model(d)) for d in (base, a, b))
    keys = [k for k in sorted(w0) if w0[k].is_floating_point()]
    flat = lambda sd: torch.cat([sd[k].float().flatten() for k in keys])  # noqa: E731
    f0, fa, fb = flat(w0), flat(wa), flat(wb)
    ta, tb = fa - f0, fb - f0
    cos = torch.nn.functional.cosine_similarity
    weight_cos = min(cos(wa[k].float().flatten(), wb[k].float().flatten(), dim=0).item() for k in keys)
    return {"tools_relative": (ta.norm() / f0.norm()).item(), "grpo_relative": (tb.norm() / f0.norm()).item(),
            "cosine": cos(ta, tb, dim=0).item(), "min_weight_cosine": weight_cos}


def math_metrics(model, tok, world: TinyWorld, levels: list[int], per_level: int, hard_levels: list[int],
                 hard_per_level: int, max_new_tokens: int, keep_rows: bool = False) -> dict:
    """Accuracy on `levels` with the first per_level prompts of each, and on hard_levels with hard_per_level each
    (one generation: a level's first per_level prompts are shared). keep_rows: also "hard_correct", the hard
    prompts' correctness in order (for paired comparisons)."""
    count = {lv: max(per_level, hard_per_level if lv in hard_levels else 0) for lv in sorted({*levels, *hard_levels})}
    rows = []
    for n in sorted(set(count.values())):
        asked = [lv for lv in count if count[lv] == n]
        _, r = evaluate_on_world(model, tok, world, per_level=n, safety=0, levels=asked, max_new_tokens=max_new_tokens)
        rows += [x for x in r if x["task"] == "math"]
    by_level = {lv: [x for x in rows if x["level"] == lv] for lv in count}
    small = [x for lv in levels for x in by_level[lv][:per_level]]
    hard = [x for lv in hard_levels for x in by_level[lv][:hard_per_level]]
    mean = lambda xs, key: sum(bool(x[key]) for x in xs) / len(xs)  # noqa: E731
    k = sum(bool(x["correct"]) for x in hard)
    lo, hi = wilson_interval(k, len(hard))
    return {"math_accuracy": mean(small, "correct"), "format_rate": mean(small, "format_ok"),
            **{f"accuracy_L{lv}": mean(by_level[lv][:per_level], "correct") for lv in levels},
            "n_math": len(small), "hard_accuracy": k / len(hard), "hard_ci": [lo, hi], "n_hard": len(hard),
            **({"hard_correct": [bool(x["correct"]) for x in hard]} if keep_rows else {})}


def pipeline_mode(args, run: Path, out: Path, world: TinyWorld, seed: int) -> None:
    check_lineage(run)
    base, tools, grpo = run / "sft" / "model", run / "tools" / "model", run / "grpo" / "model"
    print(f"lineage: tools <- sft, grpo <- dpo <- sft (alignlab.json); base {base}")
    sizes = task_vector_sizes(base, tools, grpo)
    print(f"task vectors: ‖τ‖/‖θ_sft‖ {sizes['tools_relative']:.3f} (tools), {sizes['grpo_relative']:.3f} (grpo); "
          f"cos(τ_tools, τ_grpo) {sizes['cosine']:.3f}; smallest per-tensor cos(θ_tools, θ_grpo) "
          f"{sizes['min_weight_cosine']:.5f}")

    pair = [(tools, 1.0), (grpo, 1.0)]
    jobs = {  # name: (directory, options, models)
        "linear 0.5/0.5": ("linear", MergeOptions("linear"), [(tools, 0.5), (grpo, 0.5)]),
        "task_arithmetic λ=1": ("task_arithmetic_1", MergeOptions("task_arithmetic", lam=1.0), pair),
        "task_arithmetic λ=0.5": ("task_arithmetic_0.5", MergeOptions("task_arithmetic", lam=0.5), pair),
        "ties d=0.5": ("ties_0.5", MergeOptions("ties", density=0.5), pair),
        "ties d=0.8": ("ties_0.8", MergeOptions("ties", density=0.8), pair),
        "dare_ties d=0.8": ("dare_ties_0.8", MergeOptions("dare_ties", density=0.8, seed=args.seed), pair),
        "slerp t=0.5": ("slerp_0.5", MergeOptions("slerp", t=0.5), pair),
    }
    for w in [float(x) for x in args.tools_weights.split(",") if x.strip()]:  # θ_sft + w τ_tools + τ_grpo
        jobs[f"task_arithmetic {w:g}·τ_tools+τ_grpo"] = (f"task_arithmetic_tools{w:g}", MergeOptions("task_arithmetic"),
                                                         [(tools, w), (grpo, 1.0)])
    dirs = {"sft (base)": base, "tools": tools, "grpo": grpo}
    merge_seconds = merge_all(jobs, dirs, base, out)
    levels, hard_levels, per_level, precision, results, eval_seconds = score_all(dirs, world, args)

    ref_sft, ref_tools, ref_grpo = results["sft (base)"], results["tools"], results["grpo"]
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    grpo_points = 100 * (ref_grpo["hard_accuracy"] - ref_sft["hard_accuracy"])
    kept = {}
    for name in jobs:
        r = results[name]
        kept[name] = {"math_vs_grpo": ratio(r["math_accuracy"], ref_grpo["math_accuracy"]),
                      "hard_vs_grpo": ratio(r["hard_accuracy"], ref_grpo["hard_accuracy"]),
                      "hard_minus_sft": r["hard_accuracy"] - ref_sft["hard_accuracy"],
                      "exact_call_vs_tools": ratio(r["exact_call"], ref_tools["exact_call"])}
        kept[name]["hard_points"] = f"{100 * kept[name]['hard_minus_sft']:+.1f}"

    r0 = ref_sft
    hard_name = span(hard_levels)
    print(f"\nTinyWorld seed {seed}, run {run}: base = SFT, merging tools + "
          f"grpo. Math: levels {','.join(map(str, levels))}, {per_level} prompts per level ({r0['n_math']} in all), "
          f"and {hard_name} with {r0['n_hard']} prompts (95% Wilson interval); tool use on {r0['n_tool']} held-out "
          f"prompts (exact call, call rate and answer over those needing a tool, no call over those needing none, "
          f"'direct' the sums needing no tool answered right). Greedy, {precision.dtype}.\n")
    print(results_table(results, levels, hard_name))
    print("\nKept, per merge (ratios of the accuracies above):\n")
    print(markdown_table(kept, [("math / grpo math", "math_vs_grpo"),
                                (f"{hard_name} / grpo {hard_name}", "hard_vs_grpo"),
                                (f"{hard_name} - sft {hard_name}, points (grpo: {grpo_points:+.1f})", "hard_points"),
                                ("exact call / tools exact call", "exact_call_vs_tools")]))
    print(f"\n(merges {merge_seconds:.0f} s, evaluation {eval_seconds:.0f} s)")
    for r in results.values():
        r.pop("hard_cell")
    print(json.dumps({"settings": {**vars(args), "precision": str(precision.dtype),
                                   "merge_seconds": round(merge_seconds, 1), "eval_seconds": round(eval_seconds, 1)},
                      "task_vectors": {k: round(v, 5) for k, v in sizes.items()}, "models": results,
                      "kept": {k: {m: (None if math.isnan(v) else round(v, 4)) for m, v in d.items()
                                   if m != "hard_points"} for k, d in kept.items()}}))


# ----------------------------------------------------------------------------------------------------------------
# Mode adapters: LoRA adapters from the pretrained base (the negative result in the docstring)


def train_tools_adapter(run: Path, out: Path, world: TinyWorld, steps: int, lr: float) -> Path:
    """The tools stage's config, from the base with LoRA; returns the adapter directory."""
    cfg = load_config(sft.SFTConfig, run / "tools" / "config.yaml")
    cfg.out_dir, cfg.model, cfg.method = str(out), str(run / "pretrain" / "model"), "lora"
    cfg.lora = LoraOptions(r=16, alpha=32, targets="all-linear")  # as the sft_lora stage
    cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_steps = steps, lr, max(1, steps // 20)
    cfg.train.eval_every = cfg.train.save_every = max(1, steps // 5)
    cfg.train.plot = False
    sft.run(cfg, resume=False, train_records=world.service_conversations("train"),
            val_records=world.service_conversations("test")[:100])
    return out / "adapter"


def delta_sizes(base: Path, math_adapter: Path, tools_adapter: Path) -> dict:
    """How large the two task vectors are next to the weights they change, and how aligned they are."""
    model = load_model(base)
    a, b = (read_adapter_deltas(model, d).deltas for d in (math_adapter, tools_adapter))
    w = model.state_dict()
    w_norm = sum(w[k].float().norm() ** 2 for k in a) ** 0.5
    da, db = torch.cat([a[k].flatten() for k in a]), torch.cat([b[k].flatten() for k in a])  # same targets
    return {"math_relative": (da.norm() / w_norm).item(), "tools_relative": (db.norm() / w_norm).item(),
            "cosine": torch.nn.functional.cosine_similarity(da, db, dim=0).item()}


def adapters_mode(args, run: Path, out: Path, world: TinyWorld, seed: int) -> None:
    base, math_adapter = run / "pretrain" / "model", run / "sft_lora" / "adapter"
    tools_adapter = out / "tools_lora" / "adapter"
    if not tools_adapter.is_dir():  # a second run reuses it
        train_tools_adapter(run, out / "tools_lora", world, args.steps, args.lr)
    trained = json.loads((out / "tools_lora" / "result.json").read_text())
    train_seconds = trained["train_seconds"]
    print(f"tools adapter: {trained['step']} steps in {train_seconds:.0f} s, val loss {trained['val_loss']:.3f}")
    sizes = delta_sizes(base, math_adapter, tools_adapter)
    print(f"task vectors: ‖Δ‖/‖W‖ {sizes['math_relative']:.2f} (math), {sizes['tools_relative']:.2f} (tools) over "
          f"the adapted weights; cosine(Δ_math, Δ_tools) {sizes['cosine']:.3f}")

    # a single adapter "merged" alone is that adapter folded into the base
    pair = [(math_adapter, 1.0), (tools_adapter, 1.0)]
    jobs = {"math adapter": (MergeOptions("linear"), [(math_adapter, 1.0)]),
            "tools adapter": (MergeOptions("linear"), [(tools_adapter, 1.0)]),
            "linear": (MergeOptions("linear"), pair),
            "task_arithmetic": (MergeOptions("task_arithmetic"), pair),
            "ties": (MergeOptions("ties", density=args.density), pair),
            "dare_ties": (MergeOptions("dare_ties", density=args.density, seed=args.seed), pair)}
    dirs = {"base": base}
    for name, (options, models) in jobs.items():
        dirs[name] = out / "models" / name.replace(" ", "_")
        report = merge_directories(options, models, dirs[name], base=str(base))
        print(f"merge {name}: {report['merged']} tensors merged, {report['copied']} copied")

    levels = [int(x) for x in (args.levels or "1,2,3").split(",")]
    per_level = args.per_level or 40
    tool_records = world.service_conversations("test")[:args.tool_prompts]
    precision = resolve_precision("auto", "cpu", "infer")
    print(f"eval precision: {precision.why}")

    def score(d: Path) -> dict:
        model, tok = load_model(d, dtype=precision.dtype).requires_grad_(False), load_tokenizer(d)
        m, _ = evaluate_on_world(model, tok, world, per_level=per_level, safety=0, levels=levels,
                                 max_new_tokens=args.max_new_tokens)
        return {"math_accuracy": m["accuracy"], "format_rate": m["format_rate"],
                **{f"accuracy_L{lv}": m[f"accuracy_L{lv}"] for lv in levels}, "n_math": m["n_math"],
                **tool_metrics(model, tok, world, tool_records, args.max_new_tokens)}

    results, eval_seconds = evaluate_all(dirs, score)
    r0 = next(iter(results.values()))
    print(f"\nTinyWorld seed {seed}: math on levels {','.join(map(str, levels))} "
          f"({r0['n_math']} prompts), tool use on {r0['n_tool']} prompts; TIES/DARE density {args.density}, "
          f"DARE seed {args.seed}\n")
    cols = [("math", "math_accuracy"), *[(f"L{lv}", f"accuracy_L{lv}") for lv in levels], ("format", "format_rate"),
            ("exact call", "exact_call"), ("answer", "tool_answer"), ("no call", "no_call")]
    print(markdown_table(results, cols))
    print(f"\n(tools adapter trained in {train_seconds:.0f} s, evaluation {eval_seconds:.0f} s)")
    print(json.dumps({"settings": {**vars(args), "train_seconds": round(train_seconds, 1),
                                   "precision": str(precision.dtype)},
                      "task_vectors": {k: round(v, 4) for k, v in sizes.items()}, "models": results}))


# ----------------------------------------------------------------------------------------------------------------
# Mode lora-from-sft: a tools LoRA and a math (RFT) LoRA, both trained from the SFT model, merged onto it

RFT_LEVELS = (3, 4)  # as scripts/rft_tinyworld.py


def lora_options() -> LoraOptions:
    return LoraOptions(r=16, alpha=32, targets="all-linear")  # as the sft_lora stage


def finished(d: Path) -> dict | None:
    """A finished SFT run's result.json (with its adapter written), or None: trained once, reused after."""
    f = d / "result.json"
    if (d / "adapter").is_dir() and f.is_file():
        result = json.loads(f.read_text())
        if result.get("status") == "finished":
            return result
    return None


def train_tools_lora_from_sft(run: Path, out: Path, world: TinyWorld, steps: int | None, lr: float) -> dict:
    """The pipeline's tools stage (RUN/tools/config.yaml: its data, replay and settings) with LoRA instead of full
    fine-tuning, from the SFT model, at a LoRA learning rate; `steps` None keeps the stage's own."""
    cfg = load_config(sft.SFTConfig, run / "tools" / "config.yaml")
    if Path(cfg.model).parts[-2:] != ("sft", "model"):
        raise SystemExit(f"{run / 'tools' / 'config.yaml'}: the tools stage starts from {cfg.model!r}, not the SFT "
                         "model")
    steps = steps or cfg.train.max_steps
    cfg.out_dir, cfg.model, cfg.method, cfg.lora = str(out), str(run / "sft" / "model"), "lora", lora_options()
    cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_steps = steps, lr, max(1, steps // 20)
    cfg.train.eval_every, cfg.train.save_every, cfg.train.plot, cfg.train.overwrite = max(1, steps // 5), 0, False, True
    # as alignlab.pipeline.stage_tools: the services' chats and every TOOLS_REPLAY_EVERY-th SFT chat
    records = world.service_conversations("train")
    replay = world.sft_conversations("train")[::TOOLS_REPLAY_EVERY]
    print(f"tools adapter: {len(records)} tool chats + {len(replay)} SFT chats replayed, {steps} steps, lr {lr:g}, "
          f"from {cfg.model}", flush=True)
    return sft.run(cfg, resume=False, train_records=records + replay,
                   val_records=world.service_conversations("test")[:100])


def rft_data(run: Path, out: Path, world: TinyWorld, seed: int, n: int, per_prompt: int) -> tuple[list[dict], dict]:
    """scripts/rft_tinyworld.py's steps 1-2: the SFT model's own verified answers to the training prompts of levels
    3-4 (n samples at temperature 1, up to per_prompt distinct right ones a prompt), decontaminated against every
    held-out TinyWorld prompt; written to out/rft.jsonl once and read back after."""
    path, prov = out / "rft.jsonl", out / "rft.provenance.json"
    if path.is_file() and prov.is_file():
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()], json.loads(prov.read_text())
    sft_dir, t0 = run / "sft" / "model", time.time()
    records = [r for level in RFT_LEVELS for r in world.rl_prompts("train", level)]
    model, tok = load_model(sft_dir, dtype=torch.float32).requires_grad_(False), load_tokenizer(sft_dir)
    data, counts, curve = rj.verified_sft_data(EngineModel(model, tok, batch_size=256), TinyWorldMath(), records, n,
                                               per_prompt=per_prompt, max_tokens=96, seed=seed)
    sources = world_test_sources(seed)
    data, report = decontaminate(data, eval_index(sources))
    write_dataset(path, data, {"command": "scripts/merge_tinyworld.py --mode lora-from-sft", "teacher": str(sft_dir),
                               "prompts": f"tinyworld:rl:3-4:train@{seed}", "seed": seed,
                               "settings": {"n": n, "per_prompt": per_prompt}, "filters": counts, "best_of_n": curve,
                               "decontamination": {"against": sources, **report.as_dict()},
                               "sample_seconds": round(time.time() - t0, 1)})
    return data, json.loads(prov.read_text())


def train_math_lora_from_sft(run: Path, out: Path, data: list[dict], seed: int, steps: int, lr: float) -> dict:
    """scripts/rft_tinyworld.py's step 3 (its SFT settings) with LoRA, from the SFT model."""
    cfg = sft.SFTConfig(out_dir=str(out), model=str(run / "sft" / "model"), method="lora", lora=lora_options(),
                        max_len=256, batch_size=32, eval_batches=2, sample_prompts=1, sample_tokens=96,
                        train=TrainConfig(max_steps=steps, lr=lr, warmup_steps=steps // 10, min_lr_ratio=0.1,
                                          eval_every=0, save_every=0, seed=seed, device="cpu", plot=False,
                                          overwrite=True))
    print(f"math adapter: {len(data)} verified level 3-4 answers, {steps} steps, lr {lr:g}, from {cfg.model}",
          flush=True)
    return sft.run(cfg, resume=False, train_records=data, val_records=data[:64])


def lora_from_sft_mode(args, run: Path, out: Path, world: TinyWorld, seed: int) -> None:
    base, full_tools = run / "sft" / "model", run / "tools" / "model"
    t0 = time.time()
    tools_dir = out / f"tools_lora_lr{args.tools_lr:g}_steps{args.tools_steps or 'stage'}"
    tools_result = finished(tools_dir) or train_tools_lora_from_sft(run, tools_dir, world, args.tools_steps,
                                                                     args.tools_lr)
    data, provenance = rft_data(run, out / f"rft_n{args.rft_n}_k{args.rft_per_prompt}", world, seed, args.rft_n,
                                args.rft_per_prompt)
    math_dir = out / f"math_lora_lr{args.math_lr:g}_steps{args.math_steps}"
    math_result = finished(math_dir) or train_math_lora_from_sft(run, math_dir, data, seed, args.math_steps,
                                                                  args.math_lr)
    train_seconds = time.time() - t0
    tools_adapter, math_adapter = tools_dir / "adapter", math_dir / "adapter"
    curve = provenance["best_of_n"]
    training = {"tools_adapter": {"dir": str(tools_dir), "steps": tools_result["step"], "lr": args.tools_lr,
                                  "train_seconds": tools_result["train_seconds"], "val_loss": tools_result["val_loss"]},
                "math_adapter": {"dir": str(math_dir), "steps": math_result["step"], "lr": args.math_lr,
                                 "train_seconds": math_result["train_seconds"], "val_loss": math_result["val_loss"],
                                 "examples": len(data), "pass@1": curve["accuracy"][0],
                                 f"pass@{curve['n'][-1]}": curve["accuracy"][-1],
                                 "prompts_with_none": provenance["filters"]["prompts_with_none"],
                                 "sample_seconds": provenance.get("sample_seconds")}}
    for name, t in training.items():
        print(f"{name}: {t['steps']} steps at lr {t['lr']:g} in {t['train_seconds']:.0f} s, val loss "
              f"{t['val_loss']:.3f} ({t['dir']})")
    print(f"rft data: {len(data)} verified answers; pass@1 {curve['accuracy'][0]:.1%}, pass@{curve['n'][-1]} "
          f"{curve['accuracy'][-1]:.1%} on the training prompts of levels 3-4 (this session's training and sampling: "
          f"{train_seconds:.0f} s)")

    sizes = delta_sizes(base, math_adapter, tools_adapter)
    with torch.no_grad():  # the full tools model's change over the same (adapted) weights, for scale
        w0, w1 = load_model(base).state_dict(), load_model(full_tools).state_dict()
        keys = list(read_adapter_deltas(load_model(base), tools_adapter).deltas)
        sizes["full_tools_relative"] = (sum((w1[k].float() - w0[k].float()).norm() ** 2 for k in keys) ** 0.5
                                        / sum(w0[k].float().norm() ** 2 for k in keys) ** 0.5).item()
    print(f"task vectors over the adapted weights: ‖Δ‖/‖W‖ {sizes['math_relative']:.3f} (math adapter), "
          f"{sizes['tools_relative']:.3f} (tools adapter), {sizes['full_tools_relative']:.3f} (the full tools model); "
          f"cos(Δ_math, Δ_tools) {sizes['cosine']:.3f}")

    pair = [(math_adapter, 1.0), (tools_adapter, 1.0)]
    jobs = {  # name: (directory, options, models); an adapter merged alone is that adapter folded into the base
        "math adapter": ("math_adapter", MergeOptions("linear"), [(math_adapter, 1.0)]),
        "tools adapter": ("tools_adapter", MergeOptions("linear"), [(tools_adapter, 1.0)]),
        "linear 1/1 (sum)": ("linear_sum", MergeOptions("linear", normalize=False), pair),
        "linear 0.5/0.5": ("linear_avg", MergeOptions("linear"), [(math_adapter, 0.5), (tools_adapter, 0.5)]),
        "task_arithmetic λ=1": ("task_arithmetic_1", MergeOptions("task_arithmetic", lam=1.0), pair),
        "ties d=0.5": ("ties_0.5", MergeOptions("ties", density=0.5), pair),
        "ties d=0.8": ("ties_0.8", MergeOptions("ties", density=0.8), pair),
        "dare_ties d=0.8": ("dare_ties_0.8", MergeOptions("dare_ties", density=0.8, seed=args.seed), pair),
    }
    dirs = {"sft (base)": base, "tools (full, pipeline)": full_tools}
    merge_seconds = merge_all(jobs, dirs, base, out)
    levels, hard_levels, per_level, precision, results, eval_seconds = score_all(dirs, world, args, keep_rows=True)
    rows = {name: [float(x) for x in r.pop("hard_correct")] for name, r in results.items()}

    r0, ref_math, ref_tools = results["sft (base)"], results["math adapter"], results["tools adapter"]
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    math_gain = ref_math["hard_accuracy"] - r0["hard_accuracy"]
    kept = {}
    for name in jobs:
        r = results[name]
        change, lo, hi = paired_bootstrap_ci(rows["sft (base)"], rows[name], n_boot=2000, seed=0)
        kept[name] = {"hard_minus_sft": change, "hard_minus_sft_ci": [lo, hi],
                      "math_gain_kept": ratio(change, math_gain) if math_gain > 0 else float("nan"),
                      "math_minus_sft": r["math_accuracy"] - r0["math_accuracy"],
                      "exact_call_vs_tools_adapter": ratio(r["exact_call"], ref_tools["exact_call"]),
                      "answer_vs_tools_adapter": ratio(r["tool_answer"], ref_tools["tool_answer"])}
        kept[name]["hard_cell"] = f"{100 * change:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"
        # what the math adapter adds on top of the tools adapter (0 where the merge holds no tools delta)
        change, lo, hi = paired_bootstrap_ci(rows["tools adapter"], rows[name], n_boot=2000, seed=0)
        kept[name].update({"hard_minus_tools_adapter": change, "hard_minus_tools_adapter_ci": [lo, hi],
                           "math_gain_kept_over_tools": ratio(change, math_gain) if math_gain > 0 else float("nan"),
                           "tools_cell": f"{100 * change:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"})
        kept[name]["math_cell"] = f"{100 * kept[name]['math_minus_sft']:+.1f}"

    hard_name = span(hard_levels)
    print(f"\nTinyWorld seed {seed}, run {run}: base = SFT; a tools LoRA (tools-stage chats + SFT replay, lr "
          f"{args.tools_lr:g}) and a math LoRA (RFT on levels 3-4, lr {args.math_lr:g}), rank 16 on every Linear, both "
          f"from SFT, merged onto it. Math: levels {','.join(map(str, levels))}, {per_level} prompts per level "
          f"({r0['n_math']} in all), and {hard_name} with {r0['n_hard']} prompts (95% Wilson interval); tool use on "
          f"{r0['n_tool']} held-out prompts. Greedy, {precision.dtype}.\n")
    print(results_table(results, levels, hard_name))
    print(f"\nKept, per model: {hard_name} minus SFT in points (paired bootstrap 95% interval over the "
          f"{r0['n_hard']} prompts) and that over the math adapter's own gain ({100 * math_gain:+.1f} points); "
          f"{hard_name} minus the tools adapter's (what the math delta adds to the tools delta) and that over the "
          f"same gain; the tool metrics over the tools adapter's:\n")
    print(markdown_table(kept, [(f"{hard_name} - sft, points", "hard_cell"),
                                ("math gain kept (/ math adapter's)", "math_gain_kept"),
                                (f"{hard_name} - tools adapter, points", "tools_cell"),
                                ("math gain over tools adapter (/ math adapter's)", "math_gain_kept_over_tools"),
                                (f"math {span(levels)} - sft, points", "math_cell"),
                                ("exact call / tools adapter's", "exact_call_vs_tools_adapter"),
                                ("answer / tools adapter's", "answer_vs_tools_adapter")]))
    print(f"\n(training this session {train_seconds:.0f} s, merges {merge_seconds:.0f} s, evaluation "
          f"{eval_seconds:.0f} s)")
    for r in results.values():
        r.pop("hard_cell")
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else (round(v, 4) if isinstance(v, float) else v)  # noqa: E731
    print(json.dumps({"settings": {**vars(args), "precision": str(precision.dtype),
                                   "train_seconds": round(train_seconds, 1), "merge_seconds": round(merge_seconds, 1),
                                   "eval_seconds": round(eval_seconds, 1)},
                      "training": training, "task_vectors": {k: round(v, 5) for k, v in sizes.items()},
                      "models": results,
                      "kept": {k: {m: ([round(x, 4) for x in v] if isinstance(v, list) else clean(v))
                                   for m, v in d.items() if not m.endswith("_cell")} for k, d in kept.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["pipeline", "adapters", "lora-from-sft"], default="pipeline",
                    help="pipeline: merge RUN/tools/model and RUN/grpo/model as task vectors of RUN/sft/model; "
                         "adapters: the earlier LoRA-adapters-from-the-pretrained-base experiment (a negative "
                         "result); lora-from-sft: a tools LoRA and a math (RFT) LoRA trained from RUN/sft/model, "
                         "merged onto it")
    ap.add_argument("--run", default="runs/table/seed0", help="a finished `alignlab pipeline` run")
    ap.add_argument("--out", default=None, help="default: runs/merge/<run's name>-pipeline, runs/merge/<run's "
                                                "name> in adapters mode, runs/merge/<run's name>-lora-from-sft")
    ap.add_argument("--levels", default=None, help="math levels asked (default 1,2,3,4; adapters mode 1,2,3)")
    ap.add_argument("--per-level", type=int, default=None,
                    help="held-out math prompts per level (default 25; adapters mode 40; level 1 has 25)")
    ap.add_argument("--hard-levels", default="3,4",
                    help="pipeline and lora-from-sft modes: levels asked again with more prompts")
    ap.add_argument("--hard-per-level", type=int, default=200,
                    help="pipeline and lora-from-sft modes: prompts per hard level (200: all of the held-out ones)")
    ap.add_argument("--tools-weights", default="", help="pipeline mode: also task arithmetic θ_sft + w τ_tools + "
                    "τ_grpo for each of these comma-separated w (a scan between the average and the sum)")
    ap.add_argument("--tool-prompts", type=int, default=200, help="held-out tool prompts (the first N of 200)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0, help="DARE's masks")
    ap.add_argument("--density", type=float, default=0.5,
                    help="adapters mode: TIES and DARE-TIES' fraction kept (pipeline mode runs 0.5 and 0.8)")
    ap.add_argument("--steps", type=int, default=150,
                    help="adapters mode: tool adapter training steps (the tools stage's 150)")
    ap.add_argument("--lr", type=float, default=3e-3, help="adapters mode: tool adapter learning rate (the tools "
                                                           "stage's)")
    ap.add_argument("--tools-lr", type=float, default=5e-3,
                    help="lora-from-sft mode: the tools adapter's learning rate (the full tools stage's is 3e-3; "
                         "2e-3 and 5e-3 at 150 steps underfit on seed 0, see above)")
    ap.add_argument("--tools-steps", type=int, default=450,
                    help="lora-from-sft mode: the tools adapter's steps (0: the tools stage's, 150)")
    ap.add_argument("--math-lr", type=float, default=1e-3,
                    help="lora-from-sft mode: the math adapter's learning rate (full RFT: 3e-4)")
    ap.add_argument("--math-steps", type=int, default=150, help="lora-from-sft mode: the math adapter's steps")
    ap.add_argument("--rft-n", type=int, default=8, help="lora-from-sft mode: RFT samples per prompt")
    ap.add_argument("--rft-per-prompt", type=int, default=2,
                    help="lora-from-sft mode: verified answers kept per prompt, at most")
    args = ap.parse_args()
    run = Path(args.run)
    suffix = {"pipeline": "-pipeline", "adapters": "", "lora-from-sft": "-lora-from-sft"}[args.mode]
    out = Path(args.out or f"runs/merge/{run.name}{suffix}")
    args.out = str(out)
    settings = json.loads((run / "pipeline.json").read_text())
    world = TinyWorld(seed=settings["seed"], size=settings["sizes"]["world"])
    mode = {"pipeline": pipeline_mode, "adapters": adapters_mode, "lora-from-sft": lora_from_sft_mode}[args.mode]
    mode(args, run, out, world, settings["seed"])


if __name__ == "__main__":
    main()
