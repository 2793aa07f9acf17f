"""The tracker interface, the registry of backends and the fan-out to several of them.

A run talks to its trackers in four calls, all with plain numbers and strings::

    trackers.log_params({"optim.lr": 0.05, ...})          # once, at the start: the flat config
    trackers.log_scalars({"train_loss": 0.31}, step=5)     # a series point: per epoch, per N steps, per probe unit
    trackers.log_summary({"summary/final_test_acc": 0.97}) # the run's final numbers (TensorBoard: its hparams row)
    trackers.close("complete")                             # complete | stopped | interrupted | diverged | failed

A backend is a class registered with :func:`register_tracker`: ``Backend(context)``
opens it for one run (:class:`TrackingContext`), ``Backend.missing()`` says why it
cannot be used here (its package is not installed, with the install command) or
``None``. Nothing in this package knows about training or the probe.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

from lowbit.registry import Registry, UnknownNameError, unknown_name_message

STATUSES = ("complete", "stopped", "interrupted", "diverged", "failed")


@dataclass
class MLflowConfig:
    """Where the ``mlflow`` tracker writes (``run.mlflow`` of ``lowbit train``, ``mlflow`` of ``lowbit probe``)."""

    # None: $MLFLOW_TRACKING_URI, else MLflow's own default (MLflow 3: sqlite:///mlflow.db in the working
    # directory). A local store needs no server: sqlite:////abs/path/mlflow.db. MLflow 3 refuses the old
    # file: store unless MLFLOW_ALLOW_FILE_STORE=true is set
    tracking_uri: Optional[str] = None
    # None: $MLFLOW_EXPERIMENT_NAME, else lowbit-train / lowbit-probe (one experiment per command: their
    # parameters differ); created when missing
    experiment: Optional[str] = None


@dataclass
class TrackingContext:
    """What a backend knows of the run it tracks."""

    run_dir: Path
    command: str  # "train" | "probe"
    resumed: bool = False  # a resumed run: continue the backend's run where it keeps one (MLflow)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    settings_key: str = "run.mlflow"  # where the mlflow settings sit in the command's config (for messages)
    # a resumed run: the last step whose points stay as logged (training: its checkpoint's optimizer steps;
    # -1: the probe, which logs every unit again). Points after it may have been logged by the attempt that
    # was killed and are logged again (TensorBoard purges them from this step + 1; MLflow skips what it holds)
    resume_step: Optional[int] = None


@runtime_checkable
class Tracker(Protocol):
    """One backend's view of one run (see the module docstring for when each call comes)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...

    def log_summary(self, metrics: Mapping[str, float]) -> None: ...

    def close(self, status: str = "complete") -> None: ...


TRACKERS = Registry("tracker")


def register_tracker(name: str) -> Callable[[type], type]:
    """Class decorator: ``run.trackers: [name]`` opens ``cls(TrackingContext)``; ``cls.missing()`` -> None or why not."""
    return TRACKERS.register(name)


def list_trackers() -> List[str]:
    _load_builtin_backends()
    return TRACKERS.names()


def _load_builtin_backends() -> None:
    import lowbit.tracking.mlflow_backend  # noqa: F401 - registers "mlflow"
    import lowbit.tracking.tensorboard_backend  # noqa: F401 - registers "tensorboard"


def resolve_trackers(names: Sequence[str], required: bool, key: str = "run.trackers") -> Tuple[List[str], List[str]]:
    """``(usable names, notes on those skipped)``; raises before any work on a name that cannot be used.

    ``required``: the user named the trackers (``run.trackers``): an unknown name or a backend whose package
    is missing is a one-line error naming the fix. Otherwise (the implicit ``run.tensorboard: true``) a
    missing package is skipped with a note.
    """
    _load_builtin_backends()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UnknownNameError(f"{key}: " + "; ".join(unknown_name_message("tracker", n, TRACKERS.names()) for n in unknown))
    usable, notes = [], []
    for name in dict.fromkeys(names):
        why = TRACKERS.get(name).missing()
        if why is None:
            usable.append(name)
        elif required:
            raise ValueError(f"{key} names {name!r}, but {why}")
        else:
            notes.append(why)
    return usable, notes


def open_trackers(names: Sequence[str], context: TrackingContext) -> "Trackers":
    """The named backends opened for one run (names as returned by :func:`resolve_trackers`)."""
    _load_builtin_backends()
    opened: List[Tracker] = []
    try:
        for name in names:
            opened.append(TRACKERS.get(name)(context))
    except BaseException:
        Trackers(opened).close("failed")
        raise
    return Trackers(opened)


def _number(value: Any) -> Optional[float]:
    """A scalar a tracker can plot (a bool as 0/1, a numpy scalar), or None (text, None, a list)."""
    return float(value) if isinstance(value, numbers.Real) else None


def param_value(value: Any) -> Any:
    """A config value as a tracker parameter: numbers, booleans and text as they are; None as ``null``; lists and
    mappings as their YAML flow text (``[0.5, 0.75]``)."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str)):
        return value
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()


class Trackers:
    """Several trackers as one: every call goes to each. Empty (falsy) when none is open."""

    def __init__(self, trackers: Iterable[Tracker] = ()):
        self.trackers: List[Tracker] = list(trackers)
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def __len__(self) -> int:
        return len(self.trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {str(k): param_value(v) for k, v in params.items()}
        for tracker in self.trackers:
            tracker.log_params(values)

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """The numeric entries of ``scalars`` at ``step`` (text and None are left out)."""
        values = {str(k): v for k, v in ((k, _number(v)) for k, v in scalars.items()) if v is not None}
        if values:
            for tracker in self.trackers:
                tracker.log_scalars(values, int(step))

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        values = {str(k): v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log_summary(values)

    def flush(self) -> None:
        """Write what the trackers hold in memory to their stores (those that buffer; ``flush`` is optional).

        Called before each checkpoint: a process killed after the checkpoint then loses no point
        the checkpoint counts as logged (a kill before it re-logs those steps, which the backends
        take as the same points: TensorBoard drops the older, MLflow skips steps it holds).
        """
        for tracker in self.trackers:
            flush = getattr(tracker, "flush", None)
            if flush is not None:
                flush()

    def close(self, status: str = "complete") -> None:
        """Close every tracker (each once); the first error is raised after all were tried."""
        if status not in STATUSES:
            raise ValueError(f"tracker status must be one of {', '.join(STATUSES)}, got {status!r}")
        if self.closed:
            return
        self.closed = True
        first: Optional[BaseException] = None
        for tracker in self.trackers:
            try:
                tracker.close(status)
            except Exception as error:  # noqa: BLE001 - close the others first
                first = first or error
        if first is not None:
            raise first


__all__ = [
    "MLflowConfig",
    "STATUSES",
    "Tracker",
    "Trackers",
    "TrackingContext",
    "list_trackers",
    "open_trackers",
    "param_value",
    "register_tracker",
    "resolve_trackers",
]
