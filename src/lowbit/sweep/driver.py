"""The sweep driver: validate every cell, make the sweep directory, run the cells, report.

``run_sweep(spec)`` is ``lowbit sweep SPEC``. Order of work:

1. resolve the base config and expand the grid into cells, each validated the
   way its command validates it (nothing is written if any cell is bad);
2. create ``runs/sweep-<name>-<time>/`` and hold its lock (a second driver on
   the same directory refuses), write ``sweep.yaml`` and ``cells.csv``;
3. print the number of cells and, for probes, the time estimate;
4. hand the cells to the executor, at most ``capacity`` at a time; record every
   change of status in ``cells.csv``; a cell that fails is recorded with its
   error and never stops the others; a cell whose worker died is run once more
   (``retries``), then marked failed;
5. write the report. Ctrl-C (or SIGTERM) asks the running cells to stop (a
   training cell saves a checkpoint, a probe keeps its records), marks them
   queued and exits; ``--resume`` runs only what is not done.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from lowbit.config import ConfigError, find_config, format_override, from_dict, parse_overrides, read_yaml, to_dict
from lowbit.files import remove_temp_files
from lowbit.runs import DirectoryLock, atomic_write_text, create_run_dir, environment_info
from lowbit.signals import sigterm_as_interrupt
from lowbit.sweep.cells import Cell, expand_cells, reproduce_command
from lowbit.sweep.commands import CommandAdapter, get_adapter
from lowbit.sweep.executors import LocalExecutor, RayExecutor, available_cores
from lowbit.sweep.spec import SweepSpec
from lowbit.sweep.state import (
    CELLS_DIR,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    CellState,
    read_cells,
    read_sweep_file,
    write_cells,
    write_summary,
    write_sweep_file,
)
from lowbit.sweep.worker import INTERRUPTED, KILLED, CellJob, CellOutcome, faults_from_env, pack, unpack

PathLike = Union[str, Path]
Log = Callable[[str], None]
# override keys that change the spec (its grid, its seeds, what each cell asks for); any other key is for every cell
SPEC_KEYS_FROM_CLI = ("grid.", "zip.", "seeds", "resources.")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: finished cells are kept; ``lowbit sweep --resume sweep_dir`` runs the rest."""

    def __init__(self, sweep_dir: Path):
        super().__init__(str(sweep_dir))
        self.sweep_dir = sweep_dir


def load_sweep_spec(path: PathLike, overrides: Sequence[str] = ()) -> SweepSpec:
    """The spec file plus ``key=value`` overrides.

    ``grid.KEY=[...]``, ``zip.KEY=[...]`` and ``seeds=[...]`` change the spec's
    grid, ``resources.KEY=...`` what each cell asks for (``resources.num_gpus=1``);
    every other override applies to every cell's config (it is appended to
    the spec's ``overrides``), as it would on the command line of the command.
    """
    data = read_yaml(path)
    if not data:
        raise ConfigError(f"sweep spec {str(path)!r} is empty: it needs at least command: and grid:")
    cell_overrides: List[str] = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(SPEC_KEYS_FROM_CLI):
            cell_overrides.append(item)
            continue
        value = parse_overrides([f"value={item.partition('=')[2]}"])["value"]
        if key == "seeds":
            data["seeds"] = value
        else:
            section, _, dotted = key.partition(".")
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r}: {section} of the spec is not a mapping")
            target[dotted] = value
    if cell_overrides:
        existing = data.get("overrides") or []
        if isinstance(existing, dict):
            existing = [format_override(k, v) for k, v in existing.items()]
        data["overrides"] = list(existing) + cell_overrides
    return from_dict(SweepSpec, data)


def resolve_base(spec: SweepSpec, adapter: CommandAdapter, spec_dir: PathLike) -> Tuple[Optional[str], Dict[str, Any]]:
    """(the base file as found, its data); no base: the command's built-in default."""
    if spec.base is None:
        return None, adapter.default_base()
    path = find_config(spec.base, adapter.config_prefixes, near=[spec_dir])
    return str(path), read_yaml(path)


