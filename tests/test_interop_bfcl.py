"""The BFCL AST checker agrees with the official one: bfcl-eval's `ast_checker` (and its relevance rule for
irrelevance) gives the same verdict, and fails for the same reason, as alignlab.eval.bfcl on every ground-truth
answer of ../shared/data/bfcl and its mutations (tests/bfcl_cases.py: 9,326 outputs).

Marked `interop` (deselected by default: bfcl-eval pins numpy 1.26.4 and imports many provider SDKs, so it has
its own venv). Set it up once:

    python3 -m venv .venv-bfcl && .venv-bfcl/bin/pip install bfcl-eval==2026.3.23 soundfile
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_bfcl.py

ALIGNLAB_BFCL_PYTHON names another interpreter with bfcl-eval.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from alignlab.eval.bfcl import check_calls

from .bfcl_cases import cases
from .test_eval_bfcl import BFCL, FILES

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[1]
BFCL_PYTHON = Path(os.environ.get("ALIGNLAB_BFCL_PYTHON", ROOT / ".venv-bfcl" / "bin" / "python"))

# bfcl-eval's error_type -> alignlab's Verdict.kind
KINDS = {"wrong_func_name": "name", "missing_required": "missing_required", "unexpected_param": "unexpected_param",
         "missing_optional": "missing_optional", "wrong_count": "count", "cannot_find_match": "no_match",
         "type_error": "type", "value_error": "value", "dict_checker": "value", "list_dict_checker": "value",
         "irrelevance_error": "irrelevance"}


def kind(error_type: str) -> str:
    head, _, tail = error_type.partition(":")
    return KINDS.get(tail, KINDS.get(head, error_type)) if error_type else ""


@pytest.mark.shared_data(*FILES)
def test_verdicts_equal_bfcl_eval():
    if not BFCL_PYTHON.exists():
        pytest.skip(f"no bfcl-eval interpreter at {BFCL_PYTHON} (see this file's docstring)")
    batch = cases(BFCL)
    run = subprocess.run([str(BFCL_PYTHON), str(ROOT / "tests" / "bfcl_oracle.py")], input=json.dumps(batch),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    official = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(official) == len(batch) >= 500
    seen, differ = Counter(), []
    for case, theirs in zip(batch, official):
        ours = check_calls(case["functions"], case["calls"], case["answer"], case["category"])
        seen[(case["case"], ours.valid)] += 1
        if (ours.valid, ours.kind) != (theirs["valid"], kind(theirs["error_type"]) if not theirs["valid"] else ""):
            differ.append((case["case"], case["calls"], ours, theirs))
    assert not differ, f"{len(differ)} of {len(batch)} differ, e.g. {differ[:3]}"
    # every kind of output was there, both verdicts
    assert {v for (_, v) in seen} == {True, False} and len({c for (c, _) in seen}) >= 14
