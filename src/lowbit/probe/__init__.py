"""The gradient-quality laboratory: the teacher-student task, the experiment runner, measurements.

``lowbit probe`` runs a grid of dims × task conditions × inits × batches on the
toy, or of conditions × inits × layers × batches on a zoo network
(:mod:`lowbit.probe.network`); at each point every estimator of
:mod:`lowbit.estimators` proposes a step on the same Objective and
:mod:`lowbit.probe.measure` records loss decreases and cosines
(:mod:`lowbit.estimators.subset` on a coordinate subset, :mod:`lowbit.estimators.ste_stats`
for STE statistics over mini-batches).
"""

from lowbit.probe.config import ProbeConfig, expand_estimators
from lowbit.estimators.layers import probe_layers
from lowbit.probe.network import NetworkConfig, NetworkTask
from lowbit.probe.measure import cosine, cosine_per_layer, lr_grid, normalize_direction, normalized_difference
from lowbit.probe.runner import prepare, run_grid
from lowbit.probe.toy import ToyObjective, ToyTask

__all__ = [
    "NetworkConfig",
    "NetworkTask",
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
    "probe_layers",
    "run_grid",
]