def plan_sweep(spec: SweepSpec, spec_dir: PathLike = ".") -> Tuple[CommandAdapter, Optional[str], Dict[str, Any], List[Cell]]:
    """Everything checked before any work: the adapter, the base and every cell (``SweepConfigError``)."""
    adapter = get_adapter(spec.command)
    base_file, base_config = resolve_base(spec, adapter, spec_dir)
    return adapter, base_file, base_config, expand_cells(spec, adapter, base_config)


def run_sweep(
    spec: Optional[SweepSpec] = None,
    *,
    spec_dir: PathLike = ".",
    resume: Optional[PathLike] = None,
    runs_dir: PathLike = "runs",
    executor: Optional[str] = None,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    progress: bool = True,
    log: Optional[Log] = None,
) -> Path:
    """Run every cell of ``spec`` (or the unfinished cells of the sweep ``resume``); return the sweep directory.

    ``executor``, ``workers`` and ``address`` override the spec's (also on resume:
    where cells run does not change their numbers; their thread count does, so it
    stays as the sweep started).
    """
    from lowbit.sweep.report import write_sweep_report

    log = log or (lambda line: print(f"lowbit sweep: {line}", file=sys.stderr))
    lock: Optional[DirectoryLock] = None
    if resume is not None:
        if spec is not None:
            raise ValueError("resume runs a sweep with its own sweep.yaml: do not pass a spec too")
        sweep_dir = Path(resume)
        spec, base_file, base_config, threads = read_sweep_file(sweep_dir)
        lock = DirectoryLock(sweep_dir, "sweep").acquire()
        # The sweep's own files only: each cell's run directory is cleaned by its own resume, under its own lock.
        remove_temp_files(sweep_dir, recursive=False)
    assert spec is not None
    try:
        spec = _with_cli(spec, executor, workers, address)
        if resume is None:
            adapter, base_file, base_config, cells = plan_sweep(spec, spec_dir)
            threads = _threads(spec)
            runner = _executor(spec, threads)  # a missing Ray is an error before the directory exists
            sweep_dir = create_run_dir(f"sweep-{spec.name}", runs_dir)
            lock = DirectoryLock(sweep_dir, "sweep").acquire()
            write_sweep_file(sweep_dir, spec, base_file, base_config, threads)
            write_run_files_meta(sweep_dir)
            states = [_new_state(cell, adapter, base_file, spec) for cell in cells]
            write_cells(sweep_dir, states)
        else:
            adapter = get_adapter(spec.command)
            cells = expand_cells(spec, adapter, base_config)
            runner = _executor(spec, threads)
            states = _matching_states(sweep_dir, cells, adapter, base_file, spec)
        todo = [cell for cell, state in zip(cells, states) if state.status != DONE]
        log(f"{sweep_dir}: {len(cells)} cells ({len(cells) - len(todo)} done, {len(todo)} to run) on "
            f"{spec.executor} ({_where(spec, runner)}), {threads} torch thread(s) per cell")
        _log_estimate(spec, adapter, todo, runner, log)
        start = time.perf_counter()
        interrupted: Optional[BaseException] = None
        try:
            with sigterm_as_interrupt():
                _drive(spec, adapter, sweep_dir, cells, states, todo, runner, threads, progress)
        except KeyboardInterrupt as stop:
            interrupted = stop
        write_summary(sweep_dir, {
            "executor": spec.executor, "workers": runner.capacity, "threads": threads,
            "wall_seconds_last_session": time.perf_counter() - start,
            "cells": len(cells), "done": sum(s.status == DONE for s in states),
            "failed": sum(s.status == FAILED for s in states),
        })
        write_sweep_report(sweep_dir, locked=True)
        if interrupted is not None:
            raise SweepInterrupted(sweep_dir) from None
        return sweep_dir
    finally:
        if lock is not None:
            lock.release()


