"""The labs' grader: find the labs, list their exercises, grade a learner's file, show a reference solution, tick
the sprint's checklist, and time the interview drills. `alignlab lab ...` (cli/lab.py) is its command line.

A lab is a directory `labs/NN_name/` holding
    exercises.py   the learner's file: one stub per exercise, its docstring starting "Exercise N." (or "Exercise Na."
                   for a part), raising NotImplementedError until written
    check.py       CHECKS = {N: check_N}; check_N(module) runs the learner's functions on seeded inputs against
                   alignlab's own implementation, returns what it checked, and raises AssertionError saying what
                   differs and on which input
    solutions.py   reference solutions written for learners, the same names as exercises.py
The drills live in `labs/drills/`: NAME.py (the task), check.py (CHECKS by name), solutions/NAME.py.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab.errors import UserError

LABS_ENV = "ALIGNLAB_LABS"  # where the labs are, when alignlab is not run from its own checkout
EXERCISE = re.compile(r"\s*Exercise (\d+)([a-z]?)\.\s*(.*)")


def labs_root(given: str | Path | None = None) -> Path:
    """The labs directory: `given`, else $ALIGNLAB_LABS, else the checkout alignlab runs from, else ./labs."""
    chosen = given or os.environ.get(LABS_ENV)
    candidates = [chosen] if chosen else [Path(__file__).resolve().parents[1] / "labs", Path.cwd() / "labs"]
    for c in candidates:
        if any(re.match(r"\d\d_", p.name) for p in Path(c).glob("*") if p.is_dir()):
            return Path(c)
    raise UserError(f"no labs found at {chosen or './labs'}: run from an alignlab checkout, or pass --labs DIR "
                    f"(or set {LABS_ENV}) to the labs/ directory of one")


# ----------------------------------------------------------------------------------------------------------------
# Labs and their exercises


@dataclass(frozen=True)
class Exercise:
    number: int
    part: str  # "" or "a", "b", ...
    name: str  # the function or class the learner writes
    title: str  # the docstring's first sentence after "Exercise N."


@dataclass(frozen=True)
class Lab:
    number: int
    path: Path

    @property
    def title(self) -> str:
        readme = self.path / "README.md"
        lines = readme.read_text().splitlines() if readme.exists() else []
        title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("# ")), self.path.name)
        return re.sub(r"^Lab \d+\s*[-—:]\s*", "", title)

    @property
    def exercises(self) -> list[Exercise]:
        path = self.path / "exercises.py"
        return exercises_in(path) if path.exists() else []


def find_labs(root: Path) -> list[Lab]:
    return [Lab(int(p.name[:2]), p) for p in sorted(root.iterdir()) if p.is_dir() and re.match(r"\d\d_", p.name)]


def get_lab(root: Path, number: int) -> Lab:
    for lab in find_labs(root):
        if lab.number == number:
            return lab
    raise UserError(f"no lab {number} in {root} (labs: {', '.join(str(b.number) for b in find_labs(root))})")


def exercises_in(path: Path) -> list[Exercise]:
    """Every top-level function or class of `path` whose docstring starts with "Exercise N." or "Exercise Na."."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            m = EXERCISE.match(ast.get_docstring(node) or "")
            if m:
                out.append(Exercise(int(m.group(1)), m.group(2), node.name, first_sentence(m.group(3))))
    return out


def first_sentence(text: str, width: int = 90) -> str:
    """The first sentence of a docstring's first paragraph, on one line, cut to `width` characters."""
    paragraph = " ".join(text.split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.:;])\s", paragraph)[0].rstrip(".:;")
    return sentence if len(sentence) <= width else sentence[:width - 3].rstrip() + "..."


def load_module(path: Path, name: str):
    """The Python file at `path`, imported as module `name` (it need not be on sys.path)."""
    if not Path(path).exists():
        raise UserError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_checks(directory: Path) -> dict:
    """CHECKS of `directory`/check.py."""
    return load_module(directory / "check.py", f"alignlab_check_{directory.name}").CHECKS


# ----------------------------------------------------------------------------------------------------------------
# Grading


@dataclass(frozen=True)
class Result:
    key: int | str  # the exercise's number, or the drill's name
    status: str  # PASS, FAIL or TODO
    detail: str


