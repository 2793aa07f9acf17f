"""The run directory: where every result lands, with the evidence beside it.

``runs/<name>-<YYYYmmdd-HHMMSS>/`` holds

- ``config.yaml``   the resolved config (every default filled in),
- ``meta.yaml``     lowbit and torch versions, git commit, machine, start time,
- ``records.csv`` or ``metrics.csv``   flat rows, one per measurement or epoch,
- ``checkpoints/``, ``plots/`` and ``report.md``,

and three hidden files of the machinery: ``.lock`` (who holds the run, see
:class:`DirectoryLock`), ``.started-config.yaml`` (the config as the run
started, which a resume compares ``config.yaml`` with) and, per records file,
``.<file>.commit`` (how many of its rows are complete, see :class:`RecordWriter`).

Records are appended one transaction (``write_many``) at a time: the rows of a
transaction become visible all together or not at all, so an interrupted run
keeps every complete transaction and nothing torn. Every file is written
through :mod:`lowbit.files` (atomic, fsynced, mode from the umask, one-line
errors).
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import datetime as _dt
import functools
import io
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from lowbit.allocator import current_policy
from lowbit.config import get_dotted, save_config, to_dict
from lowbit.provenance import code_provenance
from lowbit.files import (
    StorageError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    remove_temp_files,
    storage_error,
    write_all,
)

PathLike = Union[str, Path]


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


MAX_NAME_LENGTH = 200  # bytes; a file name is at most 255, the time stamp and a suffix need the rest


def check_run_name(name: Any, key: str = "run.name") -> str:
    """``name`` if it is one plain path component, else a ``ValueError`` naming ``key`` and the fix.

    A run name becomes a folder inside ``--runs-dir``: separators, ``..``, an
    absolute path or a NUL would put it elsewhere (or nowhere).
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty" if name == "" else f"must be a string, got {type(name).__name__}"
    elif "\0" in name:
        problem = "contains a NUL character"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        problem = "contains a path separator"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} bytes"
    if problem is not None:
        raise ValueError(
            f"{key}={name!r} {problem}: a run name is one folder name inside --runs-dir "
            "(letters, digits, '-', '_', '.'); to write elsewhere pass --runs-dir DIR"
        )
    return name


def create_run_dir(name: str, root: PathLike = "runs") -> Path:
    """Make a fresh ``root/<name>-<time>`` folder (with a numeric suffix if taken).

    Race-free: ``mkdir`` either creates the folder or fails because another
    process did, so processes started at the same instant get different folders.
    ``name`` must be one path component (:func:`check_run_name`).
    """
    check_run_name(name)
    root = Path(root)
    try:
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
    except OSError as error:
        raise storage_error(error, root) from error
    return path


