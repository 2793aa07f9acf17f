"""``lowbit probe`` as a function: the run directory, a graceful stop, the report.

``run_probe(config)`` is exactly what ``lowbit probe CONFIG key=value ...``
does once the config is loaded, so a sweep cell (``lowbit.sweep``) and a run by
hand make the same run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Optional, Union

from lowbit.config import check_threads, load_config
from lowbit.files import check_writable
from lowbit.probe.config import ProbeConfig
from lowbit.probe.plan import prepare
from lowbit.probe.runner import run_grid
from lowbit.probe.tracking import check_trackers, finish, open_probe_trackers, unit_scalars
from lowbit.runs import (
    check_resume_config,
    check_run_name,
    create_run_dir,
    hold_run_lock,
    holds_run_locks,
    open_resumed_run,
    prepare_run_dir,
    started_config,
    write_run_files,
)
from lowbit.signals import sigterm_as_interrupt

PathLike = Union[str, Path]
RECORDS_FILE = "records.csv"
# keys a resume may change: where it runs and how it is recorded, not what it measures
CHANGEABLE_ON_RESUME = ("device", "trackers", "mlflow")


class ProbeInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: every finished unit is saved in ``run_dir``; ``--resume`` finishes it."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


@holds_run_locks
def run_probe(
    config: Optional[ProbeConfig] = None,
    run_dir: Optional[PathLike] = None,
    resume: Optional[PathLike] = None,
    *,
    runs_dir: PathLike = "runs",
    progress: bool = True,
    estimate: bool = True,
    log: Optional[Callable[[str], None]] = None,
    force: bool = False,
    device: Optional[str] = None,
) -> Path:
    """Measure ``config`` (default: the built-in probe) into a run directory and write its report.

    Args:
        config: the probe; not allowed with ``resume``.
        run_dir: where to write (created; must hold no records). Default ``runs_dir/<name>-<time>``.
        resume: a run directory to finish with its own ``config.yaml``; saved units are not recomputed.
            A ``config.yaml`` edited since the run started is refused (naming the changed keys) unless ``force``.
        progress: a progress bar; estimate: print the time estimate before the work starts.
        log: called with the line naming the run directory.
        device: with ``resume``, run the rest on this device (``cpu``, ``cuda``, ``cuda:N``); the one key
            that may change on resume, as the numbers agree across devices to rounding.

    Raises:
        ValueError / FileNotFoundError: a bad config or run directory, before any compute.
        DirectoryInUse: another process holds the run directory.
        StorageError: a file could not be written (disk full, read-only); the run is resumable.
        ProbeInterrupted: Ctrl-C or SIGTERM; finished units are kept.
    """
    from lowbit.probe.report import write_probe_report

    if resume is not None:
        run_dir = open_resumed_run(resume, config, run_dir, "probe")
        config = load_config(ProbeConfig, run_dir / "config.yaml")
        check_resume_config(run_dir, config, started_config(run_dir), "probe", changeable=CHANGEABLE_ON_RESUME, force=force)
        if device is not None:
            config = dataclasses.replace(config, device=device)
        prepare(config)
        check_trackers(config)
    else:
        config = config if config is not None else ProbeConfig(name="probe-default")
        check_run_name(config.name, "name")
        check_threads(config.threads, "threads")
        prepare(config)  # every check before the run directory exists or any compute starts
        check_trackers(config)
        check_writable(run_dir if run_dir is not None else runs_dir)
        if run_dir is None:
            run_dir = create_run_dir(config.name, runs_dir)
            hold_run_lock(run_dir)
        else:
            run_dir = prepare_run_dir(run_dir)
            hold_run_lock(run_dir)
            if (run_dir / RECORDS_FILE).exists():
                raise ValueError(f"{str(run_dir)!r} already holds probe records; resume it or choose another run_dir")
        write_run_files(run_dir, config)
    if log is not None:
        log(f"writing to {run_dir}")

    trackers = open_probe_trackers(config, run_dir, resumed=resume is not None)

    def log_unit(position: int, records: list) -> None:
        trackers.log_scalars(unit_scalars(records), position)
        trackers.flush()  # a unit takes seconds or more: its point on disk now, not 10 events later

    with sigterm_as_interrupt():
        try:
            run_grid(config, run_dir, progress=progress, estimate=estimate, after_unit=log_unit if trackers else None,
                     replay_done=resume is not None)  # every recorded unit again: a kill may have cut one's logging
        except KeyboardInterrupt:
            if (run_dir / RECORDS_FILE).exists():
                write_probe_report(run_dir)
            with contextlib.suppress(Exception):
                finish(trackers, run_dir, "interrupted")
            raise ProbeInterrupted(run_dir) from None
        except BaseException:
            with contextlib.suppress(Exception):
                finish(trackers, run_dir, "failed")
            raise
    finish(trackers, run_dir, "complete")
    write_probe_report(run_dir)
    return run_dir
