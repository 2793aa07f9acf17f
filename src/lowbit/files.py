"""Durable, atomic file writes and the errors they raise.

Every file lowbit writes into a run directory goes through here, so three
promises hold for all of them:

- **atomic**: ``atomic_write_bytes`` writes a temporary ``.<name>.<token>.tmp``
  beside the target, fsyncs it, renames it over the target and fsyncs the
  folder. A reader sees the old file or the new one, never half of one; a
  crash leaves at most the temporary, which ``remove_temp_files`` deletes on
  the next start.
- **readable by collaborators**: files are created with mode ``0o666``
  filtered by the process umask (``0o644`` under umask 022), as ``open`` does,
  not the ``0o600`` of ``tempfile.mkstemp``.
- **one clear error**: a failed write (full disk, read-only file system, no
  permission, quota) raises :class:`StorageError`, an ``OSError`` that names
  the file and reads as one line, e.g. ``disk full (no space left on device)
  writing 'runs/x/records.csv'``. ``torch.save`` is made to write through the
  same path (it serialises into memory first), so a full disk during a
  checkpoint is this error too, not torch's "unexpected pos".

All writes end in ``os.write`` on a file descriptor (``write_all``), which is
where the fault-injection tests cut in (``tests/faults.py``).
"""

from __future__ import annotations

import errno
import io
import os
import secrets
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, Path]

__all__ = [
    "StorageError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "file_mode",
    "fsync_dir",
    "remove_temp_files",
    "storage_error",
    "write_all",
]

TEMP_SUFFIX = ".tmp"

# errno -> what the user reads
_PROBLEMS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system or the process limit",
    errno.EIO: "input/output error (failing disk or lost network storage)",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


class StorageError(OSError):
    """Reading or writing a file failed at the operating system (disk full, read-only, ...).

    ``str(error)`` is one line: the problem, the path and the fix; ``run_dir``
    (set by the command that owns the file) lets the CLI add how to resume.
    """

    run_dir: Optional[Path] = None

    def __str__(self) -> str:
        problem = _PROBLEMS.get(self.errno, self.strerror or "error")
        if self.filename:
            where = f" at {str(self.filename)!r}"
        elif self.run_dir is not None:
            where = f" writing into {str(self.run_dir)!r}"
        else:
            where = ""
        return f"{problem}{where}; {self.fix()}"

    def fix(self) -> str:
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            return "free space on that file system (or point --runs-dir elsewhere) and try again"
        if self.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "choose a folder you can write to (e.g. --runs-dir ~/runs) or fix its permissions"
        return "check the path and the file system, then try again"


def storage_error(error: OSError, path: Optional[PathLike] = None) -> StorageError:
    """``error`` as a :class:`StorageError` naming ``path`` (kept if it already is one)."""
    if isinstance(error, StorageError):
        return error
    filename = error.filename if error.filename is not None else (str(path) if path is not None else None)
    wrapped = StorageError(error.errno, error.strerror or str(error), filename)
    wrapped.__cause__ = error
    return wrapped


def _umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``; else set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open`` (and from :func:`atomic_write_bytes`): ``0o666`` minus the umask."""
    return 0o666 & ~_umask()


def write_all(fd: int, data: Union[bytes, bytearray, memoryview], path: PathLike) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as error:
        raise storage_error(error, path) from error


def fsync_dir(folder: PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: Union[bytes, bytearray, memoryview]) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as error:
        raise storage_error(error, path) from error
    try:
        try:
            write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(error, OSError):
            raise storage_error(error, path) from error
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so a reader never sees a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` into memory, then :func:`atomic_write_bytes` (a crash leaves the old file intact).

    Serialising first costs one copy of the checkpoint in memory and means the
    write itself can only fail as a :class:`StorageError`.
    """
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(error, path.parent) from error
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def check_writable(folder: PathLike) -> None:
    """Raise :class:`StorageError` now if files cannot be made in ``folder`` (or where it would be made).

    Checked before any data is loaded, so an unwritable, read-only or misspelt
    ``--runs-dir`` costs a second, not a data load: the nearest existing part of
    the path must be a folder that is writable, on a file system mounted
    read-write.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise StorageError(errno.EROFS, os.strerror(errno.EROFS), str(existing))
    except AttributeError:  # pragma: no cover - no statvfs
        pass
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(errno.EACCES, os.strerror(errno.EACCES), str(existing))


def is_temp_file(path: Path) -> bool:
    """A temporary of :func:`atomic_write_bytes` (or of earlier lowbit versions: ``.<name>.<x>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_temp_files(folder: PathLike, recursive: bool = True) -> int:
    """Delete the temporaries a killed writer left in ``folder`` (and below, if ``recursive``); return how many.

    Call it only while holding the folder's lock (no live writer can own them).
    """
    removed = 0
    pattern = f".*{TEMP_SUFFIX}"
    for path in Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern):
        if path.is_file() and not path.is_symlink() and is_temp_file(path):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed
