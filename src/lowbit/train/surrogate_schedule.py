"""Scheduled surrogates: quantizer parameters (window, slope, beta, clip) as functions of the training step.

The research notes ask for DSQ's "shrink the window during training": start
with a wide, smooth surrogate gradient (easy optimisation, biased) and end
with a narrow one close to the sign's true derivative (less bias). A
``surrogate:`` section of a training config names quantizer parameters and
their start and end values::

    surrogate:
      params: {beta: [1.0, 20.0]}     # SwishSign's beta grows 1 -> 20
      shape: geometric                # beta(p) = 1 * 20^p
      start_epoch: 0.0
      end_epoch: null                 # the last epoch

With training progress p in [0, 1] between ``start_epoch`` and ``end_epoch``
(clamped: the start value before, the end value after), a parameter moves from
``a`` to ``b`` as

    linear:     v(p) = a + (b - a) p
    cosine:     v(p) = a + (b - a) (1 - cos(pi p)) / 2
    geometric:  v(p) = a (b / a)^p            (equal ratios per step; a, b > 0)

Examples: ``approx_sign_window`` with ``window: [1.0, 0.1]`` (ApproxSign
narrowing towards the sign), ``swish_sign`` with ``beta: [1, 20]``,
``ste_clipped`` with ``clip: [2.0, 0.5]`` (the clip shrinking), ``steep`` with
``slope: [1, 8]``. Every quantizer module of the model that has the parameter
(in its ``param_names``) is set before each optimizer step -- or only those of
the registry names in ``quantizers``. The value is a pure function of the
global step, so a resumed run sets exactly the values of an uninterrupted one;
each epoch's ``metrics.csv`` row records them as ``surrogate/<param>`` (the
value at the epoch's last step, like ``lr``).

Gong et al., "Differentiable Soft Quantization: Bridging Full-Precision and
Low-Bit Neural Networks", ICCV 2019.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

from torch import nn

SHAPES = ("linear", "cosine", "geometric")


@dataclass
class SurrogateScheduleConfig:
    params: Dict[str, List[float]] = field(default_factory=dict)  # quantizer parameter -> [start, end], all > 0
    shape: Literal["linear", "cosine", "geometric"] = "linear"  # how the value moves with training progress
    start_epoch: float = 0.0  # epochs (fractional) before the parameter starts to move
    end_epoch: Optional[float] = None  # epoch by which it reaches the end value; None: the end of training
    quantizers: List[str] = field(default_factory=list)  # registry names to schedule; []: every one with the param

    def __post_init__(self) -> None:
        errors = []
        if not self.params:
            errors.append("surrogate.params must name at least one quantizer parameter, e.g. {beta: [1.0, 20.0]}")
        for name, values in self.params.items():
            if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
                errors.append(f"surrogate.params.{name} must be [start, end], two numbers > 0, got {values!r}")
        if self.start_epoch < 0:
            errors.append(f"surrogate.start_epoch must be >= 0, got {self.start_epoch}")
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            errors.append(
                f"surrogate.end_epoch must be > start_epoch ({self.start_epoch}) or null, got {self.end_epoch}"
            )
        if errors:
            raise ValueError("; ".join(errors))


def schedule_value(start: float, end: float, progress: float, shape: str) -> float:
    """The parameter at ``progress`` in [0, 1] (clamped); see the module docstring for the shapes."""
    p = min(1.0, max(0.0, progress))
    if shape == "linear":
        return start + (end - start) * p
    if shape == "cosine":
        return start + (end - start) * (1.0 - math.cos(math.pi * p)) / 2.0
    if shape == "geometric":
        return start * (end / start) ** p
    raise ValueError(f"surrogate.shape must be one of {SHAPES}, got {shape!r}")


class SurrogateSchedule:
    """Sets scheduled quantizer parameters on a model; built by :func:`build_surrogate_schedule`."""

    def __init__(
        self,
        config: SurrogateScheduleConfig,
        targets: Dict[str, List[nn.Module]],
        start_step: int,
        end_step: int,
    ) -> None:
        self.config = config
        self.targets = targets  # parameter name -> the quantizer modules that have it
        self.start_step, self.end_step = start_step, end_step

    def values(self, step: int) -> Dict[str, float]:
        """Every scheduled parameter at global optimizer step ``step`` (0-based)."""
        progress = (step - self.start_step) / max(1, self.end_step - self.start_step)
        return {
            name: schedule_value(float(a), float(b), progress, self.config.shape)
            for name, (a, b) in self.config.params.items()
        }

    def apply(self, step: int) -> Dict[str, float]:
        """Set the parameters for step ``step`` on every target quantizer; returns the values."""
        values = self.values(step)
        for name, value in values.items():
            for module in self.targets[name]:
                setattr(module, name, value)
        return values

    def columns(self, step: int) -> Dict[str, float]:
        """The ``metrics.csv`` columns for step ``step``: ``surrogate/<param>``."""
        return {f"surrogate/{name}": value for name, value in self.values(step).items()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _quantizers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    from lowbit.quant import Quantizer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, Quantizer)]


def build_surrogate_schedule(
    config: Optional[SurrogateScheduleConfig], model: nn.Module, model_name: str, total_steps: int, steps_per_epoch: int
) -> Optional[SurrogateSchedule]:
    """The schedule for ``model``, or None without a ``surrogate:`` section.

    Raises ValueError (before training) when a parameter matches no quantizer
    of the model, naming the quantizers it has.
    """
    if config is None:
        return None
    from lowbit.nn import quantizer_name

    quantizers = _quantizers(model)
    wanted = set(config.quantizers)
    errors = []
    unknown = sorted(wanted - {quantizer_name(m) for _, m in quantizers})
    if unknown:
        errors.append(f"surrogate.quantizers {unknown} are not in model {model_name!r}")
    targets: Dict[str, List[nn.Module]] = {}
    for param in config.params:
        targets[param] = [
            m
            for _, m in quantizers
            if param in getattr(m, "param_names", ())
            and _is_number(getattr(m, param, None))  # e.g. not xnor_weight's boolean per_channel
            and (not wanted or quantizer_name(m) in wanted)
        ]
        if not targets[param]:
            have = sorted({f"{quantizer_name(m)} ({', '.join(m.param_names) or 'no parameters'})" for _, m in quantizers})
            errors.append(
                f"surrogate.params.{param}: no quantizer of model {model_name!r} has a parameter {param!r}; "
                f"its quantizers: {', '.join(have) or 'none'} (e.g. model.act: approx_sign_window has 'window', "
                "swish_sign 'beta', ste_clipped 'clip', steep 'slope')"
            )
    if errors:
        raise ValueError("; ".join(errors))
    start = int(round(config.start_epoch * steps_per_epoch))
    end = total_steps - 1 if config.end_epoch is None else int(round(config.end_epoch * steps_per_epoch))
    return SurrogateSchedule(config, targets, start, max(start + 1, end))


__all__ = ["SHAPES", "SurrogateSchedule", "SurrogateScheduleConfig", "build_surrogate_schedule", "schedule_value"]
