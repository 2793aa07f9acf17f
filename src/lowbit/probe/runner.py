"""The probe's experiment runner: it measures the units of a plan and appends their records.

What to measure (the grid of units, their ids and seeds, every check before
compute) is :mod:`lowbit.probe.plan`; how long it will take is
:mod:`lowbit.probe.estimate`. In a unit every estimator proposes a step on the
same Objective and every measurement of :mod:`lowbit.probe.measure` is taken;
the unit's records are appended to ``records.csv`` as one transaction
(:class:`lowbit.runs.RecordWriter`: all of its rows visible, or none), so an
interruption (a kill, a full disk) loses at most the unit in progress and
``--resume`` finishes the grid without recomputing any saved unit. Every random draw is seeded from the
unit's coordinates, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from lowbit.devices import set_tf32
from lowbit.estimators import get_estimator
from lowbit.probe.config import EstimatorSpec, ProbeConfig
from lowbit.probe.estimate import estimate_time
from lowbit.probe.measure import (
    AUTO_LR_CEILING,
    cosine,
    cosine_per_layer,
    line_search,
    lr_grid,
    normalize_direction,
    normalized_difference,
    subsample_indices,
)
from lowbit.estimators.layers import studied_weight
from lowbit.probe.plan import (
    STATS,
    Unit,
    completed_units,
    make_task,
    plan_units,
    prepare,
    probed_layers,
    show_value,
    stable_seed,
    unit_id,
)
from lowbit.estimators.subset import subset_cosine
from lowbit.runs import RecordWriter, read_records

__all__ = ["STATS", "iter_units", "measure_stats_unit", "measure_unit", "prepare", "run_grid", "unit_id"]


def iter_units(config: ProbeConfig, layers: Sequence[str] = ()) -> Iterator[Tuple[Any, Dict[str, Any], int, int]]:
    """(position, condition, init, batch) of every unit in run order (``lowbit.probe.plan.plan_units``)."""
    return iter(plan_units(config, layers))


def run_grid(config: ProbeConfig, run_dir: Path, progress: bool = True, estimate: bool = True,
             after_unit: Optional[Callable[[int, List[Dict[str, Any]]], None]] = None, replay_done: bool = False) -> int:
    """Measure every unit not yet in ``run_dir/records.csv``; return how many were computed.

    With ``estimate`` the time the remaining units will take is printed before they start.
    ``after_unit(position in the plan, records)`` is called once each unit's records are saved;
    with ``replay_done`` first for every unit already recorded, in plan order (a resumed run's
    trackers then hold every unit, also one saved just before a kill cut its logging short).
    """
    from tqdm.auto import tqdm

    specs = prepare(config)
    set_tf32(config.allow_tf32)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    records_path = run_dir / "records.csv"
    layers = probed_layers(config)
    units = plan_units(config, layers)
    done = completed_units(records_path, [u.id for u in units])  # verified: planned units, each recorded once
    writer = RecordWriter(records_path)  # drops the rows of a unit whose write was cut short (with a warning)
    todo = [u for u in units if u.id not in done]
    order = {u.id: index for index, u in enumerate(units)}  # a unit's place in the plan, the trackers' step
    if replay_done and after_unit is not None and done:
        recorded: Dict[str, List[Dict[str, Any]]] = {}
        for row in read_records(records_path, text_columns=("unit", "estimator", "layer", "probed_layer")):
            recorded.setdefault(str(row["unit"]), []).append(row)
        for unit in units:
            if unit.id in recorded:
                after_unit(order[unit.id], recorded[unit.id])
    # Into a redirected log the bar is redrawn only every _bar_interval() seconds: a postfix change must
    # not force a redraw there (tqdm's set_postfix_str refreshes by default, i.e. two lines per unit).
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(units), initial=len(units) - len(todo), disable=not progress, desc="probe", unit="unit",
               mininterval=_bar_interval())
    computed = 0
    task_key, task = None, None
    if estimate and todo and config.network is None:
        _print_estimate(config, specs, todo, lambda dim: make_task(config, dim, todo[0].condition, todo[0].init, pretrain=False), bar)
    try:
        for unit in todo:
            position, condition, init, batch = unit
            key = (None if config.network is not None else position, tuple(condition.items()), init)
            if key != task_key:  # consecutive units share the (possibly pretrained) task
                bar.set_postfix_str(f"{unit.id}: building the task", refresh=interactive)
                first = task_key is None
                task_key, task = key, make_task(config, position, condition, init)
                if estimate and first and config.network is not None:
                    _print_estimate(config, specs, todo, lambda layer: task, bar)
            bar.set_postfix_str(unit.id, refresh=interactive)
            if position == STATS:
                records = measure_stats_unit(config, specs, task, layers, condition, init)
            else:
                records = measure_unit(config, specs, task, position, condition, init, batch)
            writer.write_many(records)
            if after_unit is not None:
                after_unit(order[unit.id], records)
            computed += 1
            bar.update(1)
    finally:
        bar.close()
    return computed


def _bar_interval() -> float:
    """Seconds between progress-bar updates: often on a terminal, rarely into a redirected log."""
    return 0.1 if sys.stderr.isatty() else 30.0


def _print_estimate(config: ProbeConfig, specs: Sequence[EstimatorSpec], todo: Sequence[Unit], task_for, bar: Any) -> None:
    positions = list(dict.fromkeys(u.position for u in todo if u.position != STATS))
    estimate = estimate_time(config, specs, positions, task_for)
    bar.write(
        "lowbit probe: estimated time of the units to run (timed on this machine before starting):\n"
        + estimate.describe(todo),
        file=sys.stderr,
    )


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
    conditions = {k: show_value(v) for k, v in condition.items()}
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
        estimate = estimator.estimate(objective, generator=generator)
        seconds = time.perf_counter() - start
        # Extra outputs beside the step (NES with return_sigma: the gradient for σ under "sigma:<name>")
        # are recorded, not stepped along: the line search and the cosines see the studied parameters only.
        estimates[spec.label] = {k: v for k, v in estimate.items() if k in params}
        extras: Dict[str, Dict[str, float]] = {}
        for key in sorted(set(estimate) - set(params)):
            kind, _, layer = key.partition(":")  # "sigma:layers.0.weight" -> metric sigma_gradient, that layer
            extras.setdefault(f"{kind}_gradient", {})[layer or key] = float(estimate[key].double().sum())
        for metric, per_layer in extras.items():
            row = {**base_row, "estimator": spec.label, "metric": metric}
            rows.append({**row, "layer": "all", "value": sum(per_layer.values())})
            if len(per_layer) > 1:
                rows += [{**row, "layer": layer, "value": value} for layer, value in per_layer.items()]
        displacement[spec.label] = bool(getattr(estimator, "returns_displacement", False))
        rows.append({**base_row, "estimator": spec.label, "layer": "all", "metric": "seconds", "value": seconds})
        subset = getattr(estimator, "last_subset", None)
        if subset is not None:  # CDG on a random subset of coordinates
            subsets[spec.label] = subset
            measured = sum(int(m.sum()) for m in subset.values())
            rows.append({**base_row, "estimator": spec.label, "layer": "all", "metric": "coords", "value": measured})

    measure = config.measure
    grid = measure.lr_grid
    norm = config.budget.norm if config.budget is not None else "l2"
    hi = grid.max if config.budget is None else min(grid.max, config.budget.radius)
    lo = min(grid.min, hi)
    lrs = lr_grid(lo, hi, grid.num, grid.scale)
    ceiling = AUTO_LR_CEILING if config.budget is None else config.budget.radius
    reference = estimates.get(measure.reference) if measure.reference else None
    best_loss: Dict[str, float] = {}
    quick_lr = torch.tensor([measure.quick_lr], dtype=torch.float64)

    for label, estimate in estimates.items():
        row = {**base_row, "estimator": label, "layer": "all"}
        direction = normalize_direction(estimate, measure.normalize, norm)
        search = line_search(objective, direction, lrs, base_loss, auto=grid.auto, ceiling=ceiling)
        quick = base_loss - float(objective.line_losses(direction, quick_lr)[0])
        best = search.best
        best_lr = float(search.lrs[best])
        kept = subsample_indices(len(search.lrs), measure.curve_points)
        rows += [
            {**row, "metric": "quick_decrease", "lr": measure.quick_lr, "value": quick},
            {**row, "metric": "best_decrease", "lr": best_lr, "value": float(search.decrease[best])},
            {**row, "metric": "best_lr", "value": best_lr},
            {**row, "metric": "best_lr_edge", "value": search.edge},
        ]
        if grid.auto:
            rows.append({**row, "metric": "lr_grid_widened", "value": search.widened})
        rows += [
            {**row, "metric": "decrease", "lr": float(search.lrs[i]), "value": float(search.decrease[i])} for i in kept.tolist()
        ]
        if displacement[label]:
            own = float(objective.line_losses(dict(estimate), torch.tensor([1.0], dtype=torch.float64))[0])
            rows.append({**row, "metric": "step_decrease", "value": base_loss - own})
            best_loss[label] = own
        else:
            best_loss[label] = base_loss - float(search.decrease[best])
        rows.append({**row, "metric": "best_loss", "value": best_loss[label]})
        if reference is not None and label != measure.reference and measure.reference in subsets:
            value, se = subset_cosine(reference, estimate, subsets[measure.reference])
            rows += [{**row, "metric": "cosine", "value": value}, {**row, "metric": "cosine_se", "value": se}]
        elif reference is not None and label != measure.reference:
            rows.append({**row, "metric": "cosine", "value": cosine(estimate, reference)})
            if len(estimate) > 1:
                for layer, value in cosine_per_layer(estimate, reference).items():
                    rows.append({**row, "layer": layer, "metric": "cosine", "value": value})
    if config.trajectory.evaluations:
        rows += _trajectories(config, task, objective, base_row, uid, batch)
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


def _trajectories(config: ProbeConfig, task: Any, objective: Any, base_row: Dict[str, Any], uid: str, batch: int):
    """The unit's loss curves under the evaluation budget (``lowbit.probe.trajectory``), on the toy."""
    from lowbit.probe.trajectory import trajectory_records

    heldout = task.objective(layers=config.probe.layers, batch=config.probe.batches + batch) if config.trajectory.heldout else None
    return trajectory_records(config.trajectory, objective, heldout, base_row,
                              lambda label: stable_seed(config.seed, uid, "trajectory", label))


def measure_stats_unit(
    config: ProbeConfig, specs: Sequence[EstimatorSpec], task: Any, layers: Sequence[str], condition: Dict[str, Any], init: int
) -> List[Dict[str, Any]]:
    """STE gradient statistics over ``stats.batches`` mini-batches, every probed layer × surrogate."""
    from lowbit.estimators.ste_stats import minibatches, ste_statistics_records

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
    base_row = {"unit": uid, **{k: show_value(v) for k, v in condition.items()}, "init": init, "layer": "all"}
    records = ste_statistics_records(task.model, batches, named, surrogates)
    numel = {layer: dict(task.model.named_parameters())[p].numel() for layer, p in named.items()}
    return [{**base_row, "dim": numel[r["probed_layer"]], **r} for r in records]
