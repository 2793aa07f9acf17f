"""The gradient-quality laboratory: the teacher-student task, the experiment runner, measurements.

``lowbit probe`` runs a grid of dims × task conditions × inits × batches; at each
point every estimator of :mod:`lowbit.estimators` proposes a step on the same
Objective and :mod:`lowbit.probe.measure` records loss decreases and cosines.
"""

from lowbit.probe.config import ProbeConfig, expand_estimators
from lowbit.probe.measure import cosine, cosine_per_layer, lr_grid, normalize_direction, normalized_difference
from lowbit.probe.runner import prepare, run_grid
from lowbit.probe.toy import ToyObjective, ToyTask

__all__ = [
    "ProbeConfig",
    "ToyObjective",
    "ToyTask",
    "cosine",
    "cosine_per_layer",
    "expand_estimators",
    "lr_grid",
    "normalize_direction",
    "normalized_difference",
    "prepare",
    "run_grid",
]
