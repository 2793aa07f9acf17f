"""Gradient estimators behind one interface, and the Objective they work on.

    ĝ = get_estimator(name, **params).estimate(objective, generator=None)

**Contract.** ``ĝ`` is a dict with one tensor per studied parameter (same
names and shapes as ``objective.params``) such that *the step this method
would take is w − lr·ĝ*:

- gradient methods return a gradient of the loss — ``ste`` (backprop with a
  surrogate derivative), ``nes`` (natural search gradient of the
  Gaussian-smoothed loss, sign flipped from fitness = −loss to a loss
  gradient), ``cdg`` (central finite differences per coordinate);
- methods that choose a point return the negated displacement ĝ = −Δw —
  ``dg`` (greedy coordinate search), ``multistep_ste`` (projected
  optimizer steps; both keep ‖Δw‖_norm <= budget), ``snes`` (generations of
  separable NES with μ and σ updated by natural gradients) and ``bop`` (Bop's
  flip rule) — so ``lr = 1`` reproduces their point; they set
  ``returns_displacement = True``;
- for binary weights (a latent w whose sign is the weight): ``flip_cdg`` (the
  exact loss change of flipping each sign, as a secant slope ΔL_i/(−2w_i)) and
  ``bernoulli_nes`` (REINFORCE over independent flips with probability p).

``cdg(relative=True)`` scales ε per studied tensor by its mean |w|.

``estimate`` is pure with respect to ``generator`` (same generator state →
same ĝ; None draws from the global RNG). Invalid hyper-parameters raise
ValueError quoting the value when the estimator is constructed.

Objectives: :class:`Objective` (the interface, with generic chunked
implementations), :class:`ModuleObjective` (any ``nn.Module``),
:class:`GraphObjective` (a few layers of a large network: cached prefix,
population folded into the batch, exact pruning of unchanged members); the
teacher–student toy (``lowbit.probe.toy``) provides exact fast paths.
:class:`CountingObjective` counts the loss evaluations an estimator asks for.
Budgets: :func:`project` (exact Euclidean projection onto l2/l1/linf balls),
:func:`norm_of`.
"""

from __future__ import annotations

from lowbit.estimators.base import (
    ESTIMATORS,
    GradientEstimator,
    get_estimator,
    list_estimators,
    register_estimator,
)
from lowbit.estimators.budget import NORMS, flatten, norm_of, project, unflatten
from lowbit.estimators.cdg import CDG
from lowbit.estimators.counting import CountingObjective
from lowbit.estimators.dg import DG
from lowbit.estimators.flips import BernoulliNES, BopFlips, FlipCDG, flip_deltas
from lowbit.estimators.multistep import OPTIMIZERS, MultiStepSTE
from lowbit.estimators.nes import NES, SHAPINGS, SIGMA_PREFIX, evaluate_members, fitness_weights
from lowbit.estimators.snes import SNES, SNESSearch, snes_update
from lowbit.estimators.graph_objective import GraphObjective, use_batch_statistics
from lowbit.estimators.objective import (
    ModuleObjective,
    Objective,
    SurrogateUnusedWarning,
    check_no_training_batchnorm,
    generic_coordinate_deltas,
    generic_line_losses,
    resolve_surrogate,
    step_values,
    step_vector,
    subset_coordinate_deltas,
    with_surrogate,
)
from lowbit.estimators.layers import probe_layers, studied_weight
from lowbit.estimators.ste import STE, ste_gradient
from lowbit.estimators.ste_stats import gradient_statistics, minibatches, ste_statistics_records
from lowbit.estimators.subset import subset_cosine, subset_inner

__all__ = [
    "BernoulliNES",
    "BopFlips",
    "CDG",
    "CountingObjective",
    "DG",
    "FlipCDG",
    "SNES",
    "SNESSearch",
    "ESTIMATORS",
    "NES",
    "NORMS",
    "OPTIMIZERS",
    "SHAPINGS",
    "SIGMA_PREFIX",
    "STE",
    "GradientEstimator",
    "GraphObjective",
    "ModuleObjective",
    "MultiStepSTE",
    "Objective",
    "SurrogateUnusedWarning",
    "check_no_training_batchnorm",
    "evaluate_members",
    "fitness_weights",
    "flatten",
    "flip_deltas",
    "generic_coordinate_deltas",
    "generic_line_losses",
    "gradient_statistics",
    "minibatches",
    "probe_layers",
    "get_estimator",
    "list_estimators",
    "norm_of",
    "project",
    "register_estimator",
    "resolve_surrogate",
    "snes_update",
    "ste_gradient",
    "ste_statistics_records",
    "step_values",
    "step_vector",
    "studied_weight",
    "subset_coordinate_deltas",
    "subset_cosine",
    "subset_inner",
    "unflatten",
    "use_batch_statistics",
    "with_surrogate",
]
