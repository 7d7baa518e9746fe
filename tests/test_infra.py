"""The commands infra/ tells people to run stay valid: every `alignlab ...` line in its Markdown files parses
with alignlab's own command line (same subcommand, known options, allowed choices). The GPU-only commands
are not run here; the CPU ones are run by their own tests (test_quant, test_gguf, test_interop_*)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alignlab.cli import build_parser

INFRA = Path(__file__).resolve().parents[1] / "infra"


def commands() -> list[tuple[str, str]]:
    out = []
    for path in sorted(INFRA.glob("*.md")):
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), flags=re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                for part in line.split("&&"):
                    part = part.split("#")[0].strip()
                    if part.startswith("alignlab "):
                        out.append((path.name, part))
    return out


def test_infra_has_alignlab_commands():
    assert len(commands()) >= 8


@pytest.mark.parametrize("where,command", commands())
def test_infra_command_parses(where, command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"infra/{where}: `{command}` does not parse (exit {e.code})")
