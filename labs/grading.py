"""What the labs' check.py scripts share: load a learner's exercises file, run each exercise's check, report."""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Callable
from pathlib import Path


def load_module(path: Path, name: str):
    """The Python file at `path`, imported as module `name` (it need not be on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grade(checks: dict[int, Callable], module, numbers: list[int], no_check: str, no_check_fails: bool) -> int:
    """Run checks[n](module) for each exercise n of `numbers` (all when empty) and print TODO, FAIL or PASS with
    the check's detail. An exercise without a check prints `no_check`, and counts as failed if no_check_fails.
    Returns the exit status: 1 if any exercise failed."""
    failed = 0
    for n in numbers or sorted(checks):
        if n not in checks:
            print(f"exercise {n}: {no_check}")
            failed += no_check_fails
            continue
        try:
            detail = checks[n](module)
        except NotImplementedError:
            print(f"exercise {n}: TODO (not implemented yet)")
            failed += 1
        except AssertionError as e:
            print(f"exercise {n}: FAIL: {e}")
            failed += 1
        except Exception:
            print(f"exercise {n}: FAIL: your code raised\n{traceback.format_exc(limit=-2)}")
            failed += 1
        else:
            print(f"exercise {n}: PASS ({detail})")
    return 1 if failed else 0
