"""The sweep spec: which command, which base config, which grid, where to run, what to tabulate.

A spec is a YAML file validated like every other lowbit config
(:mod:`lowbit.config`: unknown keys name the nearest valid one)::

    name: xnor-width-wd
    command: train                        # train | probe | analyze <analysis>
    base: train-digits-xnor               # a config file or a built-in name; null: the command's default
    overrides: [run.epochs=5]             # applied to every cell (key=value strings or a mapping)
    grid:                                 # the cartesian product over dotted keys
      model.width: [8, 16, 32]
      optim.weight_decay: [0.0, 1.0e-5]
    zip: {}                               # keys varied together (equal-length lists), crossed with the grid
    seeds: [0, 1, 2]                      # repeats; sets run.seed (train), seed (probe) or the analysis' seed
    tables:
      - {rows: model.width, cols: optim.weight_decay, value: test_acc, reduce: last10}

Cells are the points of ``grid × zip × seeds`` (the first grid key outermost,
seeds innermost); a probe can further be ``split`` along its own axes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

from lowbit.registry import nearest

COMMANDS = ("train", "probe", "analyze")
PROBE_AXES = {"dims": "dim", "dim": "dim", "inits": "init", "init": "init", "batches": "batch", "batch": "batch",
              "layers": "layer", "layer": "layer"}  # split names -> unit coordinates
REDUCES = ("last", "first", "mean", "min", "max", "best")  # and lastN, e.g. last10
_LAST_N = re.compile(r"^last(\d+)$")


@dataclass
class TableSpec:
    """One table of the sweep report: ``value`` by ``rows`` (and ``cols``), mean ± s.e. over seeds.

    ``rows`` / ``cols``: dotted config keys (``model.width``) or, for probe
    sweeps, record columns (``estimator``, ``dim``, ``probed_layer``).
    ``value``: a training metric (``test_acc``, ``train_loss``, ``lr``; ``val_acc`` is
    ``test_acc``, as in the notes), a summary figure (``wall_seconds``,
    ``param_mb``, ``best_test_acc``), a probe metric (``best_decrease``,
    ``cosine``), or an analysis summary key. ``reduce`` turns a training
    metric's per-epoch values into one: ``last``, ``lastN`` (mean of the last N
    epochs, the notes' "last 10 epochs"), ``mean``, ``min``, ``max``, ``best``
    (max, min for losses), ``first``.
    """

    rows: Union[str, List[str]]
    value: str
    cols: Optional[Union[str, List[str]]] = None
    reduce: str = "last"
    title: Optional[str] = None

    def __post_init__(self) -> None:
        self.rows = [self.rows] if isinstance(self.rows, str) else list(self.rows)
        self.cols = [] if self.cols is None else ([self.cols] if isinstance(self.cols, str) else list(self.cols))
        if not self.rows:
            raise ValueError("a table needs at least one rows key")
        if self.reduce not in REDUCES and not _LAST_N.match(self.reduce):
            hint = nearest(self.reduce, REDUCES + ("last10",))
            raise ValueError(
                f"table reduce {self.reduce!r} is not one of {', '.join(REDUCES)} or lastN (e.g. last10)"
                + (f"; did you mean {hint!r}?" if hint else "")
            )

    @property
    def last_n(self) -> Optional[int]:
        match = _LAST_N.match(self.reduce)
        return int(match.group(1)) if match else None


@dataclass
class ResourcesSpec:
    """What each cell asks: of a Ray cluster, or (GPUs) of the local executor's machine."""

    num_cpus: float = 1.0  # CPUs reserved per cell (Ray); also its torch threads unless `threads` is set
    # GPUs per cell (a cell on a GPU also needs run.device=cuda / device=cuda). Ray assigns them; the local
    # executor gives each running cell its own (CUDA_VISIBLE_DEVICES): a whole number, or 1/k (k cells per GPU)
    num_gpus: float = 0.0
    gpu_ids: Optional[List[int]] = None  # local executor: the GPUs it hands out (default: every one torch sees)

    def __post_init__(self) -> None:
        if self.num_cpus <= 0:
            raise ValueError(f"resources.num_cpus must be > 0, got {self.num_cpus}")
        if self.num_gpus < 0:
            raise ValueError(f"resources.num_gpus must be >= 0, got {self.num_gpus}")
        if self.gpu_ids is not None and (not self.gpu_ids or len(set(self.gpu_ids)) != len(self.gpu_ids)
                                         or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.gpu_ids)):
            raise ValueError(f"resources.gpu_ids must be distinct GPU indices >= 0, got {self.gpu_ids}")

    def gpu_slots(self, visible: int) -> List[str]:
        """The local executor's slots, one per cell that may run at once: each a CUDA_VISIBLE_DEVICES value.

        ``visible``: how many GPUs torch sees (used when ``gpu_ids`` is not given). Empty when
        ``num_gpus`` is 0; a ValueError when the GPUs cannot be shared out as asked.
        """
        if self.num_gpus == 0:
            return []
        ids = list(self.gpu_ids) if self.gpu_ids is not None else list(range(visible))
        if not ids:
            raise ValueError(f"resources.num_gpus={self.num_gpus:g} but torch sees no CUDA device here; run the cells "
                             "on the CPU (resources.num_gpus=0) or name the GPUs in resources.gpu_ids")
        if self.num_gpus >= 1:
            per_cell = int(self.num_gpus)
            if per_cell != self.num_gpus or per_cell > len(ids):
                raise ValueError(f"resources.num_gpus={self.num_gpus:g} per cell: a whole number of GPUs up to the "
                                 f"{len(ids)} there are ({ids}), or 1/k to run k cells on each")
            return [",".join(map(str, ids[i:i + per_cell])) for i in range(0, len(ids) - per_cell + 1, per_cell)]
        share = round(1.0 / self.num_gpus)
        if abs(share * self.num_gpus - 1.0) > 1e-9:
            raise ValueError(f"resources.num_gpus={self.num_gpus:g}: a fraction of a GPU must be 1/k (0.5, 0.25, ...)")
        return [str(i) for _ in range(share) for i in ids]  # GPU by GPU: the first cells on different GPUs


