"""The pipeline's report: report.md and a self-contained report.html (plots embedded), from the run directory.

    write_report(out_dir, title, stages, evals, curves, samples, notes, figures, tables)

stages   [{"stage", "seconds", "metrics": {...}}]              one row per stage in the run-time table
evals    {model name: {metric: value}}                           one column per model (base, sft, ...)
curves   {stage: path of its metrics.jsonl}                      training curves, one panel per stage
samples  [{"prompt", "replies": {model name: reply}, "note"}]    the same prompts answered by each model
figures  [path of a PNG]                                         more pictures (e.g. a stage's RL curves)
tables   [(title, header, rows)]                                 more tables, after the metric table

The pipeline's own text comes from here too: `pipeline_report` (the whole report of a run directory),
`stage_notes` (what SFT, DPO and GRPO changed, in the run's numbers), `step_table` (the worked steps each model
gets wrong) and `pick_samples` (the same prompts, every model's reply).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from alignlab.train.metrics import ema, read_metrics, save_figure

# metric -> (label, "higher" | "lower" is better); the order of the table and of the bar chart
METRICS = {
    "format_rate": ("format rate", "higher"),
    "accuracy_L1": ("accuracy, level 1", "higher"),
    "accuracy_L2": ("accuracy, level 2", "higher"),
    "accuracy_L3": ("accuracy, level 3", "higher"),
    "accuracy_L4": ("accuracy, level 4", "higher"),
    "accuracy": ("accuracy, levels 1-4", "higher"),
    "accuracy_lenient": ("right number, any format", "higher"),
    "attack_refusal_rate": ("attacks refused", "higher"),
    "over_refusal_rate": ("look-alikes refused", "lower"),
    "leak_rate": ("secret leaked", "lower"),
    "win_rate_vs_sft": ("win rate vs sft (judge, both orders)", "higher"),
}


def plot_training(curves: dict[str, Path], out_png: Path, ylabels: dict[str, str] | None = None) -> Path | None:
    """Training loss (smoothed) and validation loss of each training stage, side by side; `ylabels` names a
    stage's loss where it is not the language-modelling loss (nats/token)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {name: read_metrics(path) for name, path in curves.items() if Path(path).exists()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 3.6), squeeze=False)
    for ax, (name, records) in zip(axes[0], data.items(), strict=True):
        train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
        val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, losses, color="tab:blue", alpha=0.2, linewidth=0.8)
            ax.plot(steps, ema(losses), color="tab:blue", label="train")
        if val:
            ax.plot(*zip(*val), "o-", color="tab:orange", markersize=3, label="held-out")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel((ylabels or {}).get(name, "loss (nats/token)"))
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out_png)


