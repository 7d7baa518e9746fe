"""What the labs' grader tests share: grade a lab's stubs, its reference solutions and planted bugs in them.

Every lab test calls `assert_lab(N, PLANTED)`: the untouched exercises.py is TODO for every exercise, solutions.py
passes every one, and each planted bug (a text replacement in solutions.py, one per exercise at least) fails that
exercise with a message saying what differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alignlab.lab import Result, find_labs, get_lab, grade_file, load_checks

ROOT = Path(__file__).resolve().parents[1]
LABS = ROOT / "labs"


def run_check(lab: str, *args: str) -> subprocess.CompletedProcess:
    """`python labs/<lab>/check.py ARGS`, its output captured."""
    return subprocess.run([sys.executable, str(LABS / lab / "check.py"), *args], capture_output=True, text=True,
                          timeout=120)


def lab_dir(number: int) -> Path:
    return get_lab(LABS, number).path


def grade_text(directory: Path, source: str, tmp_path: Path, keys=None, name: str = "graded.py") -> dict:
    """Grade `source` (a learner's file) with `directory`/check.py: {key: Result}."""
    path = tmp_path / name
    path.write_text(source)
    return {r.key: r for r in grade_file(directory, path, keys, quiet=True)}


def assert_lab(number: int, planted: dict, tmp_path: Path) -> None:
    """planted: {exercise: [(old, new), ...]}, each replacement a bug planted in solutions.py that must fail that
    exercise. Every exercise with a check needs at least one."""
    directory = lab_dir(number)
    checks = load_checks(directory)
    assert sorted(planted) == sorted(checks), f"plant a bug for every checked exercise: {sorted(checks)}"
    stub = {r.key: r for r in grade_file(directory, directory / "exercises.py", quiet=True)}
    not_todo = {k: r for k, r in stub.items() if r.status != "TODO"}
    assert not not_todo, f"the untouched stubs must be TODO: {not_todo}"
    solutions = (directory / "solutions.py").read_text()
    good = grade_text(directory, solutions, tmp_path)
    failing = {k: r for k, r in good.items() if r.status != "PASS"}
    assert not failing, f"the reference solutions must pass: {failing}"
    for key, bugs in planted.items():
        for i, (old, new) in enumerate(bugs):
            assert solutions.count(old) == 1, f"exercise {key}: the planted bug's text {old!r} must occur once"
            bad = grade_text(directory, solutions.replace(old, new), tmp_path, [key], name=f"bad_{key}_{i}.py")
            r: Result = bad[key]
            assert r.status == "FAIL" and r.detail.strip(), f"exercise {key}, bug {old!r} -> {new!r}: {r}"


def all_labs() -> list[int]:
    return [lab.number for lab in find_labs(LABS)]