def write_run_files_meta(sweep_dir: Path) -> None:
    """``meta.yaml`` of the sweep directory (versions, commit, machine), as in every run directory."""
    import yaml

    atomic_write_text(sweep_dir / "meta.yaml", yaml.safe_dump(environment_info(), sort_keys=False))


def _with_cli(spec: SweepSpec, executor: Optional[str], workers: Optional[int], address: Optional[str]) -> SweepSpec:
    changes = {k: v for k, v in (("executor", executor), ("workers", workers), ("address", address)) if v is not None}
    if not changes:
        return spec
    return from_dict(SweepSpec, {**to_dict(spec), **changes})


def _threads(spec: SweepSpec) -> int:
    """Torch threads per cell: the spec's, else cores / workers (local) or num_cpus (Ray)."""
    if spec.threads is not None:
        return spec.threads
    if spec.executor == "ray":
        return max(1, int(spec.resources.num_cpus))
    return max(1, available_cores() // (spec.workers or available_cores()))


def _executor(spec: SweepSpec, threads: int):
    if spec.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from lowbit.sweep.executors import RAY_INSTALL_HINT

            raise ValueError(f"executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
        if spec.resources.gpu_ids is not None:
            raise ValueError("resources.gpu_ids is for the local executor; Ray gives each cell its GPUs itself "
                             "(resources.num_gpus), from the GPUs its nodes were started with")
        return RayExecutor(spec.address, spec.workers or available_cores(), spec.resources.num_cpus, spec.resources.num_gpus)
    if spec.resources.gpu_ids is not None and spec.resources.num_gpus == 0:
        raise ValueError("resources.gpu_ids is set but resources.num_gpus is 0: set num_gpus (GPUs per cell, or 1/k)")
    import torch

    slots = spec.resources.gpu_slots(torch.cuda.device_count())  # device_count asks NVML: no CUDA context here
    return LocalExecutor(spec.workers or available_cores(), slots)


def _where(spec: SweepSpec, runner: Any) -> str:
    if spec.executor == "ray":
        return f"cluster {spec.address}" if spec.address else "a local Ray instance on 127.0.0.1"
    gpus = f", one GPU slot each ({', '.join(runner.gpu_slots)})" if runner.gpu_slots else ""
    return f"{runner.capacity} worker process(es){gpus}"


def _new_state(cell: Cell, adapter: CommandAdapter, base_file: Optional[str], spec: SweepSpec) -> CellState:
    return CellState(
        cell=cell.id,
        label=cell.label,
        varied=json.dumps(cell.varied),
        run_dir=f"{CELLS_DIR}/{cell.dirname}",
        reproduce=reproduce_command(adapter.words, base_file, cell, spec.overrides),
    )


def _matching_states(sweep_dir: Path, cells: List[Cell], adapter: CommandAdapter, base_file: Optional[str], spec: SweepSpec) -> List[CellState]:
    """The saved state of every cell; running cells of a driver that died count as queued."""
    saved = {s.cell: s for s in read_cells(sweep_dir)}
    states = []
    for cell in cells:
        state = saved.get(cell.id)
        if state is None or state.label != cell.label:
            raise ValueError(
                f"{sweep_dir / 'cells.csv'} does not match sweep.yaml at cell {cell.id} ({cell.label}); "
                "was one of them edited? Start a new sweep instead"
            )
        if state.status == RUNNING:
            state.status = QUEUED
        states.append(state)
    return states


def _log_estimate(spec: SweepSpec, adapter: CommandAdapter, todo: List[Cell], runner: Any, log: Log) -> None:
    if not todo:
        return
    if adapter.words != "probe":
        log(f"{adapter.words} cells give no time estimate before they run; cells.csv records each one's seconds")
        return
    from lowbit.sweep.estimate import estimate_probe_cells

    seconds, left_out = estimate_probe_cells([cell.config for cell in todo])
    extra = f" (leaving out {' and '.join(left_out)})" if left_out else ""
    log(f"estimated {_duration(seconds)} of cell time for {len(todo)} cells{extra}; "
        f"~{_duration(seconds / max(1, min(runner.capacity, len(todo))))} on {runner.capacity} parallel worker(s)")


def _duration(seconds: float) -> str:
    from lowbit.probe.estimate import duration

    return duration(seconds)


def _drive(
    spec: SweepSpec,
    adapter: CommandAdapter,
    sweep_dir: Path,
    cells: List[Cell],
    states: List[CellState],
    todo: List[Cell],
    runner: Any,
    threads: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    by_id = {cell.id: (cell, state) for cell, state in zip(cells, states)}
    faults = faults_from_env()
    ship = spec.executor == "ray" and spec.storage == "ship"
    pending: Deque[Tuple[Cell, int]] = deque((cell, by_id[cell.id][1].attempts + 1) for cell in todo)
    running: Dict[str, int] = {}  # cell id -> attempt
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="sweep", unit="cell", disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def save() -> None:
        write_cells(sweep_dir, states)
        counts = {s: sum(x.status == s for x in states) for s in (RUNNING, DONE, FAILED)}
        bar.set_postfix(running=counts[RUNNING], done=counts[DONE], failed=counts[FAILED])

    def finish(outcome: CellOutcome, stopping: bool = False) -> None:
        cell, state = by_id[outcome.cell_id]
        attempt = running.pop(outcome.cell_id)
        if outcome.files is not None:
            _replace_folder(sweep_dir / state.run_dir, outcome.files)
        state.seconds += outcome.seconds
        state.host = outcome.host or state.host
        if outcome.status == DONE:
            state.status, state.error = DONE, ""
            bar.update(1)
        elif outcome.status in (INTERRUPTED, KILLED) and stopping:
            state.status, state.error = QUEUED, "interrupted"
        elif outcome.status == KILLED and attempt <= spec.retries:
            state.status, state.error = QUEUED, f"{outcome.error}; retrying"
            pending.appendleft((cell, attempt + 1))
        elif outcome.status == INTERRUPTED:
            state.status, state.error = QUEUED, "interrupted"
        else:
            state.status = FAILED
            state.error = outcome.error or "failed"
            if outcome.status == KILLED:
                state.error += f" (attempt {attempt}; no retries left)"
            bar.update(1)
        save()

    runner.start()
    try:
        while pending or running:
            while pending and len(running) < runner.capacity:
                cell, attempt = pending.popleft()
                state = by_id[cell.id][1]
                folder = sweep_dir / state.run_dir
                folder.mkdir(parents=True, exist_ok=True)
                job = CellJob(
                    cell_id=cell.id,
                    command=adapter.words,
                    config=to_dict(cell.config),
                    run_dir=str(folder.resolve()),
                    threads=threads,
                    attempt=attempt,
                    ship=ship,
                    files=pack(folder) if ship and any(folder.iterdir()) else None,
                    kill=attempt in faults.get(cell.id, []),
                )
                state.status, state.attempts, state.error = RUNNING, attempt, ""
                running[cell.id] = attempt
                runner.submit(job)
                save()
            for outcome in runner.wait(timeout=1.0):
                finish(outcome)
    except KeyboardInterrupt:
        bar.write("lowbit sweep: stopping the running cells (a second Ctrl-C is not needed) ...", file=sys.stderr)
        for outcome in runner.stop(grace=120.0):
            if outcome.cell_id in running:
                finish(outcome, stopping=True)
        for cell_id in list(running):  # whatever the executor could not report
            state = by_id[cell_id][1]
            state.status, state.error = QUEUED, "interrupted"
            running.pop(cell_id)
        save()
        raise
    finally:
        bar.close()
        runner.close()


def _replace_folder(folder: Path, files: bytes) -> None:
    """Put a shipped cell folder in place of the local copy."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    unpack(files, folder)