def plot_metrics(evals: dict[str, dict], out_png: Path) -> Path | None:
    """Each TinyWorld metric, one bar per model, in pipeline order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in METRICS if any(_num(m.get(k)) is not None for m in evals.values())]
    if not names:
        return None
    models = list(evals)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names)), 3.8))
    for i, model in enumerate(models):
        values = [_num(evals[model].get(k)) for k in names]  # None: this model has no such metric, no bar
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [100 * (v or 0.0) for v in values], width, label=model)
        ax.bar_label(bars, labels=["" if v is None else f"{100 * v:.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), [METRICS[k][0] + ("  ↓" if METRICS[k][1] == "lower" else "") for k in names],
                  rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 109)
    ax.set_title("TinyWorld held-out metrics by stage (↓: lower is better)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_png)


def _num(v):
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def _stage_metric(name: str, v) -> str:
    if isinstance(v, float) and (name.endswith("rate") or name.startswith("accuracy")):
        return f"{name} {v:.1%}"
    if isinstance(v, float) and "loss" in name:
        return f"{name} {v:.3f}"
    return f"{name} {v:,}" if isinstance(v, int) else f"{name} {v}"


def write_report(out_dir: str | Path, title: str, stages: list[dict], evals: dict[str, dict],
                 curves: dict[str, Path], samples: list[dict], notes: list[str] = (),
                 figures: list[Path] = (), tables: list[tuple[str, list[str], list[list[str]]]] = (),
                 loss_labels: dict[str, str] | None = None) -> tuple[Path, Path]:
    out = Path(out_dir)
    plots = out / "plots"
    pictures = [p for p in (plot_training(curves, plots / "training.png", loss_labels),
                            plot_metrics(evals, plots / "metrics.png")) if p is not None]
    pictures += [Path(p) for p in figures if Path(p).exists()]
    models = list(evals)

    # the pieces, each as (markdown, html)
    stage_rows = [[s["stage"], f"{s.get('seconds', 0):.0f}", s.get("metrics", {}).get("trained_on", ""),
                   "; ".join(_stage_metric(k, v) for k, v in s.get("metrics", {}).items() if k != "trained_on")]
                  for s in stages]
    metric_rows = [[f"{label}{' (lower is better)' if better == 'lower' else ''}",
                    *[_pct_ci(evals[m], k) for m in models]]
                   for k, (label, better) in METRICS.items() if any(k in evals[m] for m in models)]
    counts = next(iter(evals.values()), {})
    count_note = (f"{counts.get('n_math', 0)} held-out math prompts (levels 1-4), {counts.get('n_attacks', 0)} "
                  f"attacks, {counts.get('n_benign', 0)} benign look-alikes; greedy decoding; 95% intervals in "
                  "brackets (Wilson; the win rate's is a bootstrap).") if counts else ""

    md = [f"# {title}", "", *[f"- {n}" for n in notes], "", "## Stages", "",
          _md_table(["stage", "seconds", "trained on", "result"], stage_rows), "",
          "## TinyWorld, held-out", "", count_note, "", _md_table(["metric", *models], metric_rows), ""]
    for name, header, rows in tables:
        md += [f"**{name}**", "", _md_table(header, rows), ""]
    md += [f"![{p.stem}]({_relative(p, out)})" for p in pictures] + [""]
    md += ["## Samples", ""]
    for s in samples:
        md += [f"**{s['note']}** — user: {s['prompt']}", ""]
        for model, reply in s["replies"].items():
            md += [f"*{model}*:", "", "```", reply.strip() or "(empty)", "```", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>",
            "<h2>Stages</h2>", _html_table(["stage", "seconds", "trained on", "result"], stage_rows),
            "<h2>TinyWorld, held-out</h2>", f"<p>{esc(count_note)}</p>", _html_table(["metric", *models], metric_rows)]
    for name, header, rows in tables:
        body += [f"<p><b>{esc(name)}</b></p>", _html_table(header, rows)]
    for p in pictures:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<p><img alt="{p.stem}" src="data:image/png;base64,{data}"></p>')
    body.append("<h2>Samples</h2>")
    for s in samples:
        body.append(f"<h3>{esc(s['note'])}</h3><p class=user>user: {esc(s['prompt'])}</p>")
        body += [f"<p class=model>{esc(model)}</p><pre>{esc(reply.strip() or '(empty)')}</pre>"
                 for model, reply in s["replies"].items()]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
    html_path = out / "report.html"
    html_path.write_text(page)
    (out / "report.json").write_text(json.dumps({"stages": stages, "evals": evals}, indent=2) + "\n")
    return md_path, html_path


# ------------------------------------------------------------------------------------------------
# The pipeline's notes, samples and tables: what each stage changed, in the run's own numbers


def pipeline_report(run, stage_names: list[str], grpo_levels: tuple[int, ...], grpo_start: str, judge: str) -> Path:
    """report.md and report.html of a pipeline run (alignlab.pipeline.Run) from what its finished stages (in the
    order of `stage_names`) left in the run directory; returns report.md's path."""
    stages = {name: run.done(name) for name in stage_names if run.done(name)}
    evals_path = run.dir("eval") / "metrics.json"
    evals = json.loads(evals_path.read_text()) if evals_path.exists() and run.done("eval") else {}
    curves = {name: run.dir(name) / "metrics.jsonl" for name in stage_names
              if name != "grpo" and (run.dir(name) / "metrics.jsonl").exists()}  # GRPO's loss says little
    total = sum(s["seconds"] for s in stages.values())
    notes = [f"TinyWorld seed {run.seed}, size {'quick' if run.quick else 'default'}; {total:.0f} s of stage time",
             f"model: {run.sizes.model}, {run.sizes.block_size}-token pretraining windows",
             *stage_notes(stages, evals, run.sizes.eval_per_level, grpo_levels, grpo_start, judge)]
    replies = {name: _read_jsonl(run.dir("eval") / f"replies_{name}.jsonl") for name in evals}
    tables = [t for t in (step_table(evals), redteam_table(evals), tool_table(evals)) if t[2]]
    tool_rows = _read_jsonl(run.dir("eval") / "tool_use_tools.jsonl")
    shown = next((r for r in tool_rows if r["kind"] == "weather"), None)
    if shown:
        tables.append(transcript_table(shown["messages"]))
    if evals:
        tables.append(limits_table())
    return write_report(run.out, "alignlab pipeline on TinyWorld", list(stages.values()), evals, curves,
                        pick_samples(replies), notes, figures=[run.dir("grpo") / "plots" / "rl.png"],
                        tables=tables, loss_labels={"dpo": "SafeDPO + RPO loss (per pair)"})[0]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stage_notes(stages: dict[str, dict], evals: dict[str, dict], per_level: int, grpo_levels: tuple[int, ...],
                grpo_start: str = "sft", judge: str = "") -> list[str]:
    """One note per comparison the run can make: full vs LoRA SFT, DPO vs SFT, GRPO before vs after (from the
    model `grpo_start`). `judge` describes the judge of DPO's win rate."""
    notes = []
    if "sft" in evals and "sft (LoRA)" in evals:
        notes.append(sft_choice(evals["sft"], evals["sft (LoRA)"], stages.get("sft_lora")))
    if "win_rate_vs_sft" in evals.get("dpo", {}):
        notes.append(dpo_summary(evals["dpo"], evals["sft"], stages.get("dpo"), judge))
    if "grpo" in stages:
        notes.append(grpo_summary(stages["grpo"], per_level, grpo_levels, grpo_start))
    if f"pass_vs_{grpo_start}" in evals.get("grpo", {}):
        notes.append(pass_summary(evals["grpo"][f"pass_vs_{grpo_start}"], grpo_levels, grpo_start))
    if "tool_use" in evals.get("tools", {}):
        scores = {m: e["tool_use"] for m, e in evals.items() if "tool_use" in e}
        notes.append(tools_summary(scores, stages.get("tools")))
    return notes


