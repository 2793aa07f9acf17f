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
from typing import Any, Callable, Iterable, Optional

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
    params: Iterable[Any], cfg: OptimConfig, *, model: Optional[torch.nn.Module] = None
) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``params`` (an unknown name lists the valid ones).

    ``model`` is handed to factories that take a third argument (see the module docstring).
    """
    factory = OPTIMIZERS.get(cfg.name)
    if len(inspect.signature(factory).parameters) >= 3:
        if model is None:
            raise ValueError(f"optimizer {cfg.name!r} needs the model: build_optimizer(params, cfg, model=model)")
        return factory(params, cfg, model)
    return factory(params, cfg)


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
    """DessiLBI (Fu et al. 2020) over the model's conv/linear weights; ``optim.extra`` takes kappa, mu, adam, ...

    See :class:`lowbit.optim.DessiLBI` for the update. The Adam flavour uses
    ``optim.betas`` / ``optim.eps`` when ``extra.adam`` is true.
    """
    from lowbit.optim import DessiLBI, dessilbi_param_groups

    extra = dict(cfg.extra)
    group_options = {k: extra.pop(k) for k in ("group_lasso", "sparse", "exclude") if k in extra}
    if extra.get("adam"):
        extra.setdefault("betas", tuple(cfg.betas))
        extra.setdefault("eps", cfg.eps)
    try:
        return DessiLBI(
            dessilbi_param_groups(model, **group_options),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **extra,
        )
    except TypeError as error:
        raise ValueError(f"optim.extra {dict(cfg.extra)} does not fit DessiLBI: {error}") from None
