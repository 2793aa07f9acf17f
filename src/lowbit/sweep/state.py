"""The sweep directory: ``sweep.yaml``, ``cells.csv`` and the cells' run directories.

::

    runs/sweep-<name>-<time>/
      sweep.yaml     the resolved spec, the base config's path and its contents at the start
      meta.yaml      versions, commit, machine (as every run directory)
      cells.csv      one row per cell: id, label, status, attempts, seconds, run_dir, error, host, reproduce
      cells/<id>-<label>/   each cell's own run directory, exactly as `lowbit <command>` makes it
      report.md, plots/, tables/

``cells.csv`` is rewritten atomically by the driver alone (it holds the
directory's lock) after every change of status, so a reader never sees a torn
file and a killed driver leaves the last state.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from lowbit.config import from_dict, to_dict
from lowbit.runs import atomic_write_text
from lowbit.sweep.spec import SweepSpec

PathLike = Union[str, Path]
SWEEP_FILE = "sweep.yaml"
CELLS_FILE = "cells.csv"
CELLS_DIR = "cells"
SUMMARY_FILE = "summary.yaml"

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class CellState:
    """One row of ``cells.csv``."""

    cell: str
    label: str
    varied: str = "{}"  # JSON of what tells the cell apart, e.g. {"model.width": 16, "seed": 1}
    status: str = QUEUED
    attempts: int = 0
    seconds: float = 0.0
    run_dir: str = ""  # relative to the sweep directory
    error: str = ""
    host: str = ""
    reproduce: str = ""


    @property
    def values(self) -> Dict[str, Any]:
        return json.loads(self.varied or "{}")


def is_sweep_dir(path: PathLike) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def write_sweep_file(sweep_dir: Path, spec: SweepSpec, base_file: Optional[str], base_config: Dict[str, Any], threads: int) -> None:
    data = {"spec": to_dict(spec), "base_file": base_file, "base_config": base_config, "threads": threads}
    atomic_write_text(sweep_dir / SWEEP_FILE, yaml.safe_dump(data, sort_keys=False))


def read_sweep_file(sweep_dir: PathLike) -> Tuple[SweepSpec, Optional[str], Dict[str, Any], int]:
    """(spec, base file, base config data, threads per cell) of a sweep directory."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} has no {SWEEP_FILE}: is it a sweep directory of `lowbit sweep`?")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{str(path)!r} is not valid YAML ({error}); it is written by lowbit sweep, do not edit it") from error
    if not isinstance(data, dict) or "spec" not in data:
        raise ValueError(f"{str(path)!r} is not a sweep file (no spec: key)")
    return from_dict(SweepSpec, data["spec"]), data.get("base_file"), data.get("base_config") or {}, int(data.get("threads") or 1)


def write_cells(sweep_dir: Path, states: List[CellState]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(CellState)])
    writer.writeheader()
    for state in states:
        writer.writerow({**asdict(state), "seconds": f"{state.seconds:.3f}"})
    atomic_write_text(sweep_dir / CELLS_FILE, buffer.getvalue())


def read_cells(sweep_dir: PathLike) -> List[CellState]:
    path = Path(sweep_dir) / CELLS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {f.name for f in fields(CellState)}
    states = []
    for row in rows:
        row = {k: v for k, v in row.items() if k in names}
        states.append(CellState(**{**row, "attempts": int(row.get("attempts") or 0), "seconds": float(row.get("seconds") or 0.0)}))
    return states


def write_summary(sweep_dir: Path, summary: Dict[str, Any]) -> None:
    atomic_write_text(sweep_dir / SUMMARY_FILE, yaml.safe_dump(summary, sort_keys=False))


def read_summary(sweep_dir: PathLike) -> Dict[str, Any]:
    path = Path(sweep_dir) / SUMMARY_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