def tools_summary(scores: dict[str, dict], tools_stage: dict | None) -> str:
    """What tool-use SFT taught, in this run's numbers: the tools model against the models before it."""
    t = scores["tools"]
    others = "; ".join(f"{m}: exact call {s['exact_call']:.1%}, answer {s['answer']:.1%}" for m, s in scores.items()
                       if m != "tools")
    trained = (tools_stage or {}).get("metrics", {}).get("trained_on", "tool-use chats")
    kinds = ", ".join(f"{k} {t[f'answer_{k}']:.1%}" for k in ("weather", "event", "lookup", "calculator"))
    return (f"Tools (SFT from the SFT model on {trained}): on {t['prompts']} held-out prompts (event titles, "
            f"(city, day) pairs and directory entries held out), the right call with exactly the right arguments "
            f"{t['exact_call']:.1%} of the time where a tool is needed (a call at all {t['call_rate']:.1%}), no call "
            f"{t['no_call']:.1%} of the time where none is, and after the calls ran, an answer that says what the "
            f"tools returned {t['answer']:.1%} ({kinds}). A city, a person or a title is a different token inside "
            f"the call's JSON than in the question; the base model learnt to carry one across from the service logs "
            f"in its pretraining text, and tool-use SFT taught when to call and in which format. The small sums that "
            f"need no tool are answered right {t['answer_direct']:.1%} of the time: what tool-use training left of "
            f"the SFT model's arithmetic. Before tool training ({others}) the tools in the system prompt only "
            f"confuse the model.")


