"""What a probe run measures: its units, their ids and seeds, and every check before compute.

The grid is ``dims × sweep conditions × inits × batches`` on the toy and
``sweep conditions × inits × (layers × batches, then one STE-statistics unit)``
on a network, expanded by :mod:`lowbit.grid` (the same expansion a sweep uses
for its cells). One *unit* is one point of it; its coordinates are::

    toy:      {dim, <swept task keys>, init, batch}
    network:  {<swept network keys>, init, layer, batch}   (layer "stats" for the statistics unit)

``probe.select`` keeps the units whose coordinates are listed (e.g.
``{dim: [8], init: [0]}``): a part of a grid holds exactly the units of the
whole, with the same ids and seeds, so the records of its parts put together
are the records of the whole (this is how ``lowbit sweep`` splits a probe).
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from lowbit.devices import resolve_device
from lowbit.estimators import get_estimator
from lowbit.grid import axis, cartesian, select
from lowbit.plugins import import_plugins
from lowbit.probe.config import EstimatorSpec, ProbeConfig, act_label, expand_estimators, task_conditions
from lowbit.estimators.layers import probe_layers, studied_weight
from lowbit.probe.network import NetworkTask
from lowbit.probe.toy import ToyTask
from lowbit.runs import read_records

STATS = "stats"  # the position of an STE-statistics unit


class Unit(NamedTuple):
    """One grid point: ``position`` is the dim (toy), a layer name or ``STATS`` (network)."""

    position: Any
    condition: Dict[str, Any]
    init: int
    batch: int

    @property
    def id(self) -> str:
        return unit_id(self.position, self.condition, self.init, self.batch)


def unit_id(position: Any, condition: Dict[str, Any], init: int, batch: int) -> str:
    """``dim=8,init=0,batch=1`` (toy), ``layer=layer1.0.conv1,init=0,batch=1`` (network), ``stats,init=0``."""
    extra = "".join(f",{k}={show_value(v)}" for k, v in condition.items())
    if position == STATS:
        return f"stats{extra},init={init}"
    head = f"layer={position}" if isinstance(position, str) else f"dim={position}"
    return f"{head}{extra},init={init},batch={batch}"


def show_value(value: Any) -> Any:
    """A condition value as records show it (an activation mapping as ``uniform_act(levels=3)``)."""
    return act_label(value) if isinstance(value, dict) else value


def stable_seed(*parts: Any) -> int:
    """A seed that depends only on ``parts`` (not on Python's randomised hash)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def unit_coordinates(config: ProbeConfig, layers: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Every unit's coordinates in run order, before ``probe.select``.

    A network's units are ordered condition, init, layer, batch, so that the
    (possibly pretrained) model is built once per condition and init.
    """
    grid = config.probe
    conditions = task_conditions(config)
    if config.network is None:
        return cartesian([axis("dim", grid.dims), conditions, axis("init", range(grid.inits)), axis("batch", range(grid.batches))])
    per_model = cartesian([axis("layer", layers), axis("batch", range(grid.batches))])
    if config.stats.batches:
        per_model.append({"layer": STATS, "batch": 0})
    return cartesian([conditions, axis("init", range(grid.inits)), per_model])


def plan_units(config: ProbeConfig, layers: Sequence[str] = ()) -> List[Unit]:
    """The units this run measures, in run order (``probe.select`` applied)."""
    condition_keys = list(config.probe.sweep)
    points = unit_coordinates(config, layers)
    if config.probe.select:
        points = select(points, config.probe.select)
    head = "dim" if config.network is None else "layer"
    return [Unit(p[head], {k: p[k] for k in condition_keys}, p["init"], p["batch"]) for p in points]


def completed_units(records_path: Path, planned: Optional[Sequence[str]] = None) -> set:
    """Ids of the units whose rows are in ``records_path`` (none if it does not exist).

    Each unit's rows are one committed write (:class:`lowbit.runs.RecordWriter`),
    so a unit listed here is complete. Verified: no unit is recorded twice, and
    with ``planned`` (the ids this config plans) none is foreign to the plan.
    """
    if not records_path.exists():
        return set()
    seen: List[str] = []
    for row in read_records(records_path, text_columns=("unit",)):
        unit = row.get("unit")
        if not seen or seen[-1] != unit:
            seen.append(unit)
    done = set(seen)
    if len(done) != len(seen):
        twice = next(u for u in seen if seen.count(u) > 1)
        raise ValueError(
            f"{str(records_path)!r} holds unit {twice!r} twice: two processes wrote this run at once "
            "(before run locks existed); start the probe again in a new run directory"
        )
    if planned is not None:
        plan = set(planned)
        foreign = [u for u in seen if u not in plan]
        if foreign:
            raise ValueError(
                f"{str(records_path)!r} holds {len(foreign)} unit(s) this config does not plan (first: {foreign[0]!r}): "
                "config.yaml was changed since they were measured; undo the change or start a new run"
            )
    return done


def prepare(config: ProbeConfig) -> List[EstimatorSpec]:
    """Check everything that can be checked before any compute; return the estimator specs.

    Builds every estimator once (their constructors validate names and values),
    checks the reference and comparison labels, the layers and the activation,
    and that ``probe.select`` keeps at least one unit.
    """
    import_plugins(config.plugins, "plugins: of the config")  # a config built in Python: its modules first
    specs = expand_estimators(config.estimators)
    if config.budget is not None:
        specs = [_with_budget(spec, config.budget.radius, config.budget.norm) for spec in specs]
    errors = []
    try:
        resolve_device(config.device)  # no such device here: one line, before any compute
    except ValueError as error:
        errors.append(str(error))
    for spec in specs:
        try:
            get_estimator(spec.name, **spec.params)
        except (ValueError, TypeError, KeyError) as error:
            errors.append(f"estimator {spec.label!r}: {error}")
    labels = [s.label for s in specs]
    if config.measure.reference is not None and config.measure.reference not in labels:
        errors.append(
            f"measure.reference {config.measure.reference!r} is not an estimator label (labels: {', '.join(labels)}); "
            "set it to one of them or to null"
        )
    for a, b in config.measure.compare:
        for label in (a, b):
            if label not in labels:
                errors.append(f"measure.compare names {label!r}, which is not an estimator label ({', '.join(labels)})")
    layers = config.probe.layers
    if config.network is None and layers != "all":
        bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < config.task.depth]
        if bad:
            errors.append(f"probe.layers {bad} do not exist: the toy MLP has layers 0..{config.task.depth - 1}")
    if config.network is not None:
        errors += _check_stats(config, specs)
    if config.trajectory.evaluations:
        from lowbit.probe.trajectory import expand_methods

        try:
            expand_methods(config.trajectory.methods)
        except ValueError as error:
            errors.append(str(error))
    names: List[str] = []
    for condition in task_conditions(config):
        try:
            task = make_task(config, config.probe.dims[0], condition, 0, check_only=True)
            if config.network is not None:
                names = network_layers(config, task)
                for layer in names:
                    studied_weight(task.model, layer)
                last = config.probe.batches - 1
                task.batch(last)  # enough images for every batch
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            section = "network" if config.network is not None else "task"
            errors.append(f"{section}{' ' + str(condition) if condition else ''}: {error}")
    if not errors and config.probe.select:
        try:
            if not plan_units(config, names):
                errors.append(f"probe.select {config.probe.select} keeps no unit of the grid")
        except ValueError as error:
            errors.append(f"probe.{error}")
    if len(errors) == 1:
        raise ValueError(f"invalid probe config: {errors[0]}")
    if errors:
        raise ValueError("invalid probe config:\n  - " + "\n  - ".join(errors))
    return specs


def _with_budget(spec: EstimatorSpec, radius: float, norm: str) -> EstimatorSpec:
    """Give budgeted estimators (DG, multi-step STE) the common budget."""
    from lowbit.estimators import ESTIMATORS

    accepted = inspect.signature(ESTIMATORS.get(spec.name)).parameters
    params = dict(spec.params)
    if "budget" in accepted:
        params["budget"] = radius
    if "norm" in accepted:
        params["norm"] = norm
    return EstimatorSpec(spec.label, spec.name, params)


def _check_stats(config: ProbeConfig, specs: Sequence[EstimatorSpec]) -> List[str]:
    if not config.stats.batches:
        return []
    ste_labels = [s.label for s in specs if s.name == "ste"]
    wanted = config.stats.estimators if config.stats.estimators is not None else ste_labels
    bad = [label for label in wanted if label not in ste_labels]
    if bad:
        return [f"stats.estimators {bad} are not labels of ste estimators ({', '.join(ste_labels) or 'none'})"]
    if not wanted:
        return ["stats.batches is set but there is no ste estimator to measure; add one or set stats.batches: 0"]
    return []


def probed_layers(config: ProbeConfig) -> List[str]:
    """The network's probed layer names ([] for the toy), from a model built without data or training."""
    if config.network is None:
        return []
    return network_layers(config, make_task(config, None, task_conditions(config)[0], 0, check_only=True))


def network_layers(config: ProbeConfig, task: Any) -> List[str]:
    """The probed layer names of a network run ("all": every conv and linear layer)."""
    return probe_layers(task.model) if config.probe.layers == "all" else list(config.probe.layers)


def make_task(
    config: ProbeConfig, dim: Any, condition: Dict[str, Any], init: int, check_only: bool = False, pretrain: bool = True
):
    """The toy task of one dim, or the network task, under one condition and init.

    ``check_only`` builds the smallest task that validates the settings; ``pretrain=False`` skips
    the toy's pretraining (for timing).
    """
    if config.network is not None:
        network = dataclasses.replace(config.network, **condition)
        return NetworkTask(network, seed=config.seed + init, check_only=check_only, device="cpu" if check_only else config.device)
    settings = {**vars(config.task), **condition}
    task = ToyTask(
        dim=dim,
        depth=settings["depth"],
        act=settings["act"],
        batch_size=1 if check_only else settings["batch_size"],
        seed=config.seed + init,
        weights=settings["weights"],
        device="cpu" if check_only else config.device,
    )
    if settings["pretrain_steps"] > 0 and pretrain and not check_only:
        task.pretrain(
            steps=settings["pretrain_steps"],
            batch_size=settings["pretrain_batch_size"],
            optimizer=settings["pretrain_optimizer"],
            lr=settings["pretrain_lr"],
        )
    return task
