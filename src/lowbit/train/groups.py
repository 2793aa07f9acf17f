"""``optim.groups``: a per-group optimizer (Larq's CaseOptimizer) from a training config.

    optim:
      name: adam                 # every parameter no group takes (Larq's default_optimizer)
      lr: 1.0e-2
      groups:
        - params: [binary]       # the binary layers' latent weights ...
          name: bop              # ... to Bop (optim.bop: gamma, threshold, schedules)

Each group is the ``optim`` section with the group's own ``name``, ``lr``,
``momentum``, ``weight_decay`` and ``extra`` where given, built by the same
registered factory as a plain ``optim.name`` (so any registered optimizer works
in a group). A group's ``lr`` is kept as ``lr_scale = lr / optim.lr`` in its
param groups: the learning-rate schedule scales every group alike
(:func:`lowbit.train.optim.set_learning_rate`). Errors, all before training: a
pattern that selects nothing, groups that overlap, Bop given anything but
binary weights, an unknown optimizer name.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from lowbit.train.config import OptimConfig, OptimGroupConfig
from lowbit.train.optim import OPTIMIZERS, call_factory

DEFAULT_CASE = "rest"  # the case name of the default optimizer in the state dict


def group_config(cfg: OptimConfig, group: OptimGroupConfig) -> OptimConfig:
    """The ``optim`` section as seen by one group: its name, and its lr / momentum / weight decay / extra if set."""
    overrides = {"name": group.name, "extra": dict(group.extra), "groups": []}
    for key in ("lr", "momentum", "weight_decay"):
        if getattr(group, key) is not None:
            overrides[key] = getattr(group, key)
    try:
        return dataclasses.replace(cfg, **overrides)
    except ValueError as error:  # OptimConfig's own checks (e.g. nesterov with momentum 0)
        raise ValueError(f"optim.groups entry {group.name!r}: {error}") from None


def case_names(cfg: OptimConfig) -> List[str]:
    """One name per group (its optimizer's, numbered when repeated), then ``rest``."""
    counts: Dict[str, int] = {}
    names = []
    for group in cfg.groups:
        counts[group.name] = counts.get(group.name, 0) + 1
        names.append(group.name if counts[group.name] == 1 else f"{group.name}.{counts[group.name]}")
    return names


def build_grouped_optimizer(
    model: nn.Module, cfg: OptimConfig, steps: Optional[Tuple[int, int]] = None
) -> torch.optim.Optimizer:
    """A :class:`lowbit.optim.CaseOptimizer` with one case per ``cfg.groups`` entry and ``rest`` for the others."""
    from lowbit.optim import case_optimizer

    unknown = [g.name for g in cfg.groups if g.name not in OPTIMIZERS]
    if unknown:
        OPTIMIZERS.get(unknown[0])  # raises, listing the valid names and the nearest one
    cases = []
    for name, group in zip(case_names(cfg), cfg.groups):
        sub = group_config(cfg, group)
        scale = sub.lr / cfg.lr

        def factory(params, sub=sub, scale=scale):
            optimizer = call_factory(sub.name, params, sub, model=model, steps=steps)
            if scale != 1.0:
                for param_group in optimizer.param_groups:
                    param_group["lr_scale"] = scale
            return optimizer

        cases.append((name, list(group.params), factory))

    def default(params):
        return call_factory(cfg.name, params, dataclasses.replace(cfg, groups=[]), model=model, steps=steps)

    try:
        return case_optimizer(model, cases, default=default, default_name=DEFAULT_CASE)
    except ValueError as error:
        raise ValueError(f"optim.groups: {error}") from None


__all__ = ["DEFAULT_CASE", "build_grouped_optimizer", "case_names", "group_config"]
