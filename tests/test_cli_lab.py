"""`alignlab lab`: list, check, solution, status and drill, on a small labs tree built here (and `list` on the
real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.lab import checklist, exercises_in, first_sentence, solution_source

EXERCISES = '''"""A lab's exercises."""


def double(x):
    """Exercise 1. Twice x.

    More words."""
    raise NotImplementedError


def halve(x):
    """Exercise 2a. Half of x: x / 2."""
    raise NotImplementedError


def third(x):
    """Exercise 2b. A third of x."""
    raise NotImplementedError


def helper():
    """Given, not an exercise."""
'''

SOLUTIONS = '''"""Reference solutions."""

import math


def _twice(x):
    return 2 * x


def double(x):
    return _twice(x)


def halve(x):
    return x / 2


def third(x):
    return x / 3


def _unused():
    return math.pi
'''

CHECK = '''import sys
from pathlib import Path


def check_1(ex):
    got = ex.double(3)
    if got != 6:
        raise AssertionError(f"double(3): got {got!r}, expected 6")
    return "double(3)"


def check_2(ex):
    assert ex.halve(4) == 2, f"halve(4): got {ex.halve(4)!r}, expected 2"
    assert ex.third(9) == 3, f"third(9): got {ex.third(9)!r}, expected 3"
    return "halve(4), third(9)"


CHECKS = {1: check_1, 2: check_2}

if __name__ == "__main__":
    from alignlab.lab import check_main
    sys.exit(check_main(Path(__file__).parent))
'''

SPRINT = '''# Sprint

## Must-complete checklist

- [ ] Lab 00's exercises pass: `alignlab lab check 0`
- [ ] Exercise 1 passes: `alignlab lab check 0 1`
- [ ] The pipeline ran: `runs/pipeline/report.md`
- [ ] You can derive DPO on a whiteboard

## After
- [ ] not part of the checklist: `alignlab lab check 0`
'''

DRILL = '''"""Write square(x).

Target: 1 minute."""


def square(x):
    raise NotImplementedError
'''

DRILL_CHECK = '''def check_square(ex):
    assert ex.square(3) == 9, f"square(3): got {ex.square(3)!r}, expected 9"
    return "square(3)"


