"""The interview drills (labs/drills/): every untouched task file is TODO, every reference solution passes, and a
realistic bug planted in a solution fails with a message saying what differs; the drill clock of alignlab/lab.py
starts, keeps the learner's file and restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from alignlab.errors import UserError
from alignlab.lab import drill_elapsed, drills, grade_file, load_checks, restart_drill, start_drill

LABS = Path(__file__).resolve().parents[1] / "labs"
DRILLS = LABS / "drills"

# drill -> [(text in solutions/NAME.py, the buggy replacement)], each a mistake a learner makes
PLANTED = {
    "mha": [
        ('att = att.masked_fill(future, float("-inf"))', "att = att"),  # no causal mask
        (".triu(diagonal=1)", ".triu(diagonal=2)"),  # the mask lets each position see the next one
        ("/ math.sqrt(hs)", "/ math.sqrt(D)"),  # scaled by the model width, not the head size
        ("y = y.transpose(1, 2).reshape(B, T, D)", "y = y.reshape(B, T, D)"),  # heads merged without the transpose
    ],
    "sampling": [
        # top-p drops the token that crosses p
        ("mass_before = probs.cumsum(dim=-1) - probs", "mass_before = probs.cumsum(dim=-1)"),
        ("logits.masked_fill(logits < kth,", "logits.masked_fill(logits <= kth,"),  # top-k keeps k - 1
        ("    if temperature == 0:\n        return logits.argmax(dim=-1)\n", ""),  # divides by temperature 0
        ("torch.multinomial(probs, 1, generator=generator)", "torch.multinomial(probs, 1)"),  # the global RNG
    ],
    "beam_search": [
        ("candidates.sort(key=lambda c: c[1], reverse=True)", "candidates.sort(key=lambda c: c[1])"),  # keeps the worst
        ("(seq, score + lp)", "(seq, lp)"),  # the score is the last token's log-prob only
        ("done = token == eos or len(seq) - 1 == max_len", "done = len(seq) - 1 == max_len"),  # eos does not finish
        ("len(seq) - 1 == max_len", "len(seq) == max_len"),  # counts bos as a generated token
    ],
    "dpo_loss": [
        ("logits, targets = logits[:, :-1], labels[:, 1:]", "logits, targets = logits, labels"),  # no shift
        ("beta * (chosen - rejected)", "beta * (rejected - chosen)"),  # the margin's sign
        ("logits.float().log_softmax(dim=-1)", "logits.float().softmax(dim=-1).log()"),  # underflows
        ("torch.where(answer, token_logp, 0.0).sum(dim=-1)", "torch.where(answer, token_logp, 0.0).mean(dim=-1)"),
        ("(beta * chosen).detach()", "beta * chosen"),  # rewards not detached
    ],
    "nan_debug": [  # the task file's three bugs, one at a time
        ("loss = -(logp * target).sum() / target.sum()", "loss = (-(logp * target).sum(1) / target.sum(1)).mean()"),
        ("return BASE_LR * min(1.0, (step + 1) / WARMUP)", "return BASE_LR * (step + 1) / WARMUP"),
        ("        opt.zero_grad()", "        pass"),
    ],
}


def grade(path: Path, name: str):
    [result] = grade_file(DRILLS, path, [name], quiet=True)
    return result


def test_every_drill_has_a_check_a_solution_and_planted_bugs():
    listed = drills(LABS)
    assert sorted(listed) == sorted(load_checks(DRILLS)) == sorted(PLANTED)
    for name, task in listed.items():
        text = (DRILLS / f"{name}.py").read_text()
        assert task and "Target:" in text and "no alignlab imports" in text, name
        assert (DRILLS / "solutions" / f"{name}.py").exists(), name


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_task_is_todo_solution_passes_planted_bugs_fail(name, tmp_path):
    r = grade(DRILLS / f"{name}.py", name)
    assert r.status == "TODO", r
    solution = (DRILLS / "solutions" / f"{name}.py").read_text()
    good = tmp_path / f"{name}.py"
    good.write_text(solution)
    r = grade(good, name)
    assert r.status == "PASS", r
    for i, (old, new) in enumerate(PLANTED[name]):
        assert solution.count(old) == 1, f"{name}: the planted bug's text {old!r} must occur once"
        bad = tmp_path / f"bad_{name}_{i}.py"
        bad.write_text(solution.replace(old, new))
        r = grade(bad, name)
        assert r.status == "FAIL" and r.detail.strip(), f"{name}, bug {old!r} -> {new!r}: {r}"


def test_nan_debug_names_the_symptom_and_accepts_another_fix(tmp_path):
    task = (DRILLS / "nan_debug.py").read_text()
    touched = tmp_path / "touched.py"
    touched.write_text(task + "# looked at it\n")  # edited, nothing fixed: the symptom, not TODO
    r = grade(touched, "nan_debug")
    assert r.status == "FAIL" and "nan at step 0" in r.detail, r
    solution = (DRILLS / "solutions" / "nan_debug.py").read_text()
    steps = tmp_path / "no_zero_grad.py"
    steps.write_text(solution.replace("        opt.zero_grad()", "        pass"))
    r = grade(steps, "nan_debug")
    assert r.status == "FAIL" and "went up" in r.detail, r
    other = tmp_path / "clamped.py"  # a per-sequence mean that skips empty sequences is a fix too
    other.write_text(solution.replace("loss = -(logp * target).sum() / target.sum()",
                                      "loss = (-(logp * target).sum(1) / target.sum(1).clamp(min=1)).mean()"))
    assert grade(other, "nan_debug").status == "PASS"


def test_alignlab_imports_fail_a_drill(tmp_path):
    cheat = tmp_path / "dpo_loss.py"
    cheat.write_text("from alignlab.objectives.preference import dpo_loss, sequence_logps\n")
    r = grade(cheat, "dpo_loss")
    assert r.status == "FAIL" and "imports alignlab" in r.detail, r


def test_start_elapsed_restart(tmp_path):
    work = tmp_path / "drills"
    assert drill_elapsed(work, "mha") is None
    path = start_drill(LABS, "mha", work)
    assert path == work / "mha.py" and path.read_text() == (DRILLS / "mha.py").read_text()
    path.write_text("# my attempt\n")
    time.sleep(0.01)
    started = json.loads((work / ".started.json").read_text())["mha"]
    assert start_drill(LABS, "mha", work).read_text() == "# my attempt\n"  # copied once, never overwritten
    assert json.loads((work / ".started.json").read_text())["mha"] == started  # and the clock keeps running
    assert drill_elapsed(work, "mha") > 0
    restart_drill(work, "mha")
    assert drill_elapsed(work, "mha") is None
    start_drill(LABS, "mha", work)
    assert json.loads((work / ".started.json").read_text())["mha"] > started
    assert path.read_text() == "# my attempt\n"
    with pytest.raises(UserError, match="beam_search.*dpo_loss.*mha.*nan_debug.*sampling"):
        start_drill(LABS, "attention", work)
