"""The run directory: where every result lands, with the evidence beside it.

``runs/<name>-<YYYYmmdd-HHMMSS>/`` holds

- ``config.yaml``   the resolved config (every default filled in),
- ``meta.yaml``     lowbit and torch versions, git commit, machine, start time,
- ``records.csv`` or ``metrics.csv``   flat rows, one per measurement or epoch,
- ``checkpoints/``, ``plots/`` and ``report.md``.

Rows are appended and flushed one at a time, so an interrupted run keeps every
row it computed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

from lowbit.config import save_config

PathLike = Union[str, Path]


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def create_run_dir(name: str, root: PathLike = "runs") -> Path:
    """Make a fresh ``root/<name>-<time>`` folder (with a numeric suffix if taken).

    Race-free: ``mkdir`` either creates the folder or fails because another
    process did, so processes started at the same instant get different folders.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{name}-{timestamp()}"
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            n += 1
            path = Path(f"{base}-{n}")
    (path / "plots").mkdir()
    return path


class DirectoryInUse(ValueError):
    """Another live process holds the lock of a run or sweep directory."""


class DirectoryLock:
    """An exclusive lock on a directory, held while one process writes into it.

    ``flock`` on ``<dir>/.lock``: the kernel releases it when the holder exits,
    however it exits, so a lock left by a killed process is simply taken over.
    The file names the holder (pid, host, start time) for the error message of
    the process that finds it taken::

        with DirectoryLock(run_dir, "sweep"):
            ...  # a second `lowbit sweep --resume run_dir` refuses meanwhile
    """

    FILE = ".lock"

    def __init__(self, directory: PathLike, what: str = "run"):
        self.directory = Path(directory)
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "DirectoryLock":
        import fcntl
        import socket

        path = self.directory / self.FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DirectoryInUse(
                f"{self.what} directory {str(self.directory)!r} is in use by {holder}; "
                "wait for that process to finish or stop it, then try again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {timestamp()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def write_run_files(run_dir: PathLike, config: Any) -> None:
    """Save the resolved config and the machine/code evidence into ``run_dir``."""
    run_dir = Path(run_dir)
    save_config(config, run_dir / "config.yaml")
    atomic_write_text(run_dir / "meta.yaml", yaml.safe_dump(environment_info(), sort_keys=False))


def environment_info() -> Dict[str, Any]:
    """Versions, git commit and machine: the evidence that goes with every result."""
    import torch

    import lowbit

    return {
        "lowbit": lowbit.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "machine": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def git_commit() -> Optional[str]:
    """The commit of the lowbit source tree, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so a reader never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through a temporary file and a rename (a crash leaves the old file intact)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RecordWriter:
    """Append flat records (dicts) to a CSV file, one flushed row at a time.

    The header is the union of keys seen so far; when a record brings a new
    key the file is rewritten with the wider header (older rows get blanks).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.fieldnames: List[str] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as handle:
                self.fieldnames = next(csv.reader(handle), [])

    def write(self, record: Mapping[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        new_keys = [k for r in records for k in r if k not in self.fieldnames]
        if new_keys:
            old_rows = read_records(self.path) if self.path.exists() else []
            self.fieldnames = self.fieldnames + list(dict.fromkeys(new_keys))
            with self.path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.fieldnames)
                writer.writeheader()
                writer.writerows(old_rows)
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fieldnames)
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in records)
            handle.flush()
            os.fsync(handle.fileno())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # full precision, so a resumed run reads back the same numbers
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return value


def read_records(path: PathLike, text_columns: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Read a records CSV; numbers come back as int/float, blanks as None.

    Columns in ``text_columns`` stay text (a layer named "0" or "1.10" is a name, not a number).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no records file at {str(path)!r}: was the run started?")
    with path.open(newline="") as handle:
        return [
            {k: (v if k in text_columns else _parse_cell(v)) for k, v in row.items()} for row in csv.DictReader(handle)
        ]


def _parse_cell(text: Optional[str]) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text