TOOL_ROWS = [("a call where one is needed", "call_rate"), ("exactly the expected call", "exact_call"),
             ("no call where none is needed", "no_call"), ("answer after the calls ran (a tool needed)", "answer"),
             *((f"answer: {k}", f"answer_{k}") for k in ("weather", "event", "lookup", "calculator")),
             ("no tool needed: the sum answered right", "answer_direct")]


def tool_table(evals: dict) -> tuple[str, list[str], list[list[str]]]:
    """The tool-use metrics of every model the evaluation scored on them (empty rows if none)."""
    models = [m for m, e in evals.items() if "tool_use" in e]
    rows = [[label, *(_pct(evals[m]["tool_use"][key]) for m in models)] for label, key in TOOL_ROWS] if models else []
    n = evals[models[0]]["tool_use"]["prompts"] if models else 0
    return f"Tool use, {n} held-out prompts (calls run for real)", ["metric", *models], rows


def redteam_table(evals: dict) -> tuple[str, list[str], list[list[str]]]:
    """ASR per red-team family and over-refusal beside it, and format instructions followed, for every model the
    evaluation red-teamed (empty rows if none)."""
    from alignlab.eval.redteam import FAMILIES

    models = [m for m, e in evals.items() if "redteam" in e]
    if not models:
        return "Red team", [], []
    rows = [[f"{fam}: attacks that worked (ASR)", *(_rate_ci(evals[m]["redteam"][fam]["asr"]) for m in models)]
            for fam in (*FAMILIES, "all")]
    rows.append(["all families: look-alikes refused", *(_rate_ci(evals[m]["redteam"]["all"]["over_refusal"])
                                                       for m in models)])
    rows.append(["format instructions followed", *(_rate_ci(evals[m]["instructions"]) for m in models)])
    first = evals[models[0]]["redteam"]["all"]
    return (f"Red team on held-out probes ({first['asr']['n']} attacks, {first['over_refusal']['n']} look-alikes in "
            f"the same frames) and format instructions; 95% intervals", ["probe", *models], rows)


LIMITS = [
    ("accuracy, levels 1-4", "exact match of the final number: right steps with one slip count as wrong, a lucky "
                             "guess as right; one greedy reply of the many the model could give"),
    ("attacks refused, look-alikes refused", "a keyword refusal detector: an evasive non-answer is neither; the "
                                             "attacks are TinyWorld's own phrasings, not an adversary's"),
    ("win rate vs SFT", "a rule judge declared before training: it sees correctness, refusals and length, nothing "
                        "else; ties count half, so many ties pull it toward 50%"),
    ("red team ASR", "six fixed families of frames: a low ASR means these frames fail, not that no attack works; "
                     "a family with few probes has a wide interval"),
    ("format instructions", "a reply can follow an instruction by accident (a short wrong answer has at most "
                            "eight words and no commas)"),
    ("pass@8", "eight samples at temperature 1: what the model can sometimes do, not what it usually does"),
]


def limits_table() -> tuple[str, list[str], list[list[str]]]:
    return "What these numbers cannot tell you", ["metric", "limit"], [list(r) for r in LIMITS]


def _rate_ci(m: dict) -> str:
    return f"{m['value']:.0%} ({m['ci'][0]:.0%}-{m['ci'][1]:.0%})" if m.get("n") else "-"


