"""`alignlab eval`: benchmarks over a local model or any OpenAI-compatible URL, resumable, every number with its
95% interval.

    alignlab eval --model runs/pipeline/sft/model --tasks tinyworld:rl:1-4:test,mc:questions.jsonl --out runs/eval
    results = evaluate(open_model("http://127.0.0.1:8000/v1"), ["humaneval:HumanEval.jsonl.gz"], "runs/eval")

Tasks (a comma-separated list):
    mc:PATH, mmlu[:CONFIG]     multiple choice by answer log-likelihood (tasks.multiple_choice): acc, acc_norm;
                               PATH holds {"question", "choices", "label"} rows, mmlu is hf:cais/mmlu (config all)
    humaneval[:PATH]           Python completions run against the problem's tests in the sandbox: pass@k for
                               k = 1, 10, 100 up to --samples (n samples a problem, sampled when n > 1)
    mt_bench:PATH              MT-Bench's two-turn questions, each answer graded 1-10 by --judge (a model directory
                               or URL): the mean score per turn and per category (eval.grading)
    anything load_source reads generation tasks scored by their own rule (accuracy, format rate): gsm8k[:PATH],
                               tinyworld:rl[:LEVELS]:test[@SEED], tinyworld:safety, tinyworld:tools, a file of
                               prompt-only records; with --fewshot N the task's first N records, written out
                               (their worked solution and answer), become earlier turns and are not scored

Every generation, log-likelihood and test run is appended to OUT/cache.jsonl the moment it is made, keyed by the
model, the request and its parameters: a killed run started again with the same command computes only what is
missing, and a finished one costs nothing to rerun. OUT gets <task>.json (metrics and every sample), results.json
and report.md (with eval.png, the metrics with their intervals).
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from alignlab.errors import UserError
from alignlab.eval.backends import GenRequest
from alignlab.eval.stats import mean_se, pass_at_k
from alignlab.eval.stats import rate as rate_of

# What each kind of metric cannot tell you, printed under its table in the report.
LIMITS = {
    "mc": "Log-likelihood ranks the given options; it says nothing about what the model would write unprompted, "
          "and a few points separate chance from skill on small sets.",
    "humaneval": "The tests are few per problem: a pass is not a proof of correctness, and 164 problems give "
                 "an interval of about +-7 points at pass@1 near 50%.",
    "mt_bench": "A judge model's 1-10 grade: it carries the judge's biases (length, position, its own style; "
                "eval.judge_checks measures them) and a small judge grades noisily.",
    "generate": "Exact match of the final answer: right reasoning with a slip counts as wrong, a lucky guess as "
                "right; greedy decoding shows one reply of many the model could give.",
}


class Cache:
    """JSON Lines of {"key", "value"}, appended and flushed one record at a time; a line cut by a kill is skipped."""

    def __init__(self, path: str | Path):
        self.path, self.values, self.hits = Path(path), {}, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.splitlines():
            try:
                row = json.loads(line)
                self.values[row["key"]] = row["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        self.file = self.path.open("a")
        if text and not text.endswith("\n"):
            self.file.write("\n")

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def get(self, key: str):
        return self.values.get(key)

    def put(self, key: str, value) -> None:
        self.values[key] = value
        self.file.write(json.dumps({"key": key, "value": value}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def cached(cache: Cache, keys: list[str], items: list, compute, desc: str, chunk: int = 32) -> list:
    """compute(items) for the items whose key the cache lacks, in chunks (each stored as soon as it is done)."""
    out = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    cache.hits += len(keys) - len(todo)
    with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, unit="req", leave=False) as bar:
        for s in range(0, len(todo), chunk):
            idx = todo[s:s + chunk]
            for i, value in zip(idx, compute([items[i] for i in idx])):
                cache.put(keys[i], value)
                out[i] = value
            bar.update(len(idx))
    return out


def rate(hits: list[bool]) -> dict:
    """The share of true items with its Wilson 95% interval (stats.rate)."""
    return rate_of(sum(hits), len(hits))


def mean_ci(scores: list[float]) -> dict:
    """A mean with mean +- 1.96 SE."""
    if len(scores) < 2:
        return {"value": scores[0] if scores else float("nan"), "ci": [float("nan")] * 2, "n": len(scores)}
    m, se = mean_se(scores)
    return {"value": m, "ci": [m - 1.96 * se, m + 1.96 * se], "n": len(scores)}


# ---------------------------------------------------------------------------------------------------------------
# The three kinds of task


def run_mc(model, cache: Cache, spec: str, limit: int) -> tuple[dict, list[dict]]:
    from alignlab.tasks.multiple_choice import MultipleChoice, choose

    source = "hf:cais/mmlu:" + (spec.partition(":")[2] or "all") + "/test" if spec.split(":")[0] == "mmlu" \
        else spec.partition(":")[2]
    task = MultipleChoice(source)
    records = task.records()[:limit or None]
    pairs = [(task.context(r), option) for r in records for option in task.continuations(r)]
    keys = [Cache.key(model.name, "loglik", c, o) for c, o in pairs]
    lls = cached(cache, keys, pairs, model.loglikelihood, f"{spec} log-likelihoods")
    samples, at = [], 0
    for r in records:
        scores = [ll for ll, _ in lls[at:at + len(r["choices"])]]
        at += len(r["choices"])
        raw, norm = choose(scores, r["choices"])
        samples.append({"question": r["question"], "choices": r["choices"], "label": r["label"],
                        "loglikelihoods": scores, "pred": raw, "pred_norm": norm})
    metrics = {"acc": rate([s["pred"] == s["label"] for s in samples]),
               "acc_norm": rate([s["pred_norm"] == s["label"] for s in samples])}
    return metrics, samples


def humaneval_run(record: dict, completion: str, timeout_s: float = 10.0, memory_mb: int = 1024):
    """HumanEval's program for one completion (tasks.humaneval.program) run in the sandbox: a SandboxResult."""
    from alignlab.tasks.humaneval import program, truncate
    from alignlab.tools.sandbox import run_python

    return run_python(program(record, truncate(completion)), timeout_s=timeout_s, memory_mb=memory_mb)


