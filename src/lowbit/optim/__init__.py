"""Optimizers beyond torch.optim: Bop and per-group optimizers for binary networks; DessiLBI and pruning.

>>> optimizer = case_optimizer(model, [("binary", ["binary"], Bop)],          # Larq's CaseOptimizer
...                            default=lambda ps: torch.optim.Adam(ps, lr=1e-2))

>>> groups = dessilbi_param_groups(model)             # conv/linear weights get Z and Γ
>>> opt = DessiLBI(groups, lr=0.05, kappa=1.0, mu=100.0)
>>> tracker = SupportTracker()
>>> ...                                                # train; after each epoch:
>>> records = tracker.update(opt, epoch)               # support, sparsity, residue per layer
>>> pruner = Pruner(model, opt, tracker)
>>> pruner.prune(["conv3"], percent=50, by="gamma"); pruner.recover()

The update is the functional :func:`dessilbi_step` (with :func:`shrink` and
:func:`group_shrink`); :class:`DessiLBI` only holds configuration and state.
Math, naming (the paper's ν is ``mu``) and measured results: ``docs/dessilbi.md``.
"""

from __future__ import annotations

from lowbit.optim.bop import Bop, bop_update_
from lowbit.optim.case import CaseOptimizer, case_optimizer, leaf_optimizers
from lowbit.optim.dessilbi import DessiLBI, dessilbi_param_groups
from lowbit.optim.functional import (
    adam_direction,
    dessilbi_step,
    group_shrink,
    prox,
    resolve_group_lasso,
    sgd_direction,
    shrink,
)
from lowbit.optim.pictures import plot_weight_pictures, weight_picture
from lowbit.optim.prune import (
    Pruner,
    SupportTracker,
    format_pruning_table,
    num_pruned,
    prune_mask,
    prune_order,
    pruning_table,
    support_records,
    w_star,
)

__all__ = [
    "Bop",
    "CaseOptimizer",
    "DessiLBI",
    "Pruner",
    "SupportTracker",
    "adam_direction",
    "bop_update_",
    "case_optimizer",
    "leaf_optimizers",
    "dessilbi_param_groups",
    "dessilbi_step",
    "format_pruning_table",
    "group_shrink",
    "num_pruned",
    "plot_weight_pictures",
    "prox",
    "prune_mask",
    "prune_order",
    "pruning_table",
    "resolve_group_lasso",
    "sgd_direction",
    "shrink",
    "support_records",
    "w_star",
    "weight_picture",
]
