"""The probe's experiment runner: the grid, the records, resume.

The grid is ``dims × sweep conditions × inits × batches`` on the toy, and
``sweep conditions × inits × layers × batches`` on a network (``network:``,
:mod:`lowbit.probe.network`), plus one STE-statistics unit per condition and
init when ``stats.batches`` is set; one *unit* is one point of it. In a unit every estimator proposes a step on the same Objective and
every measurement of :mod:`lowbit.probe.measure` is taken; the unit's records
are appended to ``records.csv`` together, so an interruption loses at most the
unit in progress and ``--resume`` finishes the grid without recomputing any
saved unit. Every random draw is seeded from the unit's coordinates, so a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch

from lowbit.estimators import get_estimator
from lowbit.probe.config import EstimatorSpec, ProbeConfig, act_label, expand_estimators, task_conditions
from lowbit.probe.measure import (
    cosine,
    cosine_per_layer,
    lr_grid,
    normalize_direction,
    normalized_difference,
    subsample_indices,
)
from lowbit.probe.network import NetworkTask, probe_layers, studied_weight
from lowbit.probe.subset import subset_cosine
from lowbit.probe.toy import ToyTask
from lowbit.runs import RecordWriter, read_records

STATS = "stats"  # the position of an STE-statistics unit


def unit_id(position: Any, condition: Dict[str, Any], init: int, batch: int) -> str:
    """``dim=8,init=0,batch=1`` (toy), ``layer=layer1.0.conv1,init=0,batch=1`` (network), ``stats,init=0``."""
    extra = "".join(f",{k}={_show(v)}" for k, v in condition.items())
    if position == STATS:
        return f"stats{extra},init={init}"
    head = f"layer={position}" if isinstance(position, str) else f"dim={position}"
    return f"{head}{extra},init={init},batch={batch}"


def _show(value: Any) -> Any:
    return act_label(value) if isinstance(value, dict) else value


def stable_seed(*parts: Any) -> int:
    """A seed that depends only on ``parts`` (not on Python's randomised hash)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def prepare(config: ProbeConfig) -> List[EstimatorSpec]:
    """Check everything that can be checked before any compute; return the estimator specs.

    Builds every estimator once (their constructors validate names and values),
    checks the reference and comparison labels, the layers and the activation.
    """
    specs = expand_estimators(config.estimators)
    if config.budget is not None:
        specs = [_with_budget(spec, config.budget.radius, config.budget.norm) for spec in specs]
    errors = []
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
    for condition in task_conditions(config):
        try:
            task = _make_task(config, config.probe.dims[0], condition, 0, check_only=True)
            if config.network is not None:
                for layer in network_layers(config, task):
                    studied_weight(task.model, layer)
                last = config.probe.batches - 1
                task.batch(last)  # enough images for every batch
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            section = "network" if config.network is not None else "task"
            errors.append(f"{section}{' ' + str(condition) if condition else ''}: {error}")
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


def network_layers(config: ProbeConfig, task: Any) -> List[str]:
    """The probed layer names of a network run ("all": every conv and linear layer)."""
    return probe_layers(task.model) if config.probe.layers == "all" else list(config.probe.layers)


def _make_task(config: ProbeConfig, dim: Any, condition: Dict[str, Any], init: int, check_only: bool = False):
    if config.network is not None:
        network = dataclasses.replace(config.network, **condition)
        return NetworkTask(network, seed=config.seed + init, check_only=check_only)
    settings = {**vars(config.task), **condition}
    task = ToyTask(
        dim=dim,
        depth=settings["depth"],
        act=settings["act"],
        batch_size=1 if check_only else settings["batch_size"],
        seed=config.seed + init,
    )
    if settings["pretrain_steps"] > 0 and not check_only:
        task.pretrain(
            steps=settings["pretrain_steps"],
            batch_size=settings["pretrain_batch_size"],
            optimizer=settings["pretrain_optimizer"],
            lr=settings["pretrain_lr"],
        )
    return task


def iter_units(config: ProbeConfig, layers: Sequence[str] = ()) -> Iterator[Tuple[Any, Dict[str, Any], int, int]]:
    """(position, condition, init, batch) in run order; position = dim (toy), layer name or STATS (network).

    A network's units are ordered condition, init, layer, batch, so that the
    (possibly pretrained) model is built once per condition and init.
    """
    if config.network is not None:
        for condition in task_conditions(config):
            for init in range(config.probe.inits):
                for layer in layers:
                    for batch in range(config.probe.batches):
                        yield layer, condition, init, batch
                if config.stats.batches:
                    yield STATS, condition, init, 0
        return
    for dim in config.probe.dims:
        for condition in task_conditions(config):
            for init in range(config.probe.inits):
                for batch in range(config.probe.batches):
                    yield dim, condition, init, batch


def completed_units(records_path: Path) -> set:
    if not records_path.exists():
        return set()
    return {r["unit"] for r in read_records(records_path)}


def run_grid(config: ProbeConfig, run_dir: Path, progress: bool = True) -> int:
    """Measure every unit not yet in ``run_dir/records.csv``; return how many were computed."""
    from tqdm.auto import tqdm

    specs = prepare(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    records_path = run_dir / "records.csv"
    done = completed_units(records_path)
    writer = RecordWriter(records_path)
    layers: List[str] = []
    if config.network is not None:
        layers = network_layers(config, _make_task(config, None, task_conditions(config)[0], 0, check_only=True))
    units = list(iter_units(config, layers))
    todo = [u for u in units if unit_id(u[0], u[1], u[2], u[3]) not in done]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), disable=not progress, desc="probe", unit="unit")
    computed = 0
    task_key, task = None, None
    estimated = False
    try:
        for position, condition, init, batch in todo:
            key = (None if config.network is not None else position, tuple(condition.items()), init)
            if key != task_key:  # consecutive units share the (possibly pretrained) task
                bar.set_postfix_str(f"{unit_id(position, condition, init, batch)}: building the task")
                task_key, task = key, _make_task(config, position, condition, init)
                if config.network is not None and not estimated:
                    pending = list(dict.fromkeys(u[0] for u in todo if u[0] != STATS))
                    report_time_estimate(config, specs, task, pending, bar)
                    estimated = True
            bar.set_postfix_str(unit_id(position, condition, init, batch))
            if position == STATS:
                records = measure_stats_unit(config, specs, task, layers, condition, init)
            else:
                records = measure_unit(config, specs, task, position, condition, init, batch)
            writer.write_many(records)
            computed += 1
            bar.update(1)
    finally:
        bar.close()
    return computed


