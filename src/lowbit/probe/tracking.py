"""The probe's numbers in the experiment trackers (``trackers: [tensorboard, mlflow]``; lowbit.tracking).

Per unit, as it is saved: every number the unit has exactly once per
estimator on all studied parameters (``layer`` all) — the cosine to the
reference (CDG), the best loss decrease and its lr, the best loss, the
quick-check decrease, the seconds per estimate, the base loss, ... — as the
scalar ``<metric>/<estimator>`` (``<metric>`` for the unit's own numbers such
as ``base_loss``) at step = the unit's position in the plan (the order of
``records.csv``; a resumed run first logs every unit recorded before again,
then the remaining units at their own positions). Series of several values per
unit (the ΔL–lr curve, trajectories, per-layer cosines) stay in ``records.csv``.

At the end, each of those scalars' mean over the units recorded so far goes to
the summary as ``mean/<metric>/<estimator>`` (TensorBoard's HParams row,
MLflow metrics), beside the run's parameters (the flat config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from lowbit.config import flatten_dotted, to_dict
from lowbit.runs import read_records
from lowbit.tracking import Trackers, TrackingContext, open_trackers, resolve_trackers

# config keys that say where or how the probe is recorded, not what it measures
_BOOKKEEPING = ("name", "threads", "trackers", "mlflow")
_TEXT_COLUMNS = ("unit", "estimator", "layer", "probed_layer")


def check_trackers(config: Any) -> List[str]:
    """The config's ``trackers``, checked (unknown name, missing package: one-line error before any compute)."""
    usable, _ = resolve_trackers(list(config.trackers), required=True, key="trackers")
    if "mlflow" in usable:
        from lowbit.tracking.mlflow_backend import check_store

        check_store(config.mlflow, "mlflow")
    return usable


def open_probe_trackers(config: Any, run_dir: Path, resumed: bool) -> Trackers:
    """The probe's trackers, opened, with its flat config as parameters.

    A resumed probe logs every recorded unit again before the rest (``run_grid(replay_done=True)``):
    TensorBoard purges the earlier attempt's events (``resume_step=-1``: from step 0), MLflow skips
    the steps its run holds, so a unit whose logging a kill cut short is there too, and each unit once.
    """
    context = TrackingContext(run_dir, "probe", resumed=resumed, mlflow=config.mlflow, settings_key="mlflow",
                              resume_step=-1 if resumed else None)
    trackers = open_trackers(resolve_trackers(list(config.trackers), required=True, key="trackers")[0], context)
    flat = flatten_dotted(to_dict(config))
    trackers.log_params({k: v for k, v in flat.items() if not any(k == b or k.startswith(b + ".") for b in _BOOKKEEPING)})
    return trackers


def unit_scalars(records: Iterable[Mapping[str, Any]]) -> Dict[str, float]:
    """``{"<metric>/<estimator>": value}`` of one unit's records: the numbers it has once per estimator."""
    counts: Dict[str, int] = {}
    values: Dict[str, float] = {}
    for r in records:
        if r.get("layer") not in (None, "", "all") or not isinstance(r.get("value"), (int, float)):
            continue
        name = f"{r['metric']}/{r['estimator']}" if r.get("estimator") else str(r["metric"])
        counts[name] = counts.get(name, 0) + 1
        values[name] = float(r["value"])
    return {name: value for name, value in values.items() if counts[name] == 1}


def summary_scalars(records_path: Path) -> Dict[str, float]:
    """``{"mean/<metric>/<estimator>": mean over the units}`` of every unit in ``records.csv``."""
    if not records_path.is_file():
        return {}
    by_unit: Dict[str, List[Mapping[str, Any]]] = {}
    for r in read_records(records_path, text_columns=_TEXT_COLUMNS):
        by_unit.setdefault(str(r["unit"]), []).append(r)
    sums: Dict[str, List[float]] = {}
    for rows in by_unit.values():
        for name, value in unit_scalars(rows).items():
            sums.setdefault(name, []).append(value)
    return {f"mean/{name}": sum(v) / len(v) for name, v in sums.items() if v}


def finish(trackers: Optional[Trackers], run_dir: Path, status: str) -> None:
    """Log the summary of ``records.csv`` and close the trackers with ``status``."""
    if not trackers:
        return
    trackers.log_summary(summary_scalars(run_dir / "records.csv"))
    trackers.close(status)
