"""Running a model's Python code: a child process with time, memory, file and output limits, no network, and writes
confined to a temporary working directory.

    run_python("print(sum(range(10)))")  -> SandboxResult(stdout="45\\n", stderr="", returncode=0, error=None)

The layers, outermost first:

1. A new process in its own session (so the whole group can be killed), `python -I` (isolated: no user site, no
   PYTHON* variables), an empty environment, and a fresh temporary directory as the working directory, deleted after.
2. No network: where unprivileged user namespaces work (`unshare -rn`), the child gets a network namespace with no
   interface at all; everywhere, layer 4 refuses sockets.
3. Resource limits (setrlimit): CPU seconds, address space (memory), the size of any file written, open files, and
   the number of processes where the kernel enforces it. A wall-clock timeout kills the process group.
4. An audit hook (PEP 578) installed before the code runs, which cannot be removed: it refuses sockets, subprocesses,
   os.system/exec/spawn/fork/kill, ctypes, and opening, creating, renaming or deleting files outside the working
   directory.
5. stdout and stderr are read up to `max_output` bytes each; the rest is cut, with a note.

The threat model is a model's mistakes and a prompt-injected model on a learner's machine: infinite loops, fork
bombs, memory hogs, huge outputs, stray writes, network calls. Layer 4 works inside CPython and is no security
boundary against code written to escape it (layers 1-3 still hold then); run code you must not trust at all in a
container or a VM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache

# Installed in the child before the code runs. Its only state is immutable (the working directory, captured as a
# default argument), so the code cannot widen what the hook allows.
_PRELUDE = r'''
import os, sys
def _hook(event, args, _root=os.path.realpath(os.getcwd()) + os.sep, _sep=os.sep):
    def inside(path):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        return os.path.realpath(str(path)).startswith(_root)
    if event.startswith(("socket.", "ctypes.")) or event in (
            "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "os.kill", "os.killpg", "pty.spawn", "os.startfile", "sys.remote_exec"):
        raise PermissionError(f"the sandbox does not allow {event}")
    if event == "import" and args[0].split(".")[0] in ("ctypes", "_ctypes", "cffi"):
        raise PermissionError(f"the sandbox does not allow importing {args[0]}")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writes and not inside(path):
            raise PermissionError(f"the sandbox only writes inside its working directory, not {path!r}")
    if event in ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.symlink", "os.truncate",
                 "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if not all(inside(p) for p in paths):
            raise PermissionError(f"the sandbox only changes files inside its working directory ({event})")
sys.addaudithook(_hook)
del _hook
_code = sys.stdin.read()
sys.stdin = open(os.devnull)
exec(compile(_code, "<tool>", "exec"), {"__name__": "__main__"})
'''


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    error: str | None  # None, or why the run was stopped: "timed out after 5 s", "killed: out of memory?", ...

    def text(self) -> str:
        """What a tool message says: the output, then the error (or a non-zero exit's stderr)."""
        parts = [self.stdout.rstrip("\n")]
        if self.error or self.returncode:
            parts.append(self.stderr.rstrip("\n"))
            parts.append(f"error: {self.error or f'exit status {self.returncode}'}")
        return "\n".join(p for p in parts if p)


@cache
def network_namespace_works() -> bool:
    """Whether `unshare -rn` can give a child its own, empty network namespace on this machine."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, max_output: int = 10_000,
               max_file_mb: int = 16) -> SandboxResult:
    """Run `code` with the layers of the module docstring; never raises for what the code does."""
    work = tempfile.mkdtemp(prefix="alignlab-sandbox-")
    cmd = [sys.executable, "-I", "-B", "-c", _PRELUDE]
    if network_namespace_works():
        cmd = ["unshare", "-rn", *cmd]
    cpu = max(1, int(timeout_s + 0.999))

    def limit():  # in the child, before exec
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_mb << 20, max_file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    try:
        proc = subprocess.Popen(cmd, cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=limit)
        error = None
        try:
            out, err = _communicate(proc, code.encode(), timeout_s, max_output)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = b"", b""
            error = f"timed out after {timeout_s:g} s"
        _kill(proc)  # whatever the code left running in its group
        if error is None and proc.returncode is not None and proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            error = {"SIGXCPU": f"ran out of its {cpu} s of CPU time", "SIGXFSZ": "wrote a file over the size limit",
                     "SIGKILL": "killed (out of memory?)"}.get(sig, f"killed by {sig}")
        return SandboxResult(_cut(out, max_output), _cut(err, max_output), proc.returncode, error)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _communicate(proc: subprocess.Popen, data: bytes, timeout_s: float, max_output: int) -> tuple[bytes, bytes]:
    """Feed stdin and read stdout/stderr, keeping at most max_output + 1 bytes of each (the rest is drained)."""
    outs = {}

    def read(name, stream):
        kept = bytearray()
        while chunk := stream.read(65536):
            if len(kept) <= max_output:
                kept += chunk[:max_output + 1 - len(kept)]
        outs[name] = bytes(kept)

    readers = [threading.Thread(target=read, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait(timeout=timeout_s)
    for t in readers:
        t.join(timeout=1)
    return outs.get("out", b""), outs.get("err", b"")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _cut(raw: bytes, max_output: int) -> str:
    text = raw[:max_output].decode(errors="replace")
    return text + f"\n[output cut at {max_output} bytes]" if len(raw) > max_output else text


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it printed.

    Args:
        code: a Python program; print what you want to see
    """
    return run_python(code).text()