def measure_unit(
    config: ProbeConfig,
    specs: Sequence[EstimatorSpec],
    task: Any,
    dim: Any,
    condition: Dict[str, Any],
    init: int,
    batch: int,
) -> List[Dict[str, Any]]:
    """All records of one grid point: every estimator, every measurement."""
    uid = unit_id(dim, condition, init, batch)
    conditions = {k: _show(v) for k, v in condition.items()}
    if config.network is not None:
        objective = task.objective(dim, batch=batch)
        numel = objective.numel()
        base_row = {"unit": uid, "probed_layer": dim, "dim": numel, **conditions, "init": init, "batch": batch}
    else:
        objective = task.objective(layers=config.probe.layers, batch=batch)
        base_row = {"unit": uid, "dim": dim, **conditions, "init": init, "batch": batch}
    params = objective.params
    base_loss = float(objective.loss(params))
    rows: List[Dict[str, Any]] = [{**base_row, "estimator": "", "layer": "all", "metric": "base_loss", "value": base_loss}]
    if config.network is not None:
        rows.append({**base_row, "estimator": "", "layer": "all", "metric": "batch_accuracy", "value": task.accuracy(batch)})

    estimates: Dict[str, Dict[str, torch.Tensor]] = {}
    displacement: Dict[str, bool] = {}
    subsets: Dict[str, Dict[str, torch.Tensor]] = {}
    for index, spec in enumerate(specs):
        estimator = get_estimator(spec.name, **spec.params)
        generator = torch.Generator().manual_seed(stable_seed(config.seed, uid, index, spec.label))
        start = time.perf_counter()
        estimates[spec.label] = estimator.estimate(objective, generator=generator)
        seconds = time.perf_counter() - start
        displacement[spec.label] = bool(getattr(estimator, "returns_displacement", False))
        rows.append({**base_row, "estimator": spec.label, "layer": "all", "metric": "seconds", "value": seconds})
        subset = getattr(estimator, "last_subset", None)
        if subset is not None:  # CDG on a random subset of coordinates
            subsets[spec.label] = subset
            measured = sum(int(m.sum()) for m in subset.values())
            rows.append({**base_row, "estimator": spec.label, "layer": "all", "metric": "coords", "value": measured})

    measure = config.measure
    norm = config.budget.norm if config.budget is not None else "l2"
    hi = measure.lr_grid.max if config.budget is None else min(measure.lr_grid.max, config.budget.radius)
    lo = min(measure.lr_grid.min, hi)
    lrs = lr_grid(lo, hi, measure.lr_grid.num, measure.lr_grid.scale)
    kept = subsample_indices(len(lrs), measure.curve_points)
    reference = estimates.get(measure.reference) if measure.reference else None
    best_loss: Dict[str, float] = {}

    for label, estimate in estimates.items():
        row = {**base_row, "estimator": label, "layer": "all"}
        direction = normalize_direction(estimate, measure.normalize, norm)
        # One vectorised line search: the fine grid plus the quick-check lr.
        all_lrs = torch.cat([lrs, torch.tensor([measure.quick_lr], dtype=torch.float64)])
        losses = objective.line_losses(direction, all_lrs).double()
        curve = base_loss - losses[:-1]
        quick = base_loss - float(losses[-1])
        best = int(torch.argmax(curve))
        rows += [
            {**row, "metric": "quick_decrease", "lr": measure.quick_lr, "value": quick},
            {**row, "metric": "best_decrease", "lr": float(lrs[best]), "value": float(curve[best])},
            {**row, "metric": "best_lr", "value": float(lrs[best])},
        ]
        rows += [{**row, "metric": "decrease", "lr": float(lrs[i]), "value": float(curve[i])} for i in kept.tolist()]
        if displacement[label]:
            own = float(objective.line_losses(dict(estimate), torch.tensor([1.0], dtype=torch.float64))[0])
            rows.append({**row, "metric": "step_decrease", "value": base_loss - own})
            best_loss[label] = own
        else:
            best_loss[label] = base_loss - float(curve[best])
        rows.append({**row, "metric": "best_loss", "value": best_loss[label]})
        if reference is not None and label != measure.reference and measure.reference in subsets:
            value, se = subset_cosine(reference, estimate, subsets[measure.reference])
            rows += [{**row, "metric": "cosine", "value": value}, {**row, "metric": "cosine_se", "value": se}]
        elif reference is not None and label != measure.reference:
            rows.append({**row, "metric": "cosine", "value": cosine(estimate, reference)})
            if len(estimate) > 1:
                for layer, value in cosine_per_layer(estimate, reference).items():
                    rows.append({**row, "layer": layer, "metric": "cosine", "value": value})
    for a, b in measure.compare:
        rows.append(
            {
                **base_row,
                "estimator": f"{a} vs {b}",
                "layer": "all",
                "metric": "normalized_difference",
                "value": normalized_difference(best_loss[a], best_loss[b]),
            }
        )
    return rows


