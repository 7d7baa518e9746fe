"""`alignlab lab list | check N [EX ...] | solution N EX | status | drill [NAME]`: the labs' graded exercises and the
interview drills (the grading itself is alignlab/lab.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignlab import lab as grader
from alignlab.errors import UserError


def lab_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Each lab (labs/NN_name/) has exercises.py: stubs you fill in. `check` grades them against "
                     "alignlab's own implementation on seeded inputs and says what differs; `solution` shows a "
                     "reference solution; `status` ticks docs/sprint.md's checklist; `drill` runs a timed "
                     "from-scratch interview task.")
    p.add_argument("--labs", default=None, help="the labs/ directory (default: the checkout's, or $ALIGNLAB_LABS)")
    sub = p.add_subparsers(dest="lab_command", required=True)
    sub.add_parser("list", help="every lab and its exercises")
    c = sub.add_parser("check", help="grade a lab's exercises: PASS, FAIL (what differs) or TODO")
    c.add_argument("lab", type=int, help="the lab's number (0-5)")
    c.add_argument("exercises", nargs="*", type=int, help="exercise numbers (default: all)")
    c.add_argument("--file", type=Path, default=None, help="the file to grade (default: the lab's exercises.py)")
    s = sub.add_parser("solution", help="print the reference solution of an exercise")
    s.add_argument("lab", type=int)
    s.add_argument("exercise", type=int)
    st = sub.add_parser("status", help="every lab's exercises graded, and docs/sprint.md's checklist ticked")
    st.add_argument("--workdir", type=Path, default=Path("."), help="where your runs/ are (default: .)")
    d = sub.add_parser("drill", help="timed interview drills: list them, start one, check it")
    d.add_argument("name", nargs="?", help="the drill (none: list them)")
    d.add_argument("--dir", type=Path, default=Path("drills"), help="where your drill files go (default: ./drills)")
    what = d.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="grade your file and print the time taken")
    what.add_argument("--restart", action="store_true", help="start the clock again")
    what.add_argument("--solution", action="store_true", help="print the reference solution")


def cmd_lab(args) -> int:
    root = grader.labs_root(args.labs)
    return {"list": lab_list, "check": lab_check, "solution": lab_solution, "status": lab_status,
            "drill": lab_drill}[args.lab_command](root, args)


def lab_list(root: Path, args) -> int:
    for lab in grader.find_labs(root):
        print(f"Lab {lab.number:02d}  {lab.title}")
        for e in lab.exercises:
            print(f"    {e.number}{e.part or ' '}  {e.name:28s} {e.title}")
    print("\ngrade:  alignlab lab check N [EX ...]     solution:  alignlab lab solution N EX     drills:  alignlab "
          "lab drill")
    return 0


def lab_check(root: Path, args) -> int:
    lab = grader.get_lab(root, args.lab)
    path = args.file or lab.path / "exercises.py"
    print(f"Lab {lab.number:02d}: grading {path}")
    return grader.print_results(grader.grade_file(lab.path, path, args.exercises))


def lab_solution(root: Path, args) -> int:
    lab = grader.get_lab(root, args.lab)
    names = [e.name for e in lab.exercises if e.number == args.exercise]
    if not names:
        raise UserError(f"lab {lab.number} has no exercise {args.exercise} (see `alignlab lab list`)")
    print(f"# Lab {lab.number:02d}, exercise {args.exercise}: the reference solution ({lab.path / 'solutions.py'})\n")
    print(grader.solution_source(lab.path / "solutions.py", names))
    return 0


def lab_status(root: Path, args) -> int:
    graded = {}
    for lab in grader.find_labs(root):
        results = graded[lab.number] = grader.grade_lab(lab)
        marks = " ".join(f"{k}:{r.status}" for k, r in results.items())
        passed = sum(r.status == "PASS" for r in results.values())
        print(f"Lab {lab.number:02d}  {passed}/{len(results)} pass   {marks}")
    sprint = root.parent / "docs" / "sprint.md"
    if not sprint.exists():
        print(f"\n(no checklist: {sprint} is missing)")
        return 0
    items = grader.checklist(sprint, root, args.workdir, graded)
    print(f"\nMust-complete checklist ({sprint}; runs looked for under {args.workdir.resolve()}):")
    for item in items:
        print(f"  [{'x' if item.done else ' ' if item.done is False else '?'}] {item.text}")
    probed = [i for i in items if i.done is not None]
    print(f"\n{sum(bool(i.done) for i in probed)} of {len(probed)} checked items done; "
          f"{len(items) - len(probed)} marked ? are yours to tick")
    return 0


def lab_drill(root: Path, args) -> int:
    known = grader.drills(root)
    if not args.name:
        for name, task in known.items():
            print(f"  {name:14s} {task}")
        print("\nstart one: alignlab lab drill NAME     grade it: alignlab lab drill NAME --check")
        return 0
    if args.name not in known:
        raise UserError(f"no drill {args.name!r} (drills: {', '.join(known)})")
    if args.solution:
        print((root / "drills" / "solutions" / f"{args.name}.py").read_text())
        return 0
    if args.restart:
        grader.restart_drill(args.dir, args.name)
    if not args.check:
        path = grader.start_drill(root, args.name, args.dir)
        print(f"{known[args.name]}\nYour file: {path} (the clock is running). Grade it with "
              f"`alignlab lab drill {args.name} --check`.")
        return 0
    path = args.dir / f"{args.name}.py"
    if not path.exists():
        raise UserError(f"{path}: no such file: start the drill first with `alignlab lab drill {args.name}`")
    code = grader.print_results(grader.grade_file(root / "drills", path, [args.name]), label="drill")
    elapsed = grader.drill_elapsed(args.dir, args.name)
    if elapsed is not None:
        print(f"time taken: {int(elapsed // 60)} min {int(elapsed % 60)} s since the drill started")
    return code