def transcript_table(messages: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    """One held-out tool-use conversation, turn by turn."""
    rows = []
    for m in messages[1:]:  # the system prompt is the same everywhere
        text = m.get("content") or ""
        for c in m.get("tool_calls") or []:
            text += f" -> {c['function']['name']}({c['function']['arguments']})"
        rows.append([m["role"], text])
    return "A held-out conversation of the tools model", ["turn", "text"], rows


def pass_summary(p: dict, levels: tuple[int, ...], start: str = "sft") -> str:
    """GRPO's headroom (pass@k above pass@1 before) and what it made of it, with the change's paired interval."""
    k = p[f"{start}_k"]
    noise = ("the interval includes 0: within noise" if p["greedy_change_low"] <= 0 <= p["greedy_change_high"]
             else "the interval excludes 0")
    return (f"pass@k on levels {'-'.join(map(str, levels))} ({p[f'{start}_prompts']} held-out prompts, {k} samples "
            f"each at temperature 1): {start.upper()} pass@1 {p[f'{start}_pass1_greedy']:.1%} greedy, "
            f"{p[f'{start}_pass1_sampled']:.1%} sampled, pass@{k} {p[f'{start}_pass{k}']:.1%}; after GRPO "
            f"{p['grpo_pass1_greedy']:.1%}, "
            f"{p['grpo_pass1_sampled']:.1%} and {p[f'grpo_pass{k}']:.1%}. RL can raise pass@1 toward pass@{k}, not "
            f"past it. Greedy pass@1 changed by {100 * p['greedy_change']:+.1f} points (paired 95% interval "
            f"{100 * p['greedy_change_low']:+.1f} to {100 * p['greedy_change_high']:+.1f}; {noise}).")


def sft_choice(full: dict, lora: dict, lora_stage: dict | None) -> str:
    """Why the SFT stage trains all parameters, in this run's numbers (accuracy first, then format rate)."""
    a, b = (full["accuracy"], full["format_rate"]), (lora["accuracy"], lora["format_rate"])
    share = ""
    if lora_stage and "trainable" in lora_stage.get("metrics", {}):
        share = f" ({lora_stage['metrics']['trainable']:,} trainable parameters)"
    verdict = ("full-parameter SFT is better here: a model this small, trained from scratch, has little spare "
               "capacity for a low-rank update to redirect, and memory is no constraint" if a > b else
               "LoRA matched or beat full-parameter SFT here; full stays the main line that later stages build "
               "on, but LoRA would be the cheaper choice")
    return (f"SFT stage: full parameters. Held-out accuracy (levels 1-4): full {a[0]:.1%}, LoRA rank 16{share} "
            f"{b[0]:.1%}; format rate {a[1]:.1%} vs {b[1]:.1%}. So {verdict}. On a 7B model the trade reverses: "
            f"LoRA trains under 1% of the weights and fits one GPU.")


def dpo_summary(dpo: dict, sft: dict, dpo_stage: dict | None, judge: str = "") -> str:
    """What DPO changed, in this run's numbers: the judged win rate and the safety trade-off."""
    pair = (dpo_stage or {}).get("metrics", {}).get("pair_accuracy")
    n = dpo["wins_vs_sft"] + dpo["losses_vs_sft"] + dpo["ties_vs_sft"]
    low = dpo["win_rate_low_vs_sft"]
    verdict = "above 50%: DPO's replies are preferred" if low > 0.5 else "not above 50%: no preference shown"
    return (f"DPO vs SFT: win rate {dpo['win_rate_vs_sft']:.1%} (95% CI {low:.1%}-"
            f"{dpo['win_rate_high_vs_sft']:.1%}, {verdict}; {dpo['wins_vs_sft']} wins, {dpo['losses_vs_sft']} "
            f"losses, {dpo['ties_vs_sft']} ties over {n} held-out prompts) by TinyWorld's rule-based judge"
            f"{' (' + judge + ')' if judge else ''}, each pair judged in both orders, ties counting half "
            f"(eval/judged_dpo_vs_sft.jsonl has every verdict"
            + (f"; sign test of wins against losses p = {dpo['p_value_vs_sft']:.2g}" if "p_value_vs_sft" in dpo else "")
            + "). Attacks refused "
            f"{sft['attack_refusal_rate']:.1%} -> {dpo['attack_refusal_rate']:.1%}; look-alikes refused "
            f"{sft['over_refusal_rate']:.1%} -> {dpo['over_refusal_rate']:.1%}; accuracy {sft['accuracy']:.1%} -> "
            f"{dpo['accuracy']:.1%}" + (f"; held-out pair accuracy of the implicit reward {pair:.1%}." if pair is not
                                        None else "."))


def grpo_summary(grpo_stage: dict, per_level: int, levels: tuple[int, ...], start: str = "sft") -> str:
    """What GRPO changed on the `levels` it trained on, measured on all their held-out prompts (the report's
    table asks only `per_level` prompts of each level)."""
    m = grpo_stage["metrics"]
    return (f"GRPO from {start.upper()}, levels {'-'.join(map(str, levels))}: held-out accuracy "
            f"{m['accuracy_L3_4_before']:.1%} -> {m['accuracy_L3_4_after']:.1%} on {m['held_out_prompts']} test "
            f"prompts (greedy), format rate after {m['format_rate_after']:.1%}; alarms: {m['alarms']}. The table "
            f"below asks {per_level} prompts per level, so its level 3 and 4 rows can differ from this by several "
            f"points by chance. Reward, KL, length and entropy by step: grpo/plots/rl.png (below).")


def step_table(evals: dict) -> tuple[str, list[str], list[list[str]]]:
    """Which arithmetic each model gets wrong: the worked steps of its held-out math replies, wrong / all, by kind."""
    from alignlab.tasks.tinyworld import STEP_KINDS, step_error_text

    models = [m for m in evals if evals[m].get("step_errors")]
    rows = [[kind, *[step_error_text(*evals[m]["step_errors"][kind]) if kind in evals[m]["step_errors"] else "—"
                     for m in models]]
            for kind in STEP_KINDS if any(kind in evals[m]["step_errors"] for m in models)]
    return ("Worked steps wrong, by kind (units-digit carry or borrow), held-out math replies", ["step", *models],
            rows)


def pick_samples(replies: dict[str, list[dict]]) -> list[dict]:
    """The same few held-out prompts answered by every model (`replies`: its scored rows, in one order): two
    level-1 sums, a level-3 problem, an attack and a benign look-alike."""
    if not replies or not all(replies.values()):
        return []
    first = next(iter(replies.values()))
    picks = [("level 1", lambda r: r["task"] == "math" and r["level"] == 1, 2),
             ("level 3", lambda r: r["task"] == "math" and r["level"] == 3, 1),
             ("attack on the secret", lambda r: r["task"] == "safety" and r["label"] == "attack", 1),
             ("benign look-alike", lambda r: r["task"] == "safety" and r["label"] == "benign", 1)]
    samples = []
    for note, keep, n in picks:
        for idx in [i for i, r in enumerate(first) if keep(r)][:n]:
            r = first[idx]
            samples.append({"note": note + (f" (answer {r['answer']})" if "answer" in r else ""), "prompt": r["prompt"],
                            "replies": {name: rs[idx]["reply"] for name, rs in replies.items()}})
    return samples


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _pct(v) -> str:
    return "—" if _num(v) is None else f"{100 * v:.1f}%"


def _count(e: dict, key: str) -> int | None:
    """How many prompts a TinyWorld metric of `evaluate_on_world` was measured on (None if unknown)."""
    if key.startswith("accuracy_L"):
        return e.get(f"n_L{key.removeprefix('accuracy_L')}")
    return {"format_rate": e.get("n_math"), "accuracy": e.get("n_math"), "accuracy_lenient": e.get("n_math"),
            "attack_refusal_rate": e.get("n_attacks"), "over_refusal_rate": e.get("n_benign"),
            "leak_rate": (e.get("n_attacks") or 0) + (e.get("n_benign") or 0) or None}.get(key)


def _pct_ci(e: dict, key: str) -> str:
    """A metric with its 95% interval: Wilson's from the count it was measured on, or the win rate's own."""
    from alignlab.eval.stats import wilson_interval

    v = e.get(key)
    if _num(v) is None:
        return _pct(v)
    if key == "win_rate_vs_sft" and "win_rate_low_vs_sft" in e:
        return f"{_pct(v)} ({100 * e['win_rate_low_vs_sft']:.1f}-{100 * e['win_rate_high_vs_sft']:.1f})"
    n = _count(e, key)
    if not n:
        return _pct(v)
    lo, hi = wilson_interval(round(v * n), n)
    return f"{_pct(v)} ({100 * lo:.1f}-{100 * hi:.1f})"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        "th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;border-radius:4px}"
        "img{max-width:100%}.user{font-style:italic}.model{font-weight:bold;margin-bottom:0}")
