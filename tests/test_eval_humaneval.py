"""HumanEval in the sandbox: every canonical solution passes, wrong ones fail, and hostile completions (an infinite
loop, a fork bomb, deleting a file outside the temporary directory, a network connection) fail their problem
within the limits and leave the host as it was."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from alignlab.eval.harness import humaneval_passes, humaneval_run
from alignlab.tasks.humaneval import HumanEval, program, truncate

from .conftest import SHARED_DATA

HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox uses POSIX resource limits and sessions")

ADD = {"task_id": "Test/0", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
       "entry_point": "add"}


@pytest.mark.shared_data(HUMANEVAL)
def test_every_canonical_solution_passes_and_a_wrong_one_fails():
    records = HumanEval(str(HUMANEVAL)).records()
    assert len(records) == 164
    with ThreadPoolExecutor(2) as pool:
        passed = list(pool.map(lambda r: humaneval_passes(r, r["canonical_solution"], timeout_s=20), records))
    assert [r["task_id"] for r, ok in zip(records, passed) if not ok] == []
    # the canonical solution of one problem does not solve another; an empty body fails
    assert not humaneval_passes(records[0], records[1]["canonical_solution"])
    assert not humaneval_passes(records[2], "    pass\n")


def test_stop_sequences_cut_the_completion_and_the_program_calls_check():
    completion = "    return a + b\n\ndef unrelated():\n    raise SystemExit(1)\n"
    assert truncate(completion) == "    return a + b\n"
    text = program(ADD, truncate(completion))
    assert text.startswith(ADD["prompt"]) and text.rstrip().endswith("check(add)")
    assert humaneval_passes(ADD, "    return a + b\n", timeout_s=5)
    assert not humaneval_passes(ADD, "    return a - b\n", timeout_s=5)
    assert not humaneval_passes(ADD, "    return a +\n", timeout_s=5)  # a syntax error


def test_an_infinite_loop_and_a_fork_bomb_fail_within_the_limit():
    for body in ("    while True:\n        pass\n",
                 "    import os\n    while True:\n        os.fork()\n"):
        start = time.monotonic()
        result = humaneval_run(ADD, body, timeout_s=2)
        assert time.monotonic() - start < 10
        assert result.error is not None or result.returncode != 0


def test_deleting_a_file_outside_the_sandbox_fails_and_the_file_stays(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    body = (f"    import os, shutil\n    os.remove({str(victim)!r})\n    shutil.rmtree({str(tmp_path)!r})\n"
            "    return a + b\n")
    assert not humaneval_passes(ADD, body, timeout_s=5)
    assert victim.read_text() == "precious"


def test_a_network_connection_fails_and_reaches_nothing():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    body = (f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
            "    return a + b\n")
    assert not humaneval_passes(ADD, body, timeout_s=5)
    listener.join()
    server.close()
    assert accepted == []
