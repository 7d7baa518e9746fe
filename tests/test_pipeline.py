"""`alignlab pipeline --quick` end to end: SFT beats the base model, a killed stage resumes, finished stages
are reused, and the report is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]


def pipeline_process(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "alignlab.cli", "pipeline", "--quick", "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_quick_pipeline_sft_beats_base_resumes_and_reuses(tmp_path, capsys):
    out = tmp_path / "run"
    # 1. start, and stop it with SIGTERM once SFT has written a checkpoint
    proc = pipeline_process(out)
    deadline = time.time() + 300
    while not list((out / "sft" / "checkpoints").glob("step_*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before SFT wrote a checkpoint:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "interrupted by SIGTERM" in first, first
    assert (out / "pretrain" / "stage.json").exists() and not (out / "sft" / "stage.json").exists()

    # 2. run again: pretraining is reused, SFT resumes from its checkpoint, evaluation and the report follow
    proc = pipeline_process(out)
    second = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, second
    assert "pretrain: done already" in second
    assert "resumed from" in second and "/sft/checkpoints/step_" in second, second
    for stage in STAGES:
        assert (out / stage.name / "stage.json").exists() != stage.optional, stage.name
    evals = json.loads((out / "eval" / "metrics.json").read_text())
    assert list(evals) == ["base", "sft", "sft (LoRA)", "tools", "dpo", "grpo"]
    for name in ("base", "sft", "tools"):  # tool use before and after the tools stage, the calls run for real
        t = evals[name]["tool_use"]
        assert t["prompts"] == 200 and 0 <= t["exact_call"] <= t["call_rate"] <= 1
        assert len((out / "eval" / f"tool_use_{name}.jsonl").read_text().splitlines()) == 200
    assert evals["sft"]["format_rate"] > evals["base"]["format_rate"] + 0.3, evals
    dpo = evals["dpo"]  # judged against SFT on the same prompts: every prompt is a win, a loss or a tie
    assert dpo["wins_vs_sft"] + dpo["losses_vs_sft"] + dpo["ties_vs_sft"] == dpo["n_math"] + dpo["n_attacks"] + \
        dpo["n_benign"]
    assert dpo["win_rate_low_vs_sft"] <= dpo["win_rate_vs_sft"] <= dpo["win_rate_high_vs_sft"]
    judged = (out / "eval" / "judged_dpo_vs_sft.jsonl").read_text().splitlines()
    assert len(judged) == dpo["wins_vs_sft"] + dpo["losses_vs_sft"] + dpo["ties_vs_sft"]
    assert 0.0 <= json.loads((out / "dpo" / "stage.json").read_text())["metrics"]["pair_accuracy"] <= 1.0
    grpo = json.loads((out / "grpo" / "stage.json").read_text())["metrics"]  # before/after on every L3-4 test prompt
    assert grpo["step"] == 8 and 0.0 <= grpo["accuracy_L3_4_after"] <= 1.0 and grpo["held_out_prompts"] > 0
    assert (out / "grpo" / "plots" / "rl.png").exists()
    p = evals["grpo"]["pass_vs_dpo"]  # GRPO's headroom: pass@1 sampled <= pass@8, on the same prompts
    for name in ("dpo", "grpo"):
        assert p[f"{name}_pass1_sampled"] <= p[f"{name}_pass8"] and p[f"{name}_prompts"] == 20
    assert p["greedy_change_low"] <= p["greedy_change"] <= p["greedy_change_high"]
    steps = evals["sft"]["step_errors"]  # every worked step of SFT's replies checked, by kind
    assert steps and all(0 <= wrong <= total for wrong, total in steps.values())
    report_md, report_html = out / "report.md", out / "report.html"
    assert f"report: {report_md}" in second
    md, page = report_md.read_text(), report_html.read_text()
    assert "format rate" in md and "| base | sft | sft (LoRA) | tools | dpo | grpo |" in md.replace("| metric ", "")
    assert "Tool use, 200 held-out prompts" in md and "| base | sft | tools |" in md.replace("| metric ", "")
    assert "SFT stage: full parameters. Held-out accuracy" in md and "DPO vs SFT: win rate" in md
    assert "GRPO from DPO, levels 3-4: held-out accuracy" in md and "](grpo/plots/rl.png)" in md
    assert "declared before training" in md  # DPO's judge and its rules
    assert "pass@k on levels 3-4 (20 held-out prompts, 8 samples each" in md and "paired 95% interval" in md
    assert "Worked steps wrong, by kind" in md
    for name in ("sft", "dpo", "grpo"):  # the red team and format instructions, with intervals
        rt = evals[name]["redteam"]
        assert rt["all"]["asr"]["n"] > 50 and 0 <= rt["all"]["asr"]["ci"][0] <= rt["all"]["asr"]["value"]
        assert evals[name]["instructions"]["n"] > 10
    assert "base" not in evals or "redteam" not in evals["base"]
    assert "Red team on held-out probes" in md and "| persona: attacks that worked (ASR) |" in md
    assert "What these numbers cannot tell you" in md and "sign test of wins against losses p =" in md
    assert "win rate vs sft" in md
    assert "data:image/png;base64," in page and (out / "plots" / "metrics.png").exists()
    assert (out / "plots" / "training.png").exists()

    # any model directory can be scored the same way from the command line
    assert main(["eval-world", "--model", str(out / "sft" / "model"), "--per-level", "2", "--safety", "2",
                 "--out", str(tmp_path / "replies.jsonl")]) == 0
    assert len((tmp_path / "replies.jsonl").read_text().splitlines()) == 4 * 2 + 2 * 2
    capsys.readouterr()
    assert main(["eval-world", "--model", str(out / "sft" / "model"), "--levels", "3,4", "--per-level", "2",
                 "--safety", "0", "--out", str(tmp_path / "l34.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "l34.jsonl").read_text().splitlines()]
    assert sorted(r["level"] for r in rows) == [3, 3, 4, 4]
    printed = capsys.readouterr().out
    assert "accuracy_L3" in printed and "accuracy_L1" not in printed and "step_errors" in printed
    assert "attack_refusal_rate    n/a" in printed and "nan" not in printed  # --safety 0: no attacks asked
    assert main(["eval-world", "--model", str(out / "sft" / "model"), "--levels", "5"]) == 2
    assert "math levels are 1, 2, 3, 4" in capsys.readouterr().err

    # 3. a third run reuses everything and only rewrites the report
    before = {s.name: (out / s.name / "stage.json").stat().st_mtime for s in STAGES if not s.optional}
    assert main(["pipeline", "--quick", "--out", str(out)]) == 0
    assert before == {s.name: (out / s.name / "stage.json").stat().st_mtime for s in STAGES if not s.optional}
    # --from eval redoes the evaluation only
    assert main(["pipeline", "--quick", "--out", str(out), "--from", "eval"]) == 0
    assert (out / "sft" / "stage.json").stat().st_mtime == before["sft"]
    assert (out / "eval" / "stage.json").stat().st_mtime > before["eval"]

    # 4. the opt-in RFT stage: the SFT model's verified answers, written with provenance; the evaluation redone
    assert main(["pipeline", "--quick", "--out", str(out), "--with", "rft"]) == 0
    rft = json.loads((out / "rft" / "stage.json").read_text())["metrics"]
    assert 0 <= rft["pass1_sampled"] <= rft["pass8"] <= 1 and "verified answers" in rft["trained_on"]
    assert (out / "rft" / "rft.provenance.json").exists() and (out / "rft" / "model" / "config.json").exists()
    assert "rft" in json.loads((out / "eval" / "metrics.json").read_text())
    assert main(["pipeline", "--quick", "--out", str(out), "--from", "rft"]) == 2  # opt-in: named with --with

    # 5. the opt-in distill stage: the 2-layer base cut to its more influential block, distilled, evaluated
    assert main(["pipeline", "--quick", "--out", str(out), "--with", "distill"]) == 0
    distilled = json.loads((out / "distill" / "stage.json").read_text())["metrics"]
    assert "cut to its blocks [" in distilled["trained_on"] and distilled["val_kl"] >= 0
    assert json.loads((out / "distill" / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((out / "distill" / "pruned" / "alignlab.json").read_text())["kept_blocks"] in ([0], [1])
    assert "distill" in json.loads((out / "eval" / "metrics.json").read_text())


def test_a_stage_redone_makes_the_stages_that_use_it_stale(tmp_path, monkeypatch, capsys):
    import alignlab.pipeline as pl

    ran = []

    def stage(name):
        def work(run):
            ran.append(name)
            return {}
        return work

    stages = [pl.Stage("a", "", stage("a"), makes_model=False), pl.Stage("side", "", stage("side"), side=True),
              pl.Stage("b", "", stage("b"), makes_model=False), pl.Stage("eval", "", stage("eval"), makes_model=False)]
    monkeypatch.setattr(pl, "STAGES", stages)
    monkeypatch.setattr(pl, "write_pipeline_report", lambda run: run.out / "report.md")
    out = tmp_path / "run"
    pl.run_pipeline(out, quick=True)
    assert ran == ["a", "side", "b", "eval"]
    ran.clear()
    shutil.rmtree(out / "side")  # a side branch redone: only the evaluation uses it
    pl.run_pipeline(out, quick=True)
    assert ran == ["side", "eval"] and "eval: side finished after it; redoing it" in capsys.readouterr().out
    ran.clear()
    time.sleep(0.01)
    (out / "a" / "stage.json").write_text((out / "a" / "stage.json").read_text())  # the main line changed
    pl.run_pipeline(out, quick=True)
    assert ran == ["side", "b", "eval"]  # everything built on it


def test_pipeline_refuses_a_directory_of_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--quick", "--out", str(out), "--until", "tokenizer"]) == 0
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "tokenizer" / "corpus.txt").exists()
    assert main(["pipeline", "--quick", "--seed", "1", "--out", str(out), "--until", "tokenizer"]) == 2
    assert "other settings (seed 0" in capsys.readouterr().err


def test_pipeline_help_lists_every_stage_and_option(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = capsys.readouterr().out
    for word in [s.name for s in STAGES] + ["--out", "--seed", "--quick", "--from", "--until", "--with", "report.html"]:
        assert word in text


def test_readme_pipeline_table_is_generated_from_reports(tmp_path):
    """scripts/pipeline_table.py turns pipeline reports into the README's table, between its markers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_table", ROOT / "scripts" / "pipeline_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)

    def report(shift: float) -> dict:
        model = {"format_rate": 1.0, "accuracy": 0.5 + shift, "attack_refusal_rate": 0.95, "over_refusal_rate": 0.05,
                 "accuracy_L1": 0.9, "accuracy_L2": 0.8}
        grpo = {**model, "pass_vs_dpo": {"dpo_k": 8, "dpo_pass8": 0.5, "grpo_pass8": 0.6}}
        return {"stages": [{"stage": "pretrain", "seconds": 100.0}, {"stage": "grpo", "seconds": 50.0, "metrics": {
                    "accuracy_L3_4_before": 0.2, "accuracy_L3_4_after": 0.3 + shift}}],
                "evals": {"sft": model, "dpo": {**model, "win_rate_vs_sft": 0.62, "win_rate_low_vs_sft": 0.55},
                          "grpo": grpo}}

    text = table.table({0: report(0.0), 1: report(0.1)})
    assert "| GRPO: change, levels 3-4 (points) | +10.0 | +15.0 | +10.0 to +20.0 |" in text
    assert "| pipeline seconds (all stages) | 150 | 150 | 150 to 150 |" in text
    readme = (ROOT / "README.md").read_text()
    assert readme.index(table.START) < readme.index(table.END)