def prepare_run_dir(run_dir: PathLike) -> Path:
    """A given run directory (a sweep cell's): made if missing, with its ``plots/``."""
    run_dir = Path(run_dir)
    try:
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(error, run_dir) from error
    return run_dir


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
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise storage_error(error, path) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if not isinstance(error, BlockingIOError):
                os.close(fd)
                raise storage_error(error, path) from error
            holder = ""
            for _ in range(50):  # the holder writes its note just after taking the lock: give it 0.5 s
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            holder = holder or "another process"
            raise DirectoryInUse(
                f"{self.what} directory {str(self.directory)!r} is in use by {holder}; "
                "wait for that process to finish or stop it, then try again"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {timestamp()}\n".encode(), 0)
        except OSError:
            pass  # the note of who holds it is a courtesy; the flock is the lock
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


STARTED_CONFIG = ".started-config.yaml"


def lock_run_dir(run_dir: PathLike) -> DirectoryLock:
    """Take the lock of a run directory and remove the temporaries a killed run left there.

    Raises :class:`DirectoryInUse` naming the holder's pid and host when another
    live process writes into it.
    """
    lock = DirectoryLock(run_dir, "run").acquire()
    try:
        remove_temp_files(run_dir)
    except OSError:
        pass  # a read-only run (e.g. `lowbit report` of a colleague's run): nothing to clean
    return lock


_HELD: "contextvars.ContextVar[Optional[List[DirectoryLock]]]" = contextvars.ContextVar("lowbit_run_locks", default=None)


def holds_run_locks(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the run locks taken with :func:`hold_run_lock` inside ``function`` are released when it ends.

    Lets a long command function take its run directory's lock at the point
    the directory is known (after validation, after ``create_run_dir``) and
    keep it until it returns or raises, without re-indenting its body.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _HELD.set([])
        try:
            return function(*args, **kwargs)
        except OSError as error:
            held = _HELD.get()
            if error.errno is None or not held:
                raise
            wrapped = storage_error(error)  # e.g. a plot's write on a full disk: one line, naming the run
            if wrapped.run_dir is None:
                run_dir = held[0].directory
                if (run_dir / "config.yaml").is_file():
                    wrapped.run_dir = run_dir  # the CLI says how to resume this run
                else:
                    _discard_unstarted(run_dir)  # it failed before it held anything: leave no empty folder
            if wrapped is error:
                raise
            raise wrapped from error
        finally:
            for lock in reversed(_HELD.get() or []):
                lock.release()
            _HELD.reset(token)

    return wrapper


def _discard_unstarted(run_dir: Path) -> None:
    """Remove a run directory that holds nothing of a run (its lock, an empty plots/, temporaries)."""
    try:
        for child in run_dir.iterdir():
            if child.name == "plots" and child.is_dir() and not any(child.iterdir()):
                continue
            if child.name in (DirectoryLock.FILE, STARTED_CONFIG) or child.name.endswith(".tmp"):
                continue
            return
        shutil.rmtree(run_dir)
    except OSError:
        pass


def hold_run_lock(run_dir: PathLike) -> DirectoryLock:
    """:func:`lock_run_dir`, released when the enclosing :func:`holds_run_locks` function ends."""
    held = _HELD.get()
    if held is None:
        raise RuntimeError("hold_run_lock is called only inside a function decorated with @holds_run_locks")
    lock = lock_run_dir(run_dir)
    held.append(lock)
    return lock


def open_resumed_run(resume: PathLike, config: Any, run_dir: Any, command: str) -> Path:
    """The run directory ``resume`` of ``lowbit COMMAND --resume``, checked and locked (inside @holds_run_locks).

    ``config`` and ``run_dir`` must not be given with it (the run has its own config.yaml).
    """
    if config is not None or run_dir is not None:
        raise ValueError(f"resume continues a `lowbit {command}` run with its own config.yaml: do not pass config or run_dir too")
    path = Path(resume)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.yaml: is it a run directory of `lowbit {command}`?")
    hold_run_lock(path)
    return path


def write_run_files(run_dir: PathLike, config: Any) -> None:
    """Save the resolved config and the machine/code evidence into ``run_dir``.

    ``.started-config.yaml`` keeps the config as the run started: a resume
    compares ``config.yaml`` with it (:func:`changed_keys`).
    """
    run_dir = Path(run_dir)
    save_config(config, run_dir / "config.yaml")  # first: once it exists the run can be resumed
    save_config(config, run_dir / STARTED_CONFIG)
    atomic_write_text(run_dir / "meta.yaml", yaml.safe_dump(environment_info(), sort_keys=False))


def reproduce_command(words: str, config_file: PathLike, plugins: Any = ()) -> str:
    """``lowbit WORDS --import P ... CONFIG_FILE``, shell-quoted: the line a report gives to make the run again.

    ``plugins`` (the config's ``plugins``) are named as ``--import`` flags, so a
    reader sees which of their own modules the run needs (the config file
    imports them too).
    """
    import shlex

    from lowbit.plugins import import_flags

    modules = [p for p in plugins if isinstance(p, str)] if isinstance(plugins, (list, tuple)) else []
    return " ".join(shlex.quote(a) for a in ["lowbit", *words.split(), *import_flags(modules), str(config_file)])


def started_config(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The config a run started with (None for runs made before lowbit kept it)."""
    from lowbit.config import read_yaml

    path = Path(run_dir) / STARTED_CONFIG
    return read_yaml(path) if path.is_file() else None


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two config dicts (added and removed keys included)."""
    changed: List[str] = []
    for key in list(before) + [k for k in after if k not in before]:
        path = f"{prefix}{key}"
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and a and b:
            changed += changed_keys(a, b, f"{path}.")
        elif a != b:
            changed.append(path)
    return changed


_MISSING = object()


def config_changes(saved: Mapping[str, Any], config: Any) -> List[str]:
    """The dotted keys of ``config`` (a config dataclass, or its dict) whose values differ from ``saved``.

    A key ``saved`` lacks and ``config`` holds at its class default is no
    change: lowbit added it after the run was made (e.g. ``plugins``), and the
    run was made with what that default means.
    """
    import dataclasses

    now = to_dict(config) if not isinstance(config, Mapping) else dict(config)
    changed = changed_keys(dict(saved), now)
    if not dataclasses.is_dataclass(config):
        return changed
    defaults = to_dict(type(config)())
    return [
        k for k in changed
        if not (get_dotted(saved, k, _MISSING) is _MISSING and get_dotted(now, k, _MISSING) == get_dotted(defaults, k, _MISSING))
    ]  # fmt: skip


def check_resume_config(
    run_dir: PathLike,
    config: Any,
    started: Optional[Mapping[str, Any]],
    command: str,
    changeable: Sequence[str] = (),
    force: bool = False,
) -> None:
    """Refuse to resume ``run_dir`` when its config differs from the one it started with.

    ``started`` is the config the finished part of the run was computed with (a
    checkpoint's, or ``.started-config.yaml``); keys in ``changeable`` (and
    below them) may differ. ``force`` accepts the change.
    """
    if started is None or force:
        return
    now = to_dict(config) if not isinstance(config, Mapping) else dict(config)
    changed = [k for k in config_changes(started, config) if not any(k == c or k.startswith(c + ".") for c in changeable)]
    if changed:
        shown = ", ".join(f"{k} ({_show(get_dotted(started, k, _MISSING))} -> {_show(get_dotted(now, k, _MISSING))})" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        allowed = f" (only {', '.join(changeable)} may change)" if changeable else ""
        raise ValueError(
            f"{str(Path(run_dir) / 'config.yaml')!r} differs from the config the run started with{allowed}: "
            f"{shown}{more}. Undo the edit, start a new run with the new config, or pass "
            f"`lowbit {command} --resume {run_dir} --force` to mix the results of both configs in one run"
        )


def _show(value: Any) -> str:
    return "unset" if value is _MISSING else repr(value)


# the machinery's own files, which clearing a run directory keeps
_KEPT_ALWAYS = (DirectoryLock.FILE,)


def clear_run_dir(run_dir: PathLike, keep: Sequence[str] = ()) -> None:
    """Empty ``run_dir`` except ``keep`` (names in it) and its lock file: a run that starts over leaves nothing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    kept = set(keep) | set(_KEPT_ALWAYS)
    try:
        for child in run_dir.iterdir():
            if child.name in kept:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    except OSError as error:
        raise storage_error(error, run_dir) from error


def environment_info() -> Dict[str, Any]:
    """Versions, commits (lowbit's and the working directory's, :mod:`lowbit.provenance`) and machine:
    the evidence that goes with every result."""
    import torch

    import lowbit

    return {
        "lowbit": lowbit.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        **code_provenance(),
        "machine": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "malloc": current_policy() or "default",  # lowbit.allocator: CPU times depend on it, the numbers not
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


class RecordsRecovered(UserWarning):
    """A records file held rows of an interrupted write; they were dropped (and are recomputed)."""


class RecordWriter:
    """Append flat records (dicts) to a CSV file, one transaction per ``write_many``.

    The rows of one ``write_many`` become visible all at once or not at all:
    they are appended with one ``write`` and fsynced, then the count of
    complete rows is recorded in ``.<file>.commit`` (replaced atomically). A
    crash or a full disk in between leaves rows past the committed count;
    readers (:func:`read_records`) ignore them, and the next writer drops them
    with a :class:`RecordsRecovered` warning. The header is the union of keys
    seen so far; a record with a new key rewrites the file (atomically) with
    the wider header, older rows getting blanks.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.fieldnames: List[str] = []
        self.rows = 0
        self.size = 0
        if not self.path.exists():
            commit_path(self.path).unlink(missing_ok=True)  # a commit of a deleted file is stale
            return
        header, rows, committed, extra = _read_committed(self.path)
        self.fieldnames, self.rows = header, committed
        if extra:
            warnings.warn(
                f"{str(self.path)!r}: dropped {extra} of the rows at its end, written by a run that stopped "
                f"while writing them (killed, or the disk was full); they are recomputed",
                RecordsRecovered,
                stacklevel=2,
            )
            self._replace(header, rows[:committed])
        else:
            self.size = self.path.stat().st_size

    def write(self, record: Mapping[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append ``records`` as one transaction (all visible, or none)."""
        records = list(records)
        if not records:
            return
        new_keys = list(dict.fromkeys(k for r in records for k in r if k not in self.fieldnames))
        if new_keys or not self.path.exists():
            old = _read_committed(self.path)[1][: self.rows] if self.path.exists() and self.rows else []
            header = self.fieldnames + new_keys
            width = len(header)
            rows = [row + [""] * (width - len(row)) for row in old] + [_row(r, header) for r in records]
            self._replace(header, rows)
            return
        data = _csv_bytes([_row(r, self.fieldnames) for r in records])
        fd = _open_append(self.path)
        try:
            start = os.fstat(fd).st_size
            try:
                write_all(fd, data, self.path)
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # best effort: the commit file is what readers trust
                raise
        finally:
            os.close(fd)
        self._commit(self.rows + len(records), start + len(data))

    def _replace(self, header: List[str], rows: List[List[str]]) -> None:
        data = _csv_bytes([header] + rows)
        atomic_write_bytes(self.path, data)
        self.fieldnames = header
        self._commit(len(rows), len(data))

    def _commit(self, rows: int, size: int) -> None:
        atomic_write_text(commit_path(self.path), f"rows {rows} bytes {size}\n")
        self.rows, self.size = rows, size


def rewrite_records(path: PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace a records file by exactly ``records`` (none: remove it), atomically."""
    path = Path(path)
    if not records:
        path.unlink(missing_ok=True)
        commit_path(path).unlink(missing_ok=True)
        return
    writer = RecordWriter.__new__(RecordWriter)
    writer.path, writer.fieldnames, writer.rows, writer.size = path, [], 0, 0
    header = list(dict.fromkeys(k for r in records for k in r))
    writer._replace(header, [_row(r, header) for r in records])


def commit_path(path: PathLike) -> Path:
    """``.records.csv.commit`` beside ``records.csv``: the count of complete rows."""
    path = Path(path)
    return path.with_name(f".{path.name}.commit")


def _read_commit(path: Path) -> Optional[Tuple[int, int]]:
    try:
        words = commit_path(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    if len(words) == 4 and words[0] == "rows" and words[2] == "bytes" and words[1].isdigit() and words[3].isdigit():
        return int(words[1]), int(words[3])
    return None


def _read_committed(path: Path) -> Tuple[List[str], List[List[str]], int, int]:
    """(header, complete rows, how many of them are committed, how many rows or torn bytes are not)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise storage_error(error, path) from error
    commit = _read_commit(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"records file {str(path)!r} is not UTF-8 text (byte {error.start}); it is corrupt") from None
    torn = bool(text) and not text.endswith("\n")
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise ValueError(f"records file {str(path)!r} is not valid CSV ({error}); it is corrupt") from None
    if torn:
        table = table[:-1]  # the last line was cut short by a crash or a full disk
    if not table:
        return [], [], 0, int(torn)
    header, rows = table[0], table[1:]
    complete = len(rows)
    # rows past the commit belong to a write that did not finish; a file written without commits
    # (older lowbit, a merged sweep) counts every complete row
    committed = min(commit[0], complete) if commit is not None else complete
    for number, row in enumerate(rows[:committed], start=2):
        if len(row) != len(header):
            raise ValueError(
                f"records file {str(path)!r}: line {number} has {len(row)} fields but the header has "
                f"{len(header)}; the file is corrupt (delete the run, or restore the file)"
            )
    extra = complete - committed + int(torn)
    return header, rows, committed, extra


def _row(record: Mapping[str, Any], header: Sequence[str]) -> List[str]:
    return ["" if record.get(k) is None else str(_cell(record[k])) for k in header]


def _csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _open_append(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as error:
        raise storage_error(error, path) from error


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # full precision, so a resumed run reads back the same numbers
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return value


def read_records(path: PathLike, text_columns: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Read a records CSV; numbers come back as int/float, blanks as None.

    Only committed rows are read (see :class:`RecordWriter`): the rows of a
    write that a crash or a full disk cut short are not. Columns in
    ``text_columns`` stay text (a layer named "0" or "1.10" is a name, not a number).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no records file at {str(path)!r}: was the run started?")
    header, rows, committed, _ = _read_committed(path)
    return [
        {k: (v if k in text_columns else _parse_cell(v)) for k, v in zip(header, row)} for row in rows[:committed]
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
