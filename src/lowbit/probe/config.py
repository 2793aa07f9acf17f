"""The probe's config: one table of every setting, with its unit and why.

An experiment is the grid ``dims × sweep × inits × batches``; at every point each
estimator in ``estimators`` proposes a step and the measurements in ``measure``
are taken. The defaults are the built-in ``lowbit probe`` run: every estimator
family on the teacher-student toy, small enough to finish in minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

from lowbit.devices import check_device_name
from lowbit.grid import axis, cartesian
from lowbit.probe.network import NetworkConfig
from lowbit.registry import nearest
from lowbit.tracking.base import MLflowConfig


@dataclass
class TaskConfig:
    """The teacher-student toy of the notes (BinaryDuo setting)."""

    depth: int = 3  # layers of the toy MLP; the notes use 3
    # Student activation: a quantizer name, {name: ..., **params} (e.g. {name: uniform_act, levels: 3}),
    # or "none" for the full-precision control.
    act: Union[str, Dict[str, Any]] = "ste"
    # The student's weights: real, or binary = XNOR weights alpha_i * sign(W_ij), alpha_i = mean_j |W_ij|,
    # on latent float weights (the notes' networks binarise both; lowbit.probe.toy_binary). Same teacher either way.
    weights: Literal["real", "binary"] = "real"
    batch_size: int = 4096  # samples per measured batch; notes: 160000 (GPU), 16000 in later notes
    pretrain_steps: int = 0  # notes 2021-05-17: 2000 steps of 16000 samples, then NES failed
    pretrain_batch_size: int = 1024
    pretrain_lr: float = 1e-3  # Adam step size for the pretraining
    pretrain_optimizer: str = "adam"

    def __post_init__(self) -> None:
        for name in ("depth", "batch_size", "pretrain_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"task.pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if isinstance(self.act, dict) and "name" not in self.act:
            raise ValueError(f"task.act as a mapping needs a 'name' key, e.g. {{name: uniform_act, levels: 3}}, got {self.act}")
        if self.pretrain_lr <= 0:
            raise ValueError(f"task.pretrain_lr must be > 0, got {self.pretrain_lr}")


@dataclass
class LrGridConfig:
    """The line search: ΔL(lr) = L(w) − L(w − lr·ĝ) on ``num`` lrs in [min, max]."""

    min: float = 1e-3
    # With a unit-norm direction lr is the distance moved; ‖w‖ of the toy is about √dim, so
    # up to 10 shows where every curve turns over (the notes' budget: 0.1, see budget:).
    max: float = 10.0
    num: int = 1000  # the notes scanned 1e-5..1e-1 at 1e-5 (10^4 points): set num=10000, scale=linear
    scale: Literal["log", "linear"] = "log"
    # Bracket the optimum: while the best lr sits on an edge of the grid, add a decade beyond it (at the
    # grid's density; never past the common budget, nor below 1e-12 or above 1e6), then refine between
    # the best lr's neighbours. `measure.lr_grid: auto` is this with the default min/max/num.
    auto: bool = False

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"measure.lr_grid.num must be >= 1 (an lr grid cannot be empty), got {self.num}")
        if not 0 < self.min <= self.max:
            raise ValueError(f"measure.lr_grid needs 0 < min <= max, got min={self.min}, max={self.max}")


@dataclass
class BudgetConfig:
    """A common step budget: every method's step is kept inside ‖Δw‖_norm <= radius."""

    radius: float = 0.1  # notes 2021-06-16: ε = 0.1 for DG, STE and CDG alike
    norm: Literal["l2", "l1", "linf"] = "l2"

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError(f"budget.radius must be > 0, got {self.radius}")