def measure_stats_unit(
    config: ProbeConfig, specs: Sequence[EstimatorSpec], task: Any, layers: Sequence[str], condition: Dict[str, Any], init: int
) -> List[Dict[str, Any]]:
    """STE gradient statistics over ``stats.batches`` mini-batches, every probed layer × surrogate."""
    from lowbit.probe.ste_stats import minibatches, ste_statistics_records

    uid = unit_id(STATS, condition, init, 0)
    wanted = config.stats.estimators
    surrogates = {
        s.label: get_estimator(s.name, **s.params).resolved_surrogate
        for s in specs
        if s.name == "ste" and (wanted is None or s.label in wanted)
    }
    generator = torch.Generator().manual_seed(stable_seed(config.seed, uid))
    batches = minibatches(task.images, task.labels, config.stats.batches, config.stats.batch_size, generator)
    named = {layer: studied_weight(task.model, layer) for layer in layers}
    base_row = {"unit": uid, **{k: _show(v) for k, v in condition.items()}, "init": init, "layer": "all"}
    records = ste_statistics_records(task.model, batches, named, surrogates)
    numel = {layer: dict(task.model.named_parameters())[p].numel() for layer, p in named.items()}
    return [{**base_row, "dim": numel[r["probed_layer"]], **r} for r in records]


