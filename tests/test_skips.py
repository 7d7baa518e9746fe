"""The suite skips only for what is truly absent: an optional package that is not installed (never one that is
installed but lost a symbol), and ../shared/data files outside CI (under CI a missing file fails)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .hf_models import require

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
ORACLES = ("trl", "peft", "transformers")


def test_require_skips_only_when_the_package_is_missing():
    with pytest.raises(pytest.skip.Exception, match="alignlab_no_such_package is not installed"):
        require("alignlab_no_such_package.module")
    with pytest.raises(ImportError):  # installed, but the module moved: an error, not a skip
        require("pytest.alignlab_no_such_module")
    assert require("json.decoder").JSONDecoder


def _silent_skips(path: Path) -> list[str]:
    """importorskip calls, and try/except ImportError around an oracle's import, in one test file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "importorskip":
            found.append(f"{path.name}:{node.lineno} pytest.importorskip")
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            imports = [n for n in ast.walk(ast.Module(body=node.body, type_ignores=[]))
                       if isinstance(n, (ast.Import, ast.ImportFrom))]
            names = [n.module or "" for n in imports if isinstance(n, ast.ImportFrom)]
            names += [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
            if caught & {"ImportError", "ModuleNotFoundError"} and any(m.split(".")[0] in ORACLES for m in names):
                found.append(f"{path.name}:{node.lineno} except ImportError around {names}")
    return found


def test_no_test_skips_on_an_import_error_of_an_installed_oracle():
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in _silent_skips(path)]
    assert not found, f"use tests.hf_models.require / installed instead: {found}"


SHARED_TEST = """
import pytest

@pytest.mark.shared_data("/nonexistent/shared/data/gsm8k/test.jsonl")
def test_reads_shared_data():
    pass
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_shared_data_skips_locally_and_fails_in_ci(pytester, monkeypatch, ci):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(SHARED_TEST)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*shared data not found: /nonexistent/shared/data/gsm8k/test.jsonl*CI is set*"])
    else:
        result.assert_outcomes(skipped=1)
