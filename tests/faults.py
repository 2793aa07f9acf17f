"""Fault injection for real lowbit processes (used by test_reliability.py and test_fuzz.py).

``run_lowbit(argv, fault=Fault("enospc", k, folder))`` forks a child process
from the test process (torch and lowbit already imported, so a run starts in
milliseconds, not seconds), patches its file writes, runs ``lowbit.cli.main``
and returns its exit status and stderr. The parent is never touched.

The k-th write into ``folder`` (counted over ``os.write`` and over writes to
files opened with ``open`` in a writing mode, e.g. plot PNGs) is cut short:

- ``enospc``: half of the bytes are written, then ``OSError(ENOSPC)`` is
  raised, as a full disk does;
- ``kill``: half of the bytes are written, then the process SIGKILLs itself.

``Fault("count", 0, folder)`` only counts (how many writes a run makes).
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple


@dataclass
class Fault:
    kind: str  # enospc | kill | count
    at: int  # the write (1-based) that fails
    folder: Path  # only writes into files below it count


@dataclass
class Result:
    rc: int  # exit status; -9 when killed by SIGKILL
    err: str  # stderr
    writes: int  # writes into the fault's folder (when counted)
    peak_rss_mb: float  # the child's peak resident memory


def _install(fault: Fault, counter_path: Path) -> None:
    folder = str(Path(fault.folder).resolve())
    count = [0]

    def inside(path: str) -> bool:
        return path == folder or path.startswith(folder + os.sep)

    def fd_inside(fd: int) -> bool:
        try:
            return inside(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False

    def hit(write_part, data) -> None:
        """Count one write; on the chosen one, write half of ``data`` and fail (ENOSPC) or die (SIGKILL)."""
        count[0] += 1
        counter_path.write_text(str(count[0]))  # (outside the folder: not counted)
        if fault.kind == "count" or count[0] != fault.at:
            return
        write_part(data[: len(data) // 2])
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write = os.write

    def counted_write(fd, data):
        if fd > 2 and fd_inside(fd):
            hit(lambda part: real_write(fd, part), memoryview(data).cast("B"))
        return real_write(fd, data)

    os.write = counted_write
    real_open = builtins.open

    class CountedFile:
        """A file opened for writing inside the folder; every ``write`` is counted."""

        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            def part(piece):
                self._handle.write(piece)
                self._handle.flush()

            hit(part, data)
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()
            return False

        def __iter__(self):
            return iter(self._handle)

    def counted_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and inside(str(Path(file).resolve())):
            return CountedFile(handle)
        return handle

    builtins.open = counted_open


def _limit_memory(extra_bytes: int) -> None:
    """Cap the child's address space at its size now plus ``extra_bytes``: a runaway allocation fails, never swaps."""
    import resource

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            now = int(line.split()[1]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (now + extra_bytes, resource.RLIM_INFINITY))
            return


def run_lowbit(
    argv: Sequence[str],
    fault: Optional[Fault] = None,
    timeout: float = 120.0,
    cwd: Optional[Path] = None,
    memory_limit: Optional[int] = None,
    signal_after: Optional[Tuple[int, float]] = None,
) -> Result:
    """Run ``lowbit ARGV`` in a forked child (with ``fault`` injected); its exit status and stderr.

    ``cwd``: the child's working directory; ``memory_limit``: bytes the child may allocate beyond
    what it inherits (a cap on its address space); ``signal_after=(signum, seconds)``: send the
    child that signal after that many seconds (then wait for it to end).
    """
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="lowbit-fault-"))
    err_path, counter_path = scratch / "stderr", scratch / "writes"
    counter_path.write_text("0")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if cwd is not None:
                os.chdir(cwd)
            if memory_limit is not None:
                _limit_memory(memory_limit)
            if fault is not None:
                _install(fault, counter_path)
            from lowbit.cli import main

            code = main(list(argv))
            sys.stderr.flush()
            os._exit(int(code or 0))
        except SystemExit as stop:
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        except BaseException:  # noqa: BLE001 - a traceback the test should see
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    if signal_after is not None:
        import time

        time.sleep(signal_after[1])
        try:
            os.kill(pid, signal_after[0])
        except ProcessLookupError:
            pass  # it had already finished
    _, status, usage = _wait(pid, timeout)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    err = err_path.read_text(errors="replace")
    writes = int(counter_path.read_text() or 0)
    for path in (err_path, counter_path):
        path.unlink(missing_ok=True)
    scratch.rmdir()
    return Result(rc, err, writes, usage.ru_maxrss / 1024)


def _wait(pid: int, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return done, status, usage
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.wait4(pid, 0)
        time.sleep(0.01)
