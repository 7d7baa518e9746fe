"""scripts/newcomer_path.py: a README's newcomer path is parsed, run block by block and its stated numbers checked
(on a small README built here); every lab's README has a path with checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("newcomer_path", ROOT / "scripts" / "newcomer_path.py")
newcomer = sys.modules["newcomer_path"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(newcomer)

README = '''# Lab 99

## Newcomer path (1 minute)

```bash
mkdir -p runs && echo '{"loss": 1.5}' > runs/m.json
echo "accuracy 52.5% on 40"
```
<!-- expect-json runs/m.json loss 1.4 1.6 -->
<!-- expect-output "accuracy ([0-9.]+)%" 50 55 -->

```bash optional
sleep 1000
```

```bash
printf '{"step": 1, "v": 3}\\n{"step": 2}\\n' > runs/l.jsonl
```
<!-- expect-json runs/l.jsonl v 3 3 -->
<!-- expect-file runs/l.jsonl -->

## Next
```bash
exit 1
```
'''


def lab(tmp_path, text):
    d = tmp_path / "labs" / "99_x"
    d.mkdir(parents=True)
    (d / "README.md").write_text(text)
    return d


def test_blocks_and_checks_are_parsed(tmp_path):
    blocks = newcomer.parse(newcomer.newcomer_section(lab(tmp_path, README) / "README.md"))
    assert [b.optional for b in blocks] == [False, True, False]
    assert blocks[0].expects == [("expect-json", ["runs/m.json", "loss", "1.4", "1.6"]),
                                 ("expect-output", ["accuracy ([0-9.]+)%", "50", "55"])]


def test_a_path_runs_and_its_numbers_are_checked(tmp_path, capsys):
    d = lab(tmp_path, README)
    assert newcomer.run_path(d, budget=60, cwd=tmp_path) == 0
    assert "skipped (optional)" in capsys.readouterr().out


def test_a_wrong_number_a_failed_block_and_the_budget_fail(tmp_path, capsys):
    d = lab(tmp_path, README.replace("loss 1.4 1.6", "loss 1.6 1.9"))
    assert newcomer.run_path(d, budget=60, cwd=tmp_path) == 1
    assert "loss = 1.5, expected 1.6..1.9" in capsys.readouterr().out
    d.joinpath("README.md").write_text(README.replace('echo "accuracy', 'false; echo "accuracy'))
    assert newcomer.run_path(d, budget=60, cwd=tmp_path) == 1
    assert "block 1 exited with 1" in capsys.readouterr().out
    d.joinpath("README.md").write_text(README.replace("mkdir -p runs", "sleep 1.2; mkdir -p runs"))
    assert newcomer.run_path(d, budget=1, cwd=tmp_path) == 1
    assert "over the 1 s budget" in capsys.readouterr().out


@pytest.mark.parametrize("n", range(6))
def test_every_lab_has_a_checked_newcomer_path(n):
    readme = next((ROOT / "labs").glob(f"{n:02d}_*")) / "README.md"
    blocks = newcomer.parse(newcomer.newcomer_section(readme))
    assert any(not b.optional for b in blocks), "the path runs something"
    assert any(b.expects for b in blocks if not b.optional), "the path checks what it states"
