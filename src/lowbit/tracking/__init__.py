"""Experiment trackers for ``lowbit train`` and ``lowbit probe``: TensorBoard built in, MLflow as an extra.

    from lowbit.tracking import TrackingContext, open_trackers, resolve_trackers
    names, notes = resolve_trackers(["tensorboard", "mlflow"], required=True)   # errors before any work
    trackers = open_trackers(names, TrackingContext(run_dir, "train"))
    trackers.log_params({"optim.lr": 0.05}); trackers.log_scalars({"train_loss": 0.3}, step=1)
    trackers.log_summary({"summary/final_test_acc": 0.97}); trackers.close("complete")

A new backend (Weights & Biases, a CSV logger) is a class registered with
``register_tracker(name)``; ``run.trackers: [name]`` then selects it. See
docs/training.md, "Tracking".
"""

from lowbit.tracking.base import (
    STATUSES,
    MLflowConfig,
    Tracker,
    Trackers,
    TrackingContext,
    list_trackers,
    open_trackers,
    param_value,
    register_tracker,
    resolve_trackers,
)
from lowbit.tracking.mlflow_backend import MLflowTracker, mlflow_name
from lowbit.tracking.tensorboard_backend import TensorBoardTracker

__all__ = [
    "MLflowConfig",
    "MLflowTracker",
    "STATUSES",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "TrackingContext",
    "list_trackers",
    "mlflow_name",
    "open_trackers",
    "param_value",
    "register_tracker",
    "resolve_trackers",
]