@dataclass
class MeasureConfig:
    # The line search's lrs; "auto" = the default grid with `auto: true` (widened until it brackets the optimum).
    lr_grid: Union[LrGridConfig, Literal["auto"]] = field(default_factory=LrGridConfig)
    quick_lr: float = 0.1  # notes 2021-04-30 "quick check": one fixed lr
    normalize: Literal["global", "per_layer", "none"] = "global"  # unit-normalise ĝ before stepping
    reference: Optional[str] = "cdg"  # label of the estimator others are compared with (cosine); null = none
    curve_points: int = 60  # ΔL–lr points kept per curve in records.csv (the best is found on the full grid)
    compare: List[List[str]] = field(default_factory=list)  # pairs [a, b]: records (L_a − L_b) / L_a

    def __post_init__(self) -> None:
        if self.lr_grid == "auto":
            self.lr_grid = LrGridConfig(auto=True)
        if self.quick_lr <= 0:
            raise ValueError(f"measure.quick_lr must be > 0, got {self.quick_lr}")
        if self.curve_points < 2:
            raise ValueError(f"measure.curve_points must be >= 2, got {self.curve_points}")
        for pair in self.compare:
            if len(pair) != 2:
                raise ValueError(f"measure.compare entries are pairs [a, b] of estimator labels, got {pair}")