def report_time_estimate(config: ProbeConfig, specs: Sequence[EstimatorSpec], task: Any, layers: Sequence[str], bar: Any) -> float:
    """Print, before the work starts, how long the run will take per layer; return the total seconds.

    Timed on the first task: CDG on 8 random coordinates per layer (pruning makes
    its cost depend on ε), and one loss evaluation with every coordinate moved,
    which is what each point of a line search and each NES member costs.
    """
    lines, total = [], 0.0
    units_per_layer = config.probe.batches * config.probe.inits * len(task_conditions(config))
    line_points = config.measure.lr_grid.num + 1  # the grid and the quick-check lr
    for layer in layers:
        objective = task.objective(layer, batch=0)
        full = time_per_full_evaluation(objective)
        parts = [f"line searches {len(specs)} x {line_points} evaluations"]
        seconds = len(specs) * line_points * full
        for spec in specs:
            if spec.name == "cdg":
                per = time_per_evaluation(objective, float(spec.params.get("eps", 0.1)))
                coords = min(objective.numel(), spec.params.get("coords") or objective.numel())
                evaluations = coords * (2 if spec.params.get("central", True) else 1)
                seconds += evaluations * per
                parts.append(f"{spec.label}: {coords} of {objective.numel()} coordinates at {per * 1e3:.1f} ms")
            elif spec.name == "nes":
                seconds += int(spec.params.get("population", 100)) * full
        total += seconds * units_per_layer
        lines.append(
            f"  {layer}: {', '.join(parts)} ({full * 1e3:.1f} ms each); "
            f"{units_per_layer} units: ~{_duration(seconds * units_per_layer)}"
        )
    left_out = [
        name
        for name, present in (
            ("pretraining", config.network.pretrain_epochs or any(config.probe.sweep.get("pretrain_epochs", []))),
            ("the STE statistics", config.stats.batches),
        )
        if present
    ]
    extra = f", plus {' and '.join(left_out)}" if left_out else ""
    bar.write("lowbit probe: estimated time of the layer units (timed on this machine before starting):\n"
              + "\n".join(lines) + f"\n  total ~{_duration(total)}{extra}", file=sys.stderr)
    return total


def time_per_full_evaluation(objective: Any, members: int = 4) -> float:
    """Seconds per loss evaluation with every studied coordinate moved (a line-search point)."""
    generator = torch.Generator().manual_seed(0)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in objective.params.items()}
    lrs = torch.full((members,), 1e-3, dtype=torch.float64)
    objective.line_losses(direction, lrs[:1])  # warm-up
    start = time.perf_counter()
    objective.line_losses(direction, lrs)
    return (time.perf_counter() - start) / members


def time_per_evaluation(objective: Any, step: float, members: int = 8) -> float:
    """Seconds per single-coordinate loss evaluation L(w + step·e_i), timed on ``members`` random coordinates."""
    from lowbit.estimators import subset_coordinate_deltas

    generator = torch.Generator().manual_seed(0)
    coords = torch.randperm(objective.numel(), generator=generator)[:members]
    subset_coordinate_deltas(objective, (step,), coords[:1])  # warm-up
    start = time.perf_counter()
    subset_coordinate_deltas(objective, (step,), coords)
    return (time.perf_counter() - start) / len(coords)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
