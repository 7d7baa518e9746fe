"""alignlab.tools.sandbox: hostile code is contained -- each run ends within its limits with an error the model can
read, and the host is untouched (no file outside the sandbox, no network, no process left behind)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from alignlab.tools import ToolBox
from alignlab.tools.sandbox import network_namespace_works, run_python

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox uses POSIX resource limits and sessions")


def test_plain_code_runs_and_writes_only_its_own_directory():
    r = run_python("open('notes.txt', 'w').write('hi')\nprint(open('notes.txt').read(), sum(range(10)))")
    assert (r.returncode, r.error, r.stdout) == (0, None, "hi 45\n")
    assert ToolBox(builtins=["python"]).run({"name": "python", "arguments": {"code": "print(6 * 7)"}})[
        "content"] == "42"


@pytest.mark.parametrize("code, expect", [
    ("while True: pass", "ran out of its 1 s of CPU time"),
    ("import time\ntime.sleep(60)", "timed out after 1 s"),
    ("import os\nwhile True: os.fork()", "does not allow os.fork"),
    ("import subprocess\nsubprocess.run(['true'])", "does not allow subprocess.Popen"),
    ("import os\nos.system('true')", "does not allow os.system"),
    ("import ctypes", "does not allow importing ctypes"),
    ("import socket\nsocket.create_connection(('127.0.0.1', PORT))", "does not allow socket"),
    ("import _socket\n_socket.socket()", "does not allow socket"),
    ("x = bytearray(4 << 30)", "MemoryError"),
    ("open('big', 'wb').write(b'x' * (64 << 20))", "File too large"),
    ("open(OUTSIDE, 'w').write('escaped')", "only writes inside its working directory"),
    ("import os\nos.remove(OUTSIDE)", "only changes files inside its working directory"),
    ("import os\nos.kill(os.getpid(), 0)", "does not allow os.kill"),  # signal 0: harmless if it ever ran
    ("__import__('os').system('true')", "does not allow os.system"),
])
def test_hostile_code_is_contained(code, expect, tmp_path):
    outside = tmp_path / "host_file.txt"
    outside.write_text("host")
    with socket.socket() as listener:  # a port on this host the code must not reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        code = code.replace("PORT", str(listener.getsockname()[1])).replace("OUTSIDE", repr(str(outside)))
        start = time.monotonic()
        r = run_python(code, timeout_s=1, memory_mb=256, max_file_mb=8)
        took = time.monotonic() - start
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    assert expect in r.text(), r
    assert took < 5
    assert outside.read_text() == "host"  # untouched
    assert not list(tmp_path.glob("escaped*"))


def test_huge_output_is_cut():
    r = run_python("print('x' * 10**7)\nimport sys\nprint('y' * 10**6, file=sys.stderr)", max_output=1000)
    assert r.stdout.endswith("[output cut at 1000 bytes]") and len(r.stdout) < 1100
    assert r.stderr.endswith("[output cut at 1000 bytes]")


def test_no_network_namespace_where_the_kernel_allows_it():
    if not network_namespace_works():
        pytest.skip("unprivileged user namespaces are off here: the audit hook alone refuses sockets")
    # even code that never touches the socket module's audit events would find no interface
    r = run_python("print(open('/proc/net/dev').read().count(':'))")
    assert r.returncode == 0 and r.stdout.strip() == "1"  # only the namespace's loopback, which is down