def humaneval_passes(record: dict, completion: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> bool:
    """The completion passes the problem's tests: the program exits 0 within its limits."""
    result = humaneval_run(record, completion, timeout_s, memory_mb)
    return result.error is None and result.returncode == 0


def run_humaneval(model, cache: Cache, spec: str, limit: int, samples: int, temperature: float,
                  max_tokens: int, seed: int) -> tuple[dict, list[dict]]:
    from alignlab.tasks.humaneval import HumanEval

    if samples > 1 and temperature <= 0:
        raise UserError(f"{spec}: --samples {samples} needs --temperature > 0 (greedy samples are all the same)")
    task = HumanEval(spec.partition(":")[2])
    records = task.records()[:limit or None]
    requests = [GenRequest(r["prompt"], max_tokens, temperature, tuple(task.stop), seed + j)
                for r in records for j in range(samples)]
    keys = [Cache.key(model.name, req.key()) for req in requests]
    texts = cached(cache, keys, requests, model.generate, f"{spec} completions")
    runs = [(records[i // samples], text) for i, text in enumerate(texts)]
    run_keys = [Cache.key("humaneval-run", r["task_id"], r["test"], text) for r, text in runs]

    def execute(batch):
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda rt: humaneval_passes(rt[0], rt[1]), batch))

    passed = cached(cache, run_keys, runs, execute, f"{spec} tests", chunk=8)
    out, ks = [], [k for k in (1, 10, 100) if k <= samples]
    for i, r in enumerate(records):
        ok = passed[i * samples:(i + 1) * samples]
        out.append({"task_id": r["task_id"], "completions": texts[i * samples:(i + 1) * samples], "passed": ok})
    metrics = {f"pass@{k}": mean_ci([pass_at_k(samples, sum(s["passed"]), k) for s in out]) for k in ks}
    return metrics, out


def run_generate(model, cache: Cache, spec: str, limit: int, temperature: float, max_tokens: int,
                 seed: int, fewshot: int = 0) -> tuple[dict, list[dict]]:
    from alignlab.tasks import load_source

    task, records = load_source(spec, limit + fewshot if limit else 0)
    shots, records = records[:fewshot], records[fewshot:]
    requests = [GenRequest(with_shots(r["prompt"], shots), max_tokens, temperature, (), seed + i)
                for i, r in enumerate(records)]
    keys = [Cache.key(model.name, req.key()) for req in requests]
    replies = cached(cache, keys, requests, model.generate, f"{spec} replies")
    samples = [{"question": task.question(r), "answer": r.get("answer"), "reply": reply,
                "correct": task.correct(reply, r), "format_ok": task.format_ok(reply)}
               for r, reply in zip(records, replies)]
    metrics = {"accuracy": rate([s["correct"] for s in samples]),
               "format_rate": rate([s["format_ok"] for s in samples])}
    return metrics, samples


def demonstration(record: dict) -> str:
    """A record's right reply, written out for few-shot prompting: its worked steps and answer in the format the
    tasks ask for (<think> steps </think> then "Answer: N"), its reference reply, or its answer alone."""
    if record.get("solution"):
        return f"<think>{record['solution']}</think>\nAnswer: {record['answer']}"
    if record.get("reference"):
        return record["reference"]
    if record.get("answer") is not None:
        return f"Answer: {record['answer']}"
    raise UserError("--fewshot needs records with a worked solution, a reference reply or an answer")


def with_shots(prompt, shots: list[dict]):
    """The prompt with each shot before it as an earlier exchange: chat turns after the system message, or
    question/answer paragraphs before a text prompt."""
    if not shots:
        return prompt
    from alignlab.tasks import prompt_text

    if isinstance(prompt, str):
        return "".join(f"{prompt_text(s['prompt'])}\n{demonstration(s)}\n\n" for s in shots) + prompt
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = []
    for s in shots:
        turns += [{"role": "user", "content": prompt_text(s["prompt"])},
                  {"role": "assistant", "content": demonstration(s)}]
    return system + turns + prompt[len(system):]


def run_mt_bench(model, judge, cache: Cache, spec: str, limit: int, max_tokens: int,
                 seed: int) -> tuple[dict, list[dict]]:
    from alignlab.eval.grading import Grader, parse_score
    from alignlab.tasks.mt_bench import NEEDS_REFERENCE, MTBench

    if judge is None:
        raise UserError(f"{spec}: MT-Bench is graded by a judge model: pass --judge DIR|URL")
    records = MTBench(spec.partition(":")[2]).records()[:limit or None]
    answers: list[list[str]] = [[] for _ in records]
    for turn in range(max(len(r["turns"]) for r in records)):  # turn t sees the answers to turns before it
        todo = [i for i, r in enumerate(records) if turn < len(r["turns"])]
        requests = [GenRequest(chat(records[i]["turns"][:turn + 1], answers[i]), max_tokens, 0.0, (), seed + i)
                    for i in todo]
        keys = [Cache.key(model.name, req.key()) for req in requests]
        for i, text in zip(todo, cached(cache, keys, requests, model.generate, f"{spec} turn {turn + 1}")):
            answers[i].append(text)
    graders = {kind: Grader(judge, kind) for kind in ("single", "reference")}
    jobs = []  # (record index, turn, grader kind, judge prompt)
    for i, r in enumerate(records):
        for t, answer in enumerate(answers[i]):
            ref = r["reference"][t] if r["reference"] and t < len(r["reference"]) else None
            kind = "reference" if ref and r["category"] in NEEDS_REFERENCE else "single"
            question = r["turns"][0] if t == 0 else \
                f"{r['turns'][0]}\n\n[Assistant's first answer]\n{answers[i][0]}\n\n[Follow-up]\n{r['turns'][t]}"
            jobs.append((i, t, kind, graders[kind].prompt(question, answer, ref)))
    requests = [GenRequest([{"role": "user", "content": text}], 256) for *_, text in jobs]
    keys = [Cache.key(judge.name, "judge", req.key()) for req in requests]
    replies = cached(cache, keys, requests, judge.generate, f"{spec} judging")
    samples = [{"question_id": r["question_id"], "category": r["category"], "turns": r["turns"], "answers": answers[i],
                "grades": [], "judge_replies": []} for i, r in enumerate(records)]
    for (i, _, kind, _), reply in zip(jobs, replies):
        samples[i]["grades"].append(parse_score(reply, kind))
        samples[i]["judge_replies"].append(reply)
    metrics = {}
    for t in range(max(len(s["grades"]) for s in samples)):
        scores = [s["grades"][t] for s in samples if t < len(s["grades"]) and s["grades"][t] is not None]
        metrics[f"turn {t + 1}"] = {**mean_ci(scores), "unit": "score"}
    for cat in sorted({s["category"] for s in samples}):
        scores = [g for s in samples if s["category"] == cat for g in s["grades"] if g is not None]
        metrics[cat] = {**mean_ci(scores), "unit": "score"}
    metrics["unparseable"] = {"value": sum(g is None for s in samples for g in s["grades"]), "ci": [float("nan")] * 2,
                              "n": len(jobs), "unit": "count"}
    return metrics, samples


def chat(questions: list[str], answers: list[str]) -> list[dict]:
    """user q1, assistant a1, ..., user q_t: the chat up to the t-th question."""
    messages = []
    for q, a in zip(questions, [*answers, None]):
        messages.append({"role": "user", "content": q})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    return messages


def task_kind(spec: str) -> str:
    head = spec.split(":")[0]
    return {"mc": "mc", "mmlu": "mc", "humaneval": "humaneval", "mt_bench": "mt_bench"}.get(head, "generate")


# ---------------------------------------------------------------------------------------------------------------
# The run


def evaluate(model, tasks: list[str], out: str | Path, limit: int = 0, samples: int = 1, temperature: float = 0.0,
             max_tokens: int = 256, seed: int = 0, judge=None, fewshot: int = 0) -> dict:
    """Every task on `model` (eval.backends), its files under `out` (module docstring); returns results.json's
    content: {task: {"kind", "metrics": {name: {"value", "ci", "n"}}}} plus the cache's hit count."""
    out = Path(out)
    cache = Cache(out / "cache.jsonl")
    results = {}
    try:
        for spec in tasks:
            kind = task_kind(spec)
            if kind == "mc":
                metrics, rows = run_mc(model, cache, spec, limit)
            elif kind == "mt_bench":
                metrics, rows = run_mt_bench(model, judge, cache, spec, limit, max_tokens, seed)
            elif kind == "humaneval":
                metrics, rows = run_humaneval(model, cache, spec, limit, samples, temperature, max_tokens, seed)
            else:
                metrics, rows = run_generate(model, cache, spec, limit, temperature, max_tokens, seed, fewshot)
            results[spec] = {"kind": kind, "metrics": metrics}
            (out / f"{file_name(spec)}.json").write_text(json.dumps(
                {"task": spec, "model": model.label, "metrics": metrics, "samples": rows}, indent=1))
    finally:
        cache.close()
    summary = {"model": model.label, "tasks": results, "cached": cache.hits}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, out)
    return summary


def file_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")[:80] or "task"


def write_report(summary: dict, out: Path) -> None:
    """report.md: one table of metrics with their 95% intervals, what each kind cannot tell you, and eval.png."""
    lines = ["# Evaluation", "", f"Model: `{summary['model']}`", "",
             "| task | metric | value | 95% interval | n |", "|---|---|---|---|---|"]
    bars = []
    for spec, res in summary["tasks"].items():
        for name, m in res["metrics"].items():
            lines.append(f"| {spec} | {name} | {fmt(m)} | {fmt_ci(m)} | {m['n']} |")
            if m.get("unit") is None:
                bars.append((f"{spec}\n{name}", m["value"], *m["ci"]))
    lines += [""] + [f"- **{kind}**: {LIMITS[kind]}" for kind in sorted({r["kind"] for r in summary["tasks"].values()})]
    if bars:
        plot_bars(bars, out / "eval.png")
        lines += ["", "![metrics](eval.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def fmt(m: dict) -> str:
    """A metric's value: a rate as a percentage, a score with two decimals, a count as it is."""
    unit = m.get("unit")
    return f"{m['value']:.1%}" if unit is None else f"{m['value']:.2f}" if unit == "score" else f"{m['value']:g}"


def fmt_ci(m: dict) -> str:
    lo, hi = m["ci"]
    if lo != lo:
        return ""
    return f"{lo:.1%} to {hi:.1%}" if m.get("unit") is None else f"{lo:.2f} to {hi:.2f}"


def plot_bars(bars: list[tuple[str, float, float, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import save_figure

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(bars)), 3.5))
    values = [v for _, v, _, _ in bars]
    errors = [[max(0, v - lo) if lo == lo else 0 for _, v, lo, _ in bars],
              [max(0, hi - v) if hi == hi else 0 for _, v, _, hi in bars]]
    ax.bar(range(len(bars)), values, yerr=errors, capsize=4, color="#4c78a8")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (95% interval)")
    return save_figure(fig, path)
