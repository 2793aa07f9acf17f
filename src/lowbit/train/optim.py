"""Optimizers by name: ``build_optimizer(params, cfg)``.

New optimizers register with ``@register_optimizer(name)`` (see ``dessilbi``
below), after which ``optim.name: <name>`` works in any training config. A
factory takes ``(params, cfg)``, or ``(params, cfg, model)`` when it needs the
module (parameter names, layer types). Optimizer-specific keywords go in
``optim.extra`` (e.g. ``{kappa: 1, mu: 5}``); a factory rejects keys it does not
know (see ``_no_extra``).

The learning rate set here is overwritten by the schedule before every step.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Tuple

import torch

from lowbit.registry import Registry
from lowbit.train.config import OptimConfig

OPTIMIZERS = Registry("optimizer")


def register_optimizer(name: str) -> Callable[[Callable[..., torch.optim.Optimizer]], Callable[..., torch.optim.Optimizer]]:
    """Decorator: ``factory(params, cfg: OptimConfig) -> torch.optim.Optimizer`` becomes ``optim.name: <name>``."""
    return OPTIMIZERS.register(name)


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def build_optimizer(
    params: Iterable[Any],
    cfg: OptimConfig,
    *,
    model: Optional[torch.nn.Module] = None,
    steps: Optional[Tuple[int, int]] = None,
) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``params`` (an unknown name lists the valid ones).

    ``model`` is handed to factories that take a third argument (see the module docstring);
    ``steps`` = (total steps, steps per epoch) to factories with a ``steps`` keyword (Bop's
    schedules). With ``cfg.groups`` the result is a :class:`lowbit.optim.CaseOptimizer`
    (:func:`lowbit.train.groups.build_grouped_optimizer`; ``params`` is then ignored: the
    groups select from the model's parameters).
    """
    if cfg.groups:
        from lowbit.train.groups import build_grouped_optimizer

        if model is None:
            raise ValueError("optim.groups needs the model: build_optimizer(params, cfg, model=model)")
        return build_grouped_optimizer(model, cfg, steps)
    return call_factory(cfg.name, params, cfg, model=model, steps=steps)


def call_factory(
    name: str,
    params: Iterable[Any],
    cfg: OptimConfig,
    *,
    model: Optional[torch.nn.Module] = None,
    steps: Optional[Tuple[int, int]] = None,
) -> torch.optim.Optimizer:
    """The registered factory ``name`` called with what it declares: (params, cfg[, model][, steps=])."""
    factory = OPTIMIZERS.get(name)
    signature = inspect.signature(factory).parameters
    keywords = {"steps": steps} if "steps" in signature else {}
    positional = [p for p in signature if p != "steps"]
    if len(positional) >= 3:
        if model is None:
            raise ValueError(f"optimizer {name!r} needs the model: build_optimizer(params, cfg, model=model)")
        return factory(params, cfg, model, **keywords)
    return factory(params, cfg, **keywords)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``group["lr"] = lr`` for every group, times the group's ``lr_scale`` (a per-group ``lr`` in optim.groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _no_extra(cfg: OptimConfig) -> None:
    if cfg.extra:
        raise ValueError(f"optim.extra {dict(cfg.extra)} is not used by optimizer {cfg.name!r}; remove it")


@register_optimizer("sgd")
def sgd(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (PyTorch form): b <- mu b + (g + wd w);  w <- w - lr b  (Nesterov: w - lr (g + wd w + mu b))."""
    _no_extra(cfg)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


@register_optimizer("adam")
def adam(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient."""
    _no_extra(cfg)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@register_optimizer("adamw")
def adamw(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): decoupled decay w <- w - lr wd w."""
    _no_extra(cfg)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@register_optimizer("dessilbi")
def dessilbi(params: Iterable[Any], cfg: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """DessiLBI (Fu et al. 2020) over ``params``, sparse on their conv/linear weights; ``optim.extra`` takes kappa, mu, adam, ...

    See :class:`lowbit.optim.DessiLBI` for the update. The Adam flavour uses
    ``optim.betas`` / ``optim.eps`` when ``extra.adam`` is true. ``params`` is every
    parameter for a plain ``optim.name: dessilbi``, or a group's selection in
    ``optim.groups`` (the other parameters belong to other optimizers).
    """
    from lowbit.optim import DessiLBI, dessilbi_param_groups

    extra = dict(cfg.extra)
    group_options = {k: extra.pop(k) for k in ("group_lasso", "sparse", "exclude") if k in extra}
    if extra.get("adam"):
        extra.setdefault("betas", tuple(cfg.betas))
        extra.setdefault("eps", cfg.eps)
    selected = {id(p) for p in params}
    groups = [
        {**group, "params": [(n, p) for n, p in group["params"] if id(p) in selected]}
        for group in dessilbi_param_groups(model, **group_options)
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("optim: DessiLBI got no parameter to train (its group selects none of the model's)")
    try:
        return DessiLBI(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **extra,
        )
    except TypeError as error:
        raise ValueError(f"optim.extra {dict(cfg.extra)} does not fit DessiLBI: {error}") from None


@register_optimizer("bop")
def bop(
    params: Iterable[Any], cfg: OptimConfig, model: torch.nn.Module, steps: Optional[Tuple[int, int]] = None
) -> torch.optim.Optimizer:
    """Bop (Helwegen et al. 2019) over binary latent weights, with ``optim.bop``'s gamma, threshold and schedules.

    Every parameter given must be a binary layer's latent weight (lowbit.nn.binary_weights): Bop flips
    signs, which means nothing for a BatchNorm scale or a float layer. Use it in a group,
    ``optim.groups: [{params: [binary], name: bop}]``, with another optimizer for the rest.
    """
    from lowbit.nn import binary_weights
    from lowbit.optim import Bop

    _no_extra(cfg)
    params = list(params)
    binary_ids = {id(p) for _, p in binary_weights(model)}
    names = {id(p): n for n, p in model.named_parameters()}
    others = [names.get(id(p), f"a tensor of shape {tuple(p.shape)}") for p in params if id(p) not in binary_ids]
    if others:
        shown = ", ".join(others[:6]) + (f", ... ({len(others)} in all)" if len(others) > 6 else "")
        raise ValueError(
            f"Bop trains binary latent weights only (it flips signs), but it was given {len(others)} other "
            f"parameters: {shown}. Give Bop the binary weights and the rest to another optimizer: "
            "optim.groups: [{params: [binary], name: bop}] with optim.name: adam"
        )
    b = cfg.bop
    schedules = {}
    for key, schedule in (("gamma_schedule", b.gamma_schedule), ("threshold_schedule", b.threshold_schedule)):
        if schedule.name == "constant" and schedule.warmup_epochs == 0:
            continue
        if steps is None:
            raise ValueError(f"optim.bop.{key} needs the run's length: build_optimizer(..., steps=(total, per_epoch))")
        from lowbit.train.schedules import make_schedule

        schedules[key] = make_schedule(schedule, 1.0, *steps)
    return Bop(params, gamma=b.gamma, threshold=b.threshold, **schedules)
