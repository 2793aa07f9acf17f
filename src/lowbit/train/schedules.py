"""Learning-rate schedules as plain functions of the step.

``make_schedule(cfg, lr, total_steps, steps_per_epoch)`` returns ``lr_at(step)``
for ``step = 0 .. total_steps - 1``; the loop sets the learning rate to
``lr_at(step)`` before every optimizer step. Nothing is stateful, so a resumed
run only needs the step number.

Every schedule starts with an optional linear warm-up of ``W`` steps
(``W = round(warmup_epochs * steps_per_epoch)``)::

    lr(s) = lr_max * (s + 1) / W                          for s < W

and then runs on ``t = s - W`` over the remaining ``T = total_steps - W`` steps
(formulas below, with ``hi = lr_max`` and ``lo = min_lr_ratio * lr_max``).
The closed forms match PyTorch's ``CosineAnnealingLR``, ``CyclicLR``
(``mode="triangular"``), ``OneCycleLR`` (``anneal_strategy="cos"``, without its
momentum cycling) and ``MultiStepLR`` stepped once per batch.
"""

from __future__ import annotations

import math
from typing import Callable

from lowbit.registry import Registry
from lowbit.train.config import ScheduleConfig

SCHEDULES = Registry("schedule")


def register_schedule(name: str):
    """Decorator: ``fn(t, T, hi, cfg) -> lr`` becomes ``schedule.name: <name>``."""
    return SCHEDULES.register(name)


def list_schedules() -> list[str]:
    return SCHEDULES.names()


def _cos_interp(start: float, end: float, fraction: float) -> float:
    """Half-cosine from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


@register_schedule("constant")
def constant_lr(t: int, T: int, hi: float, cfg: ScheduleConfig) -> float:
    """lr(t) = hi."""
    return hi


@register_schedule("cosine")
def cosine_lr(t: int, T: int, hi: float, cfg: ScheduleConfig) -> float:
    """Cosine annealing (Loshchilov & Hutter 2017, without restarts)::

    lr(t) = lo + (hi - lo) * (1 + cos(pi * t / T)) / 2
    """
    lo = cfg.min_lr_ratio * hi
    return _cos_interp(hi, lo, t / T)


@register_schedule("cyclic")
def cyclic_lr(t: int, T: int, hi: float, cfg: ScheduleConfig) -> float:
    """Triangular cyclic learning rate (Smith 2017), ``cycles`` triangles over T::

    h = T / (2 * cycles)                  # steps per half cycle
    c = floor(1 + t / (2 h))              # the current cycle, from 1
    x = |t / h - 2 c + 1|                 # 1 at a cycle's ends, 0 at its peak
    lr(t) = lo + (hi - lo) * max(0, 1 - x)
    """
    lo = cfg.min_lr_ratio * hi
    half = T / (2 * cfg.cycles)
    cycle = math.floor(1 + t / (2 * half))
    x = abs(t / half - 2 * cycle + 1)
    return lo + (hi - lo) * max(0.0, 1.0 - x)


@register_schedule("onecycle")
def onecycle_lr(t: int, T: int, hi: float, cfg: ScheduleConfig) -> float:
    """One-cycle policy (Smith & Topin 2019), cosine phases as torch ``OneCycleLR``::

    a = hi / div_factor, z = a / final_div_factor, u = pct_start * T - 1
    lr(t) = cos_interp(a, hi, t / u)                    for t <= u
    lr(t) = cos_interp(hi, z, (t - u) / (T - 1 - u))     for t > u
    cos_interp(x, y, f) = y + (x - y) * (1 + cos(pi f)) / 2
    """
    initial = hi / cfg.div_factor
    final = initial / cfg.final_div_factor
    up = cfg.pct_start * T - 1  # torch: the peak is reached at step pct_start * T - 1
    if T <= 1:
        return hi
    if t <= up:
        return _cos_interp(initial, hi, t / up) if up > 0 else hi
    return _cos_interp(hi, final, (t - up) / max(T - 1 - up, 1e-12))


@register_schedule("step")
def step_lr(t: int, T: int, hi: float, cfg: ScheduleConfig) -> float:
    """Step decay at fractions ``milestones`` of the steps after warm-up::

    lr(t) = hi * gamma ** #{m in milestones : t >= m * T}
    """
    drops = sum(1 for m in cfg.milestones if t >= m * T)
    return hi * cfg.gamma**drops


def make_schedule(cfg: ScheduleConfig, lr: float, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """``lr_at(step)`` for the configured schedule with its linear warm-up (see module docstring)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    shape = SCHEDULES.get(cfg.name)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
    decay_steps = total_steps - warmup  # T >= 1

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return float(shape(min(step - warmup, decay_steps - 1), decay_steps, lr, cfg))

    return lr_at