def assert_close(got, want, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """The learner's tensor `got` equals `want` within atol + rtol * |want| (NaN equals NaN, inf equals inf), else an
    AssertionError naming `what`, the first index that differs, both values, and how many entries differ."""
    import torch

    if got is None:
        raise AssertionError(f"{what}: got None, expected a tensor of shape {tuple(want.shape)}")
    got = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got).double()
    want = torch.as_tensor(want).detach().double()
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True) & ~(got == want)
    if bad.any():
        at = tuple(int(i) for i in bad.nonzero()[0])
        diff = (got - want).abs().nan_to_num(float("inf"))[bad].max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} values differ, the first at {list(at)}: got "
                             f"{got[at].item():.6g}, expected {want[at].item():.6g} (largest difference {diff:.3g})")


def run_check(check: Callable, module, key: int | str) -> Result:
    """One check on the learner's module: TODO while it raises NotImplementedError, FAIL with the reason (an
    AssertionError's message, or the learner's traceback), PASS with what was checked."""
    try:
        detail = check(module)
    except NotImplementedError:
        return Result(key, "TODO", "not implemented yet")
    except AssertionError as e:
        return Result(key, "FAIL", str(e))
    except Exception:
        return Result(key, "FAIL", f"your code raised\n{traceback.format_exc(limit=-2)}")
    return Result(key, "PASS", detail)


def grade(checks: dict, module, keys: list | None = None) -> list[Result]:
    """Run checks[k](module) for each k of `keys` (all when empty)."""
    keys = list(keys or sorted(checks))
    unknown = [k for k in keys if k not in checks]
    if unknown:
        raise UserError(f"no check for exercise {', '.join(map(str, unknown))} (checked: "
                        f"{', '.join(map(str, sorted(checks)))})")
    return [run_check(checks[k], module, k) for k in keys]


def grade_file(directory: Path, path: Path, keys: list | None = None, quiet: bool = False) -> list[Result]:
    """Grade the learner's file `path` with `directory`/check.py. quiet: the learner's prints are swallowed."""
    checks = load_checks(directory)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        try:
            module = load_module(path, f"learner_{directory.name}_{abs(hash(str(path)))}")
        except UserError:
            raise
        except Exception:
            detail = f"{path} does not import\n{traceback.format_exc(limit=-2)}"
            return [Result(k, "FAIL", detail) for k in (keys or sorted(checks))]
        return grade(checks, module, keys)


def print_results(results: list[Result], label: str = "exercise") -> int:
    """One line per result (the detail indented below a FAIL); returns 1 if any did not pass, else 0."""
    for r in results:
        head, _, rest = r.detail.partition("\n")
        print(f"{label} {r.key}: {r.status}" + (f" ({head})" if r.status == "PASS" else f": {head}"))
        if rest:
            print("    " + rest.replace("\n", "\n    "))
    return int(any(r.status != "PASS" for r in results))


def check_main(directory: Path, argv: list[str] | None = None) -> int:
    """`python labs/NN_name/check.py [N ...] [--module FILE]`: the same grading as `alignlab lab check`."""
    import argparse

    p = argparse.ArgumentParser(description=f"Grade {directory.name}'s exercises (alignlab lab check does too).")
    p.add_argument("exercises", nargs="*", type=int, help="exercise numbers (default: all)")
    p.add_argument("--module", type=Path, default=directory / "exercises.py", help="the file to grade")
    args = p.parse_args(argv)
    try:
        return print_results(grade_file(directory, args.module, args.exercises))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------------------------
# Reference solutions


