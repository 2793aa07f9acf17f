"""One cell on one worker: the payload that travels to it and the outcome that comes back.

``execute_cell(job)`` is the whole of what a worker does, in a local worker
process or a Ray task alike: set the torch thread count, run the cell through
its command's public run function (resuming what an earlier attempt left in
the run directory), write the cell's log, and report how it ended. With
``ship=True`` (Ray without a shared filesystem) the cell runs in a scratch
folder seeded with the files the driver sent, and the finished folder comes
back packed in the outcome.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

LOG_FILE = "cell.log"
FAULT_ENV = "LOWBIT_SWEEP_KILL"  # fault injection for tests: "c001:1,2" SIGKILLs cell c001's worker on attempts 1 and 2

# How a cell ended
DONE, FAILED, INTERRUPTED, KILLED = "done", "failed", "interrupted", "killed"


@dataclass
class CellJob:
    """What a worker needs to run one cell (picklable; sent to a process or a Ray task)."""

    cell_id: str
    command: str  # "train", "probe", "analyze landscape"
    config: Dict[str, Any]  # the resolved config as plain data
    run_dir: str  # where the cell's files live (on the driver; also on the worker unless ship)
    threads: int
    attempt: int = 1
    ship: bool = False  # run in a scratch folder and send the folder back
    files: Optional[bytes] = None  # ship: the cell folder so far (a resumed cell), packed
    kill: bool = False  # fault injection: the worker SIGKILLs itself before starting
    visible_devices: Optional[str] = None  # local executor with GPUs: this cell's CUDA_VISIBLE_DEVICES ("2", "0,1")


@dataclass
class CellOutcome:
    cell_id: str
    status: str  # done | failed | interrupted | killed
    seconds: float = 0.0
    error: Optional[str] = None
    host: str = ""
    files: Optional[bytes] = None


def faults_from_env() -> Dict[str, List[int]]:
    """``LOWBIT_SWEEP_KILL="c001:1,2;c004:1"`` -> {c001: [1, 2], c004: [1]}."""
    faults: Dict[str, List[int]] = {}
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        cell, _, attempts = item.partition(":")
        faults[cell.strip()] = [int(a) for a in attempts.split(",") if a.strip()]
    return faults


def execute_cell(job: CellJob) -> CellOutcome:
    """Run ``job`` to its end; every exception becomes a ``failed`` outcome with a one-line error."""
    if job.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if job.visible_devices is not None:  # before CUDA starts in this process (torch starts it lazily)
        os.environ["CUDA_VISIBLE_DEVICES"] = job.visible_devices
    import torch

    from lowbit.sweep.commands import get_adapter
    from lowbit.user_warnings import one_line_warnings

    host = socket.gethostname()
    scratch = tempfile.mkdtemp(prefix=f"lowbit-{job.cell_id}-") if job.ship else None
    run_dir = Path(scratch) if scratch else Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job.files:
        unpack(job.files, run_dir)
    start = time.perf_counter()
    status, error = DONE, None
    with open(run_dir / LOG_FILE, "a") as log_file, contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        gpus = "" if job.visible_devices is None else f", CUDA_VISIBLE_DEVICES={job.visible_devices}"
        print(f"cell {job.cell_id} attempt {job.attempt}: pid {os.getpid()} on host {host}, {job.threads} torch threads{gpus}",
              flush=True)
        try:
            torch.set_num_threads(job.threads)
            adapter = get_adapter(job.command)
            config = adapter.build(job.config)
            with one_line_warnings(job.command):  # as the lowbit command shows them
                adapter.run(config, run_dir, log=lambda line: print(line, flush=True))
        except KeyboardInterrupt:  # SIGINT/SIGTERM from the driver: the command saved what it had
            status, error = INTERRUPTED, "interrupted"
        except BaseException as exc:  # noqa: BLE001 - any failure of one cell is recorded, never raised
            traceback.print_exc()
            status, error = FAILED, one_line(exc)
        print(f"cell {job.cell_id} attempt {job.attempt}: {status} after {time.perf_counter() - start:.1f} s", flush=True)
    outcome = CellOutcome(job.cell_id, status, time.perf_counter() - start, error, host)
    if scratch:
        outcome.files = pack(run_dir)
        shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def one_line(exc: BaseException) -> str:
    """``TrainingDiverged: loss is nan at epoch 3 ...``: the type and the first line of the message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def pack(folder: Path) -> bytes:
    """The folder's files as a gzipped tar (paths relative to the folder)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(folder)))
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Unpack what ``pack`` made into ``folder``; members that would land outside it are refused."""
    folder = Path(folder).resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = (folder / member.name).resolve()
            if not member.isfile() or folder not in target.parents:
                raise ValueError(f"refusing archive member {member.name!r}: not a plain file inside the cell folder")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
            tar.extractall(folder, filter="data")
        else:  # pragma: no cover - members were checked above
            tar.extractall(folder)


def local_worker_main(job: CellJob, connection: Any) -> None:
    """Entry of a local worker process: its own process group (the driver forwards signals), then the cell."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _stop_with_parent()
    outcome = execute_cell(job)
    connection.send(outcome)
    connection.close()


def _stop_with_parent() -> None:
    """Linux: SIGTERM this worker when its parent dies, so a killed driver leaves no cell running.

    (The parent is the fork server, which exits when the driver does.) The cell
    stops as it would on Ctrl-C: a training cell saves its checkpoint first.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