@dataclass
class ProbeGridConfig:
    dims: List[int] = field(default_factory=lambda: [4, 8, 16, 32])  # notes: 2..32, later 64
    inits: int = 2  # independent teacher/student initialisations; notes: 3
    batches: int = 2  # batches measured per init; notes: 10
    # Toy: "all" or layer indices, e.g. [0] = first layer only. Network: layer names, e.g.
    # [layer1.0.conv1, layer4.1.conv2] (module or parameter names; `lowbit models xnor_resnet18 width=8` lists them), or "all".
    layers: Union[str, List[Union[int, str]]] = "all"
    sweep: Dict[str, List[Any]] = field(default_factory=dict)  # task keys to vary, e.g. {act: [ste, none]}
    # Measure only the units whose coordinates are listed, e.g. {dim: [8], init: [0]}: a part of the grid
    # with the whole grid's unit ids and seeds (lowbit sweep splits a probe this way). Coordinates: dim (toy)
    # or layer (network; "stats" = the statistics unit), init, batch and the sweep keys. {} = every unit.
    select: Dict[str, List[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("probe.dims must list at least one dimension")
        bad = [d for d in self.dims if d < 1]
        if bad:
            raise ValueError(f"probe.dims must all be >= 1, got {bad}")
        if self.inits < 1 or self.batches < 1:
            raise ValueError(f"probe.inits and probe.batches must be >= 1, got {self.inits} and {self.batches}")
        if isinstance(self.layers, str) and self.layers != "all":
            self.layers = [self.layers]  # one layer name
        if isinstance(self.layers, list) and not self.layers:
            raise ValueError("probe.layers must name at least one layer (or be 'all')")

    def check_select(self, position: str) -> None:
        """``select`` names coordinates of this grid, each with a non-empty list of values."""
        valid = [position, *self.sweep, "init", "batch"]
        _check_grid_keys("probe.select", self.select, valid, "a coordinate of this grid", "coordinates")

    def check_sweep(self, valid: List[str], section: str) -> None:
        """Every swept key must be a setting of ``section`` (``task`` or ``network``)."""
        _check_grid_keys("probe.sweep", self.sweep, valid, f"a {section} setting", "valid")


def _check_grid_keys(name: str, entries: Dict[str, Any], valid: List[str], what: str, listed: str) -> None:
    """Each key of ``entries`` is in ``valid`` (else the nearest is named) and maps to a non-empty list."""
    for key, values in entries.items():
        if key not in valid:
            hint = nearest(key, valid)
            raise ValueError(
                f"{name} key {key!r} is not {what}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" ({listed}: {', '.join(valid)})"
            )
        if not isinstance(values, list) or not values:
            raise ValueError(f"{name}.{key} must be a non-empty list of values, got {values!r}")


@dataclass
class StatsConfig:
    """STE gradient statistics over many mini-batches (network probes): per layer and surrogate,
    the mean gradient, its variance across mini-batches and their ratio (notes 2021-06-16:
    "look at the STE's variance and mean on ResNet")."""

    batches: int = 0  # mini-batches drawn (i.i.d., each without replacement); 0 = off
    batch_size: int = 64  # images per mini-batch: a training step's batch
    # Labels of the STE estimators to measure; null = every estimator with name ste.
    estimators: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if self.batches < 0 or self.batches == 1:
            raise ValueError(f"stats.batches must be 0 (off) or >= 2 (a variance needs two), got {self.batches}")
        if self.batch_size < 1:
            raise ValueError(f"stats.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TrajectoryConfig:
    """Loss curves of iterative methods from each unit's weights under one budget of loss evaluations
    (lowbit.probe.trajectory): the notes' iterative NES beside STE-SGD and multi-step STE."""

    evaluations: int = 0  # loss evaluations per method and unit; 0 = off
    points: int = 40  # curve points per method, evenly spaced in evaluations
    heldout: bool = True  # also the loss on a held-out batch at every point
    # Each entry: {name: <estimator>, label, **params} as in `estimators`, plus how it steps: lr (gradient
    # estimators: the step size, required), optimizer (sgd | sgdm | adam), normalize (unit-normalise ĝ first).
    methods: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.evaluations < 0:
            raise ValueError(f"trajectory.evaluations must be >= 0 (0: off), got {self.evaluations}")
        if self.points < 1:
            raise ValueError(f"trajectory.points must be >= 1, got {self.points}")
        if self.evaluations and not self.methods:
            raise ValueError("trajectory.evaluations is set but trajectory.methods is empty; list the methods to run")


def _default_estimators() -> List[Dict[str, Any]]:
    return [
        {"name": "cdg", "eps": 0.1},
        {"name": "ste", "surrogate": "ste"},
        {"name": "ste", "surrogate": "ste_clipped"},
        {"name": "ste", "surrogate": "swish_sign"},
        {"name": "ste", "surrogate": "approx_sign"},
        {"name": "ste", "surrogate": "vste"},
        {"name": "nes", "population": [500, 5000], "sigma": 0.1},
        {"name": "dg", "budget": 0.1, "steps": [1, 4]},
        {"name": "multistep_ste", "optimizer": "sgdm", "steps": 10, "lr": 0.02, "budget": 0.1},
    ]


@dataclass
class ProbeConfig:
    """Everything a probe run needs; saved resolved as ``config.yaml`` in the run directory."""

    name: str = "probe"
    seed: int = 0  # base seed: init i uses seed + i for the task; estimators derive theirs from the unit
    task: TaskConfig = field(default_factory=TaskConfig)
    probe: ProbeGridConfig = field(default_factory=ProbeGridConfig)
    # Each entry: {name: <estimator>, label: <optional>, **params}; a list-valued parameter
    # expands into one estimator per value (e.g. population: [500, 5000]).
    estimators: List[Dict[str, Any]] = field(default_factory=_default_estimators)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    budget: Optional[BudgetConfig] = None  # a common budget for every method (notes: 0.1); null = none
    threads: int = 0  # torch threads; 0 = torch's default (all cores)
    # cpu | cuda | cuda:N: where the tasks, estimators and line searches run. Random draws are made on the CPU
    # and moved, so a GPU run measures the same members and batches as a CPU run (numbers agree to rounding)
    device: str = "cpu"
    allow_tf32: bool = False  # CUDA matmuls in TensorFloat-32 (faster, ~3 decimal digits); off: the exact fp32 the fast paths claim
    # Set to probe a zoo model on real images instead of the toy (lowbit.probe.network); the grid is
    # then sweep x inits x layers x batches, and probe.dims and task are unused.
    network: Optional[NetworkConfig] = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)
    # experiment trackers for the per-unit numbers (lowbit.probe.tracking, docs/probe.md): tensorboard | mlflow
    # (the lowbit[mlflow] extra) | any registered name; []: records.csv and the report only. Missing packages of
    # a named tracker are an error before any compute
    trackers: List[str] = field(default_factory=list)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)  # {tracking_uri, experiment} of the mlflow tracker

    def __post_init__(self) -> None:
        check_device_name(self.device)
        self.probe.check_select("dim" if self.network is None else "layer")
        if self.network is None:
            self.probe.check_sweep(list(TaskConfig.__dataclass_fields__), "task")
            if self.stats.batches:
                raise ValueError("stats (STE gradient statistics over mini-batches) needs a network: section")
        elif self.trajectory.evaluations:
            raise ValueError("trajectory (loss curves under a budget) runs on the toy task; remove the network: section or set trajectory.evaluations: 0")
        else:
            self.probe.check_sweep(list(NetworkConfig.__dataclass_fields__), "network")
            if self.probe.layers != "all" and any(not isinstance(x, str) for x in self.probe.layers):
                raise ValueError(f"probe.layers of a network are layer names like layer1.0.conv1, got {self.probe.layers}")
            if self.network.checkpoint is not None and self.probe.inits > 1:
                raise ValueError(
                    f"network.checkpoint fixes the weights, so probe.inits must be 1, got {self.probe.inits}"
                )


@dataclass(frozen=True)
class EstimatorSpec:
    label: str
    name: str
    params: Dict[str, Any]


def expand_estimators(entries: List[Dict[str, Any]]) -> List[EstimatorSpec]:
    """Expand list-valued parameters into one spec each and give every spec a unique label.

    ``{name: nes, population: [500, 5000]}`` → ``nes(population=500)``, ``nes(population=5000)``.
    The default label is the estimator name plus the parameters that tell it apart
    (``ste(surrogate=swish_sign)``); default labels that would clash show every
    parameter (``ste(surrogate=ste_clipped,clip=0.2)``).
    """
    specs: List[EstimatorSpec] = []
    defaults = set()  # labels made here (not given by the user)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"estimators[{index}] must be a mapping with a 'name' key, got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name")
        label = entry.pop("label", None)
        swept = {k: v for k, v in entry.items() if isinstance(v, list)}
        fixed = {k: v for k, v in entry.items() if not isinstance(v, list)}
        combos = cartesian([axis(key, values) for key, values in swept.items()])
        for combo in combos:
            params = {**fixed, **combo}
            if label is not None:
                this_label = label if not combo else f"{label}({_kv(combo)})"
            else:
                shown = {**({"surrogate": fixed["surrogate"]} if "surrogate" in fixed else {}), **combo}
                this_label = f"{name}({_kv(shown)})" if shown else name
                defaults.add(this_label)
            specs.append(EstimatorSpec(this_label, name, params))
    labels = [s.label for s in specs]
    clashing = {x for x in labels if labels.count(x) > 1}
    # Default labels that clash (e.g. two ste_clipped with different clip) show every parameter instead.
    specs = [
        EstimatorSpec(f"{s.name}({_kv(s.params)})", s.name, s.params) if s.label in clashing and s.label in defaults else s
        for s in specs
    ]
    labels = [s.label for s in specs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"estimator labels must be unique; give these a 'label': {', '.join(duplicates)}")
    return specs


def _kv(params: Dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def act_label(act: Union[str, Dict[str, Any]]) -> str:
    """``"ste"`` or ``{name: uniform_act, levels: 3}`` → ``"uniform_act(levels=3)"``."""
    if isinstance(act, dict):
        params = {k: v for k, v in act.items() if k != "name"}
        return f"{act['name']}({_kv(params)})" if params else str(act["name"])
    return str(act)


def task_conditions(config: ProbeConfig) -> List[Dict[str, Any]]:
    """Every combination of the swept task settings (one empty dict when nothing is swept)."""
    return cartesian([axis(key, values) for key, values in config.probe.sweep.items()])