def solution_source(path: Path, names: list[str]) -> str:
    """The imports of the solutions file `path`, then the definitions of `names` and of the module's private
    helpers (names starting with _) that they use, in file order."""
    text = path.read_text()
    tree = ast.parse(text, str(path))
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [n for n in names if n not in defs]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}")
    wanted, todo = set(names), list(names)
    while todo:  # private helpers, followed through the definitions that use them
        used = {x.id for x in ast.walk(defs[todo.pop()]) if isinstance(x, ast.Name)}
        for name in sorted(used & defs.keys() - wanted):
            if name.startswith("_"):
                wanted.add(name)
                todo.append(name)
    imports = [ast.get_source_segment(text, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    blocks = [ast.get_source_segment(text, n) for n in tree.body if n in [defs[w] for w in wanted]]
    return "\n".join(imports) + ("\n\n\n" if imports else "") + "\n\n\n".join(blocks) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The sprint's checklist


CHECK_ITEM = re.compile(r"^\s*- \[[ x]\] (.*)$")
PROBE = re.compile(r"`(alignlab lab check (\d+)((?: \d+)*)|[^`]*/[^`]*)`\s*$")


@dataclass(frozen=True)
class Item:
    text: str
    done: bool | None  # None: nothing to probe, the learner ticks it themself


def grade_lab(lab: Lab, quiet: bool = True) -> dict:
    """Every checked exercise of the lab's own exercises.py: {exercise: Result}."""
    return {r.key: r for r in grade_file(lab.path, lab.path / "exercises.py", quiet=quiet)}


def checklist(sprint: Path, root: Path, workdir: Path, graded: dict | None = None) -> list[Item]:
    """The must-complete checklist of docs/sprint.md: each `- [ ] ...` line under its "Must-complete checklist"
    heading. A line ending in `alignlab lab check N [EX ...]` is done when those exercises pass on the lab's
    exercises.py; one ending in a path (runs/pipeline/report.md) when the path exists under `workdir`.
    graded: {lab number: grade_lab(...)} already computed; each other lab is graded once, here."""
    graded = {} if graded is None else graded
    lines = sprint.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("#") and "must-complete checklist" in ln.lower()),
                 None)
    if start is None:
        raise UserError(f"{sprint}: no 'Must-complete checklist' heading")
    items = []
    for ln in lines[start + 1:]:
        if ln.startswith("#"):
            break
        m = CHECK_ITEM.match(ln)
        if not m:
            continue
        probe = PROBE.search(m.group(1))
        if probe is None:
            items.append(Item(m.group(1), None))
        elif probe.group(2) is not None:
            n = int(probe.group(2))
            if n not in graded:
                graded[n] = grade_lab(get_lab(root, n))
            keys = [int(k) for k in probe.group(3).split()] or list(graded[n])
            unknown = [k for k in keys if k not in graded[n]]
            if unknown:
                raise UserError(f"{sprint}: no check for exercise {', '.join(map(str, unknown))} of lab {n}")
            items.append(Item(m.group(1), all(graded[n][k].status == "PASS" for k in keys)))
        else:
            items.append(Item(m.group(1), (workdir / probe.group(1)).exists()))
    return items


# ----------------------------------------------------------------------------------------------------------------
# Interview drills


def drills(root: Path) -> dict[str, str]:
    """Each drill's name and its first docstring line (the task), from labs/drills/NAME.py."""
    out = {}
    for p in sorted((root / "drills").glob("*.py")):
        if p.name != "check.py":
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            out[p.stem] = doc.splitlines()[0] if doc else ""
    return out


START_TIMES = ".started.json"  # in the drills' workdir: {drill: the time it started}


def start_times(workdir: Path) -> dict[str, float]:
    times = workdir / START_TIMES
    return json.loads(times.read_text()) if times.exists() else {}


def start_drill(root: Path, name: str, workdir: Path) -> Path:
    """Copy the drill's task to workdir/NAME.py (kept if it is already there) and note the time it started."""
    known = drills(root)
    if name not in known:
        raise UserError(f"no drill {name!r} (drills: {', '.join(known)})")
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"{name}.py"
    if not target.exists():
        target.write_text((root / "drills" / f"{name}.py").read_text())
    started = start_times(workdir)
    started.setdefault(name, time.time())
    (workdir / START_TIMES).write_text(json.dumps(started))
    return target


def drill_elapsed(workdir: Path, name: str) -> float | None:
    """Seconds since the drill started, or None if it was never started in `workdir`."""
    started = start_times(workdir)
    return time.time() - started[name] if name in started else None


def restart_drill(workdir: Path, name: str) -> None:
    """Forget when the drill started (the next `drill NAME` starts the clock again)."""
    started = start_times(workdir)
    started.pop(name, None)
    (workdir / START_TIMES).write_text(json.dumps(started))
