"""What the labs' grader tests share: run a lab's check.py as a learner would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LABS = Path(__file__).resolve().parents[1] / "labs"


def run_check(lab: str, *args: str) -> subprocess.CompletedProcess:
    """`python labs/<lab>/check.py ARGS`, its output captured."""
    return subprocess.run([sys.executable, str(LABS / lab / "check.py"), *args], capture_output=True, text=True,
                          timeout=120)
