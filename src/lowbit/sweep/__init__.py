"""Grids of runs above every command: ``lowbit sweep SPEC``.

A spec (:mod:`lowbit.sweep.spec`) names a command, a base config and a grid;
every cell (:mod:`lowbit.sweep.cells`) is exactly the run the command would
make by hand, validated before any cell starts; cells run on local worker
processes or as Ray tasks (:mod:`lowbit.sweep.executors`); the sweep directory
(:mod:`lowbit.sweep.state`) records each cell's status, and the report
(:mod:`lowbit.sweep.report`) builds the notes' cross-run tables and overlay
figures from the cells' own files.

    >>> spec = load_sweep_spec("configs/sweep-xnor-width-wd-digits.yaml")  # doctest: +SKIP
    >>> sweep_dir = run_sweep(spec, workers=2)                               # doctest: +SKIP
"""

from lowbit.sweep.cells import Cell, SweepConfigError, expand_cells
from lowbit.sweep.driver import SweepInterrupted, load_sweep_spec, plan_sweep, run_sweep
from lowbit.sweep.report import write_sweep_report
from lowbit.sweep.spec import ResourcesSpec, SweepSpec, TableSpec
from lowbit.sweep.state import is_sweep_dir, read_cells

__all__ = [
    "Cell",
    "ResourcesSpec",
    "SweepConfigError",
    "SweepInterrupted",
    "SweepSpec",
    "TableSpec",
    "expand_cells",
    "is_sweep_dir",
    "load_sweep_spec",
    "plan_sweep",
    "read_cells",
    "run_sweep",
    "write_sweep_report",
]