@dataclass
class SweepSpec:
    """Everything a sweep needs; saved resolved as ``sweep.yaml`` in the sweep directory."""

    name: str = "sweep"
    command: str = "train"  # train | probe | analyze bn-smoothness|landscape|attribution|weights
    base: Optional[str] = None  # a config file (relative to the spec's folder or the working dir) or a built-in name
    overrides: Union[List[str], Dict[str, Any]] = field(default_factory=list)  # for every cell
    grid: Dict[str, List[Any]] = field(default_factory=dict)  # dotted key -> values; cartesian product
    zip: Union[Dict[str, List[Any]], List[Dict[str, List[Any]]]] = field(default_factory=dict)  # varied together
    seeds: Optional[List[int]] = None  # repeats of every cell, innermost
    seed_key: Optional[str] = None  # the key seeds set; null: run.seed (train), seed (probe), the analysis' own
    # probe only: split each cell along the probe's own axes (dims, inits, batches, layers, or probe.sweep keys);
    # the cells' records put together are exactly the single run's
    split: List[str] = field(default_factory=list)
    executor: Literal["local", "ray"] = "local"
    workers: Optional[int] = None  # local: worker processes; null: the number of CPU cores
    threads: Optional[int] = None  # torch threads per cell; null: cores / workers (local), num_cpus (ray)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    retries: int = 1  # a cell whose worker dies (SIGKILL, out of memory) is run again this many times
    address: Optional[str] = None  # ray: a running cluster (`ray start --head`), e.g. 10.0.0.1:6379 or auto
    storage: Literal["ship", "shared"] = "ship"  # ray: ship each cell's files back with its result, or
    # write them straight into the sweep directory (which every worker must then see at the same path)
    table: Optional[TableSpec] = None  # one table (same as a one-item tables list)
    tables: List[TableSpec] = field(default_factory=list)
    curves: List[str] = field(default_factory=lambda: ["train_loss", "test_loss", "test_acc", "lr"])  # train overlays
    # modules imported before the spec and every cell are checked, and by every worker before it builds its cell
    # (added to each cell's plugins): user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        errors: List[str] = []
        words = self.command.split()
        if not words or words[0] not in COMMANDS:
            hint = nearest(words[0] if words else "", COMMANDS)
            errors.append(f"command must be one of {', '.join(COMMANDS)}, got {self.command!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        elif words[0] == "analyze":
            from lowbit.analysis.command import ANALYSES

            if len(words) != 2 or words[1] not in ANALYSES:
                hint = nearest(words[1], ANALYSES) if len(words) == 2 else None
                errors.append(
                    f"command analyze needs one analysis: analyze {' | '.join(ANALYSES)}, got {self.command!r}"
                    + (f"; did you mean 'analyze {hint}'?" if hint else "")
                )
        elif len(words) != 1:
            errors.append(f"command {words[0]} takes no further words, got {self.command!r}")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                errors.append(f"grid.{key} must be a non-empty list of values, got {values!r}")
        self.zip = [self.zip] if isinstance(self.zip, dict) else list(self.zip)
        self.zip = [group for group in self.zip if group]
        for group in self.zip:
            for key, values in group.items():
                if not isinstance(values, list) or not values:
                    errors.append(f"zip.{key} must be a non-empty list of values, got {values!r}")
            if len({len(v) for v in group.values() if isinstance(v, list)}) > 1:
                errors.append("zip: lists varied together must have the same length, got "
                              + ", ".join(f"{k}: {len(v)}" for k, v in group.items()))
        varied = list(self.grid) + [k for group in self.zip for k in group]
        twice = sorted({k for k in varied if varied.count(k) > 1})
        if twice:
            errors.append(f"keys varied twice (in grid and zip): {', '.join(twice)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            errors.append(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.split and words and words[0] != "probe":
            errors.append(f"split divides a probe along its own axes; command {self.command!r} has none")
        if self.workers is not None and self.workers < 1:
            errors.append(f"workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            errors.append(f"threads must be >= 1, got {self.threads}")
        if self.retries < 0:
            errors.append(f"retries must be >= 0, got {self.retries}")
        if self.table is not None:
            self.tables = [self.table, *self.tables]
            self.table = None
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def command_name(self) -> str:
        """``train``, ``probe`` or ``analyze``."""
        return self.command.split()[0]

    @property
    def varied_keys(self) -> List[str]:
        """Every key the grid, zip and seeds vary, in cell-label order."""
        keys = list(self.grid) + [k for group in self.zip for k in group]
        return keys + (["seed"] if self.seeds is not None else [])
