"""The probe's experiment runner: the grid, the records, resume.

The grid is ``dims × sweep conditions × inits × batches``; one *unit* is one
point of it. In a unit every estimator proposes a step on the same Objective and
every measurement of :mod:`lowbit.probe.measure` is taken; the unit's records
are appended to ``records.csv`` together, so an interruption loses at most the
unit in progress and ``--resume`` finishes the grid without recomputing any
saved unit. Every random draw is seeded from the unit's coordinates, so a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import inspect
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
from lowbit.probe.toy import ToyTask
from lowbit.runs import RecordWriter, read_records

def unit_id(dim: int, condition: Dict[str, Any], init: int, batch: int) -> str:
    extra = "".join(f",{k}={_show(v)}" for k, v in condition.items())
    return f"dim={dim}{extra},init={init},batch={batch}"


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
    if layers != "all":
        bad = [i for i in layers if not 0 <= i < config.task.depth]
        if bad:
            errors.append(f"probe.layers {bad} do not exist: the toy MLP has layers 0..{config.task.depth - 1}")
    for condition in task_conditions(config):
        try:
            _make_task(config, config.probe.dims[0], condition, 0, check_only=True)
        except (ValueError, TypeError, KeyError) as error:
            errors.append(f"task {condition or ''}: {error}")
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


def _make_task(config: ProbeConfig, dim: int, condition: Dict[str, Any], init: int, check_only: bool = False):
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


def iter_units(config: ProbeConfig) -> Iterator[Tuple[int, Dict[str, Any], int, int]]:
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
    units = list(iter_units(config))
    todo = [u for u in units if unit_id(u[0], u[1], u[2], u[3]) not in done]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), disable=not progress, desc="probe", unit="unit")
    computed = 0
    task_key, task = None, None
    try:
        for dim, condition, init, batch in todo:
            key = (dim, tuple(condition.items()), init)
            if key != task_key:  # consecutive units share the (possibly pretrained) task
                bar.set_postfix_str(f"dim={dim} init={init} building task")
                task_key, task = key, _make_task(config, dim, condition, init)
            bar.set_postfix_str(unit_id(dim, condition, init, batch))
            records = measure_unit(config, specs, task, dim, condition, init, batch)
            writer.write_many(records)
            computed += 1
            bar.update(1)
    finally:
        bar.close()
    return computed


def measure_unit(
    config: ProbeConfig,
    specs: Sequence[EstimatorSpec],
    task: ToyTask,
    dim: int,
    condition: Dict[str, Any],
    init: int,
    batch: int,
) -> List[Dict[str, Any]]:
    """All records of one grid point: every estimator, every measurement."""
    uid = unit_id(dim, condition, init, batch)
    base_row = {"unit": uid, "dim": dim, **{k: _show(v) for k, v in condition.items()}, "init": init, "batch": batch}
    layers = config.probe.layers
    objective = task.objective(layers=layers, batch=batch)
    params = objective.params
    base_loss = float(objective.loss(params))
    rows: List[Dict[str, Any]] = [{**base_row, "estimator": "", "layer": "all", "metric": "base_loss", "value": base_loss}]

    estimates: Dict[str, Dict[str, torch.Tensor]] = {}
    displacement: Dict[str, bool] = {}
    for index, spec in enumerate(specs):
        estimator = get_estimator(spec.name, **spec.params)
        generator = torch.Generator().manual_seed(stable_seed(config.seed, uid, index, spec.label))
        start = time.perf_counter()
        estimates[spec.label] = estimator.estimate(objective, generator=generator)
        seconds = time.perf_counter() - start
        displacement[spec.label] = bool(getattr(estimator, "returns_displacement", False))
        rows.append({**base_row, "estimator": spec.label, "layer": "all", "metric": "seconds", "value": seconds})

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
        if reference is not None and label != measure.reference:
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