CHECKS = {"square": check_square}
'''


@pytest.fixture
def tree(tmp_path):
    lab = tmp_path / "labs" / "00_pretraining_fundamentals"
    lab.mkdir(parents=True)
    (lab / "README.md").write_text("# Lab 00 — Tiny things\n")
    (lab / "exercises.py").write_text(EXERCISES)
    (lab / "solutions.py").write_text(SOLUTIONS)
    (lab / "check.py").write_text(CHECK)
    drills = tmp_path / "labs" / "drills"
    (drills / "solutions").mkdir(parents=True)
    (drills / "square.py").write_text(DRILL)
    (drills / "solutions" / "square.py").write_text(DRILL.replace("raise NotImplementedError", "return x * x"))
    (drills / "check.py").write_text(DRILL_CHECK)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "sprint.md").write_text(SPRINT)
    return tmp_path


def lab(tree, *args):
    return main(["lab", "--labs", str(tree / "labs"), *args])


def test_exercises_are_read_from_docstrings(tree):
    found = exercises_in(tree / "labs" / "00_pretraining_fundamentals" / "exercises.py")
    assert [(e.number, e.part, e.name, e.title) for e in found] == [
        (1, "", "double", "Twice x"), (2, "a", "halve", "Half of x"), (2, "b", "third", "A third of x")]
    assert first_sentence("a " * 80) .endswith("...")


def test_list(tree, capsys):
    assert lab(tree, "list") == 0
    out = capsys.readouterr().out
    assert "Lab 00  Tiny things" in out and "2a  halve" in out and "helper" not in out


def test_check_todo_pass_fail(tree, capsys):
    assert lab(tree, "check", "0") == 1
    out = capsys.readouterr().out
    assert "exercise 1: TODO" in out and "exercise 2: TODO" in out
    path = tree / "labs" / "00_pretraining_fundamentals" / "solutions.py"
    assert lab(tree, "check", "0", "--file", str(path)) == 0
    assert capsys.readouterr().out.count("PASS") == 2
    bad = tree / "bad.py"
    bad.write_text(SOLUTIONS.replace("return x / 3", "return x // 4").replace("return 2 * x", "return 1 / 0"))
    assert lab(tree, "check", "0", "--file", str(bad)) == 1
    out = capsys.readouterr().out
    assert "exercise 2: FAIL: third(9): got 2, expected 3" in out
    assert "exercise 1: FAIL: your code raised" in out and "ZeroDivisionError" in out
    assert lab(tree, "check", "0", "2", "--file", str(path)) == 0
    assert "exercise 1" not in capsys.readouterr().out


def test_check_errors_are_one_line(tree, capsys):
    assert lab(tree, "check", "7") == 2
    assert "no lab 7" in capsys.readouterr().err
    assert lab(tree, "check", "0", "5") == 2
    assert "no check for exercise 5" in capsys.readouterr().err
    assert lab(tree, "check", "0", "--file", str(tree / "nope.py")) == 2
    assert "nope.py: no such file" in capsys.readouterr().err
    broken = tree / "broken.py"
    broken.write_text("def double(x):\n    return (\n")
    assert lab(tree, "check", "0", "--file", str(broken)) == 1
    assert "does not import" in capsys.readouterr().out
    assert main(["lab", "--labs", str(tree), "list"]) == 2
    assert "no labs found" in capsys.readouterr().err


def test_solution_prints_the_exercise_and_its_helpers(tree, capsys):
    assert lab(tree, "solution", "0", "1") == 0
    out = capsys.readouterr().out
    assert "import math" in out and "def _twice" in out and "def double" in out
    assert "def halve" not in out and "_unused" not in out
    assert lab(tree, "solution", "0", "2") == 0
    out = capsys.readouterr().out
    assert "def halve" in out and "def third" in out
    assert lab(tree, "solution", "0", "3") == 2
    with pytest.raises(Exception, match="has no nothing"):
        solution_source(tree / "labs" / "00_pretraining_fundamentals" / "solutions.py", ["nothing"])


def test_status_ticks_the_checklist(tree, capsys):
    items = checklist(tree / "docs" / "sprint.md", tree / "labs", tree)
    assert [i.done for i in items] == [False, False, False, None]
    lab_dir = tree / "labs" / "00_pretraining_fundamentals"
    (lab_dir / "exercises.py").write_text(SOLUTIONS.replace("x / 2", "x * 2"))  # 1 passes, 2 does not
    (tree / "runs" / "pipeline").mkdir(parents=True)
    (tree / "runs" / "pipeline" / "report.md").write_text("done")
    items = checklist(tree / "docs" / "sprint.md", tree / "labs", tree)
    assert [i.done for i in items] == [False, True, True, None]
    assert lab(tree, "status", "--workdir", str(tree)) == 0
    out = capsys.readouterr().out
    assert "Lab 00  1/2 pass" in out and "[x] The pipeline ran" in out and "[?] You can derive DPO" in out
    assert "2 of 3 checked items done" in out


def test_drill_start_check_restart(tree, capsys, tmp_path):
    work = tmp_path / "mine"
    assert lab(tree, "drill") == 0
    assert "square" in capsys.readouterr().out
    assert lab(tree, "drill", "square", "--dir", str(work), "--check") == 2  # not started
    assert lab(tree, "drill", "square", "--dir", str(work)) == 0
    assert (work / "square.py").read_text() == DRILL
    started = json.loads((work / ".started.json").read_text())["square"]
    assert lab(tree, "drill", "square", "--dir", str(work), "--check") == 1
    assert "drill square: TODO" in capsys.readouterr().out
    (work / "square.py").write_text(DRILL.replace("raise NotImplementedError", "return x * x"))
    assert lab(tree, "drill", "square", "--dir", str(work)) == 0  # starting again keeps the file and the clock
    assert (work / "square.py").read_text() != DRILL
    assert json.loads((work / ".started.json").read_text())["square"] == started
    assert lab(tree, "drill", "square", "--dir", str(work), "--check") == 0
    out = capsys.readouterr().out
    assert "drill square: PASS" in out and "time taken:" in out
    assert lab(tree, "drill", "square", "--dir", str(work), "--restart") == 0
    assert json.loads((work / ".started.json").read_text())["square"] >= started
    assert lab(tree, "drill", "square", "--solution") == 0
    assert "return x * x" in capsys.readouterr().out
    assert lab(tree, "drill", "cube") == 2


def test_the_real_labs_are_listed(capsys):
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    for n in range(6):
        assert f"Lab {n:02d}" in out
    assert Path(__file__).resolve().parents[1].joinpath("labs").is_dir()
