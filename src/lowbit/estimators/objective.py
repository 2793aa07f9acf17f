"""Objective: what an estimator needs to know about the problem.

An Objective holds the studied parameters ``params`` (name -> tensor, e.g. only
the first layer's weight; everything else is fixed) and a fixed batch, and
answers four questions:

- ``loss(params, surrogate=None)``: the scalar loss L(w) (differentiable). With
  ``surrogate`` (a quantizer name, ``{"name": ..., **params}``, an
  ``nn.Module`` or any differentiable callable) the backward of every sign
  activation is replaced by the surrogate's backward while the forward stays
  bit-identical: a = q(z).detach() + s(z) − s(z).detach(). Only sign-family
  activations (``Quantizer.forward_is_sign``) can take a surrogate; a model
  with other quantized activations raises ValueError; a model without any
  quantized activation has nothing to replace and the surrogate has no effect
  (the full-precision control, where every STE is the true gradient): it
  warns (:class:`SurrogateUnusedWarning`), since a sign module of the user's
  own that does not set ``forward_is_sign = True`` lands here too.
- ``losses(stacked)``: L for many parameter sets at once; ``stacked[name]`` has
  shape (pop, *param.shape); returns (pop,) float64.
- ``line_losses(direction, lrs)``: L(w − lr·d) for every lr, (n_lr,) float64.
- ``coordinate_deltas(steps, params=None)``: L(w + s_i·e_i) − L(w) for every
  studied coordinate i and every step s; name -> (n_steps, *shape) float64.
  A step is a number (the same s for every coordinate) or a mapping name ->
  number or tensor of the parameter's shape (a step per layer, e.g. a
  relative ε·mean|w_l|, or per coordinate, e.g. s_i = −2w_i, which negates
  w_i: a sign flip of a binary weight). This is what CDG, DG and the flip
  estimators need; returning the change rather than the loss avoids
  cancellation in (L(w+εe_i) − L(w−εe_i)).

The base class implements the last three generically on top of ``losses``
(chunked); subclasses with structure (the teacher–student toy) override them
with exact fast paths. :class:`ModuleObjective` builds an Objective from any
``nn.Module`` with ``torch.func.functional_call`` (+ ``vmap`` for ``losses``).
It refuses a module whose BatchNorm layers are in training mode with running
statistics: every evaluation would update those statistics, so the module
would change under the estimator (docs/api.md).
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.estimators.budget import flatten

Params = Dict[str, torch.Tensor]
SurrogateSpec = Union[None, str, Mapping[str, Any], nn.Module, Callable[[torch.Tensor], torch.Tensor]]

# Stacked parameter sets evaluated per call of ``losses`` in the generic paths:
# members x parameters <= this many numbers (16 MiB of float32), so memory stays
# bounded whatever the population or the lr grid.
GENERIC_CHUNK_NUMBERS = 1 << 22


class Objective(abc.ABC):
    """The problem an estimator works on; see the module docstring."""

    params: Params

    @abc.abstractmethod
    def loss(self, params: Optional[Mapping[str, torch.Tensor]] = None, surrogate: SurrogateSpec = None) -> torch.Tensor:
        """Scalar loss at ``params`` (default: the current ``self.params``), differentiable."""

    # --- generic implementations (override with fast paths) --------------------------

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L for every member of ``stacked`` (name -> (pop, *shape)); (pop,) float64. Generic: a loop."""
        pop = stacked_size(stacked, self.params)
        out = torch.empty(pop, dtype=torch.float64)
        with torch.no_grad():
            for k in range(pop):
                out[k] = float(self.loss({name: t[k] for name, t in stacked.items()}))
        return out

    def line_losses(self, direction: Mapping[str, torch.Tensor], lrs: Any) -> torch.Tensor:
        """L(w − lr·d) for every lr in ``lrs``; (n_lr,) float64. Generic: chunked ``losses``."""
        return generic_line_losses(self, direction, lrs)

    def coordinate_deltas(
        self, steps: Sequence[float], params: Optional[Mapping[str, torch.Tensor]] = None
    ) -> Params:
        """L(w + s·e_i) − L(w) for every coordinate i and step s; name -> (len(steps), *shape) float64."""
        return generic_coordinate_deltas(self, steps, params)

    # --- helpers -------------------------------------------------------------------

    def numel(self) -> int:
        """Number of studied coordinates."""
        return sum(p.numel() for p in self.params.values())

    def with_params(self, params: Optional[Mapping[str, torch.Tensor]]) -> Params:
        """``params`` completed with the current values of missing names; unknown names raise."""
        if params is None:
            return dict(self.params)
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"unknown parameter names {unknown}; studied parameters: {sorted(self.params)}")
        return {name: params.get(name, value) for name, value in self.params.items()}


# --- generic paths on top of ``losses`` ----------------------------------------------


def stacked_size(stacked: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> int:
    """The population size of ``stacked``, checking names and shapes."""
    if not stacked:
        raise ValueError("stacked parameters are empty")
    unknown = sorted(set(stacked) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; studied parameters: {sorted(params)}")
    sizes = set()
    for name, t in stacked.items():
        if tuple(t.shape[1:]) != tuple(params[name].shape):
            raise ValueError(
                f"stacked[{name!r}] must have shape (pop, {', '.join(map(str, params[name].shape))}), got {tuple(t.shape)}"
            )
        sizes.add(t.shape[0])
    if len(sizes) != 1:
        raise ValueError(f"stacked parameters disagree on the population size: {sorted(sizes)}")
    return sizes.pop()


def as_lr_tensor(lrs: Any) -> torch.Tensor:
    """``lrs`` as a 1-D float64 tensor (a scalar becomes one lr)."""
    t = torch.as_tensor(lrs, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(t).all():
        raise ValueError(f"lrs must be finite, got {lrs!r}")
    return t


def checked_direction(objective: Objective, direction: Mapping[str, torch.Tensor]) -> Params:
    """``direction`` with zeros for missing studied names; unknown names or wrong shapes raise."""
    unknown = sorted(set(direction) - set(objective.params))
    if unknown:
        raise ValueError(f"direction has unknown parameter names {unknown}; studied parameters: {sorted(objective.params)}")
    out: Params = {}
    for name, p in objective.params.items():
        d = direction.get(name)
        if d is None:
            out[name] = torch.zeros_like(p)
            continue
        d = d.detach()
        if tuple(d.shape) != tuple(p.shape):
            raise ValueError(f"direction[{name!r}] must have shape {tuple(p.shape)}, got {tuple(d.shape)}")
        out[name] = d.to(p.dtype)
    return out


Step = Union[float, Mapping[str, Union[float, torch.Tensor]]]


def step_values(step: Step, like: Mapping[str, torch.Tensor]) -> Dict[str, Union[float, torch.Tensor]]:
    """A step as name -> float or float64 tensor of the parameter's shape (a number applies to every name)."""
    if isinstance(step, Mapping):
        unknown = sorted(set(step) - set(like))
        if unknown:
            raise ValueError(f"step has unknown parameter names {unknown}; studied parameters: {sorted(like)}")
        out: Dict[str, Union[float, torch.Tensor]] = {}
        for name, ref in like.items():
            value = step.get(name, 0.0)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if tuple(value.shape) != tuple(ref.shape):
                    raise ValueError(f"step[{name!r}] must have shape {tuple(ref.shape)}, got {tuple(value.shape)}")
                out[name] = value.detach().double()
            else:
                out[name] = float(value)
        return out
    return {name: float(step) for name in like}


def step_vector(step: Step, like: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A step as one float64 vector over the flattened studied coordinates (``flatten`` order)."""
    values = step_values(step, like)
    device = next(iter(like.values())).device if like else None
    return torch.cat([
        v.reshape(-1).to(device) if isinstance(v, torch.Tensor)
        else torch.full((like[k].numel(),), v, dtype=torch.float64, device=device)
        for k, v in values.items()
    ])


def generic_line_losses(objective: Objective, direction: Mapping[str, torch.Tensor], lrs: Any) -> torch.Tensor:
    """L(w − lr·d) by evaluating ``objective.losses`` on chunks of the lr grid."""
    lrs64 = as_lr_tensor(lrs)
    d = checked_direction(objective, direction)
    w = objective.params
    chunk = max(1, GENERIC_CHUNK_NUMBERS // max(1, objective.numel()))
    out = torch.empty(len(lrs64), dtype=torch.float64)
    for start in range(0, len(lrs64), chunk):
        lr = lrs64[start : start + chunk]
        stacked = {}
        for name, p in w.items():
            lr_p = lr.to(device=p.device, dtype=p.dtype).reshape(-1, *([1] * p.dim()))  # (n, 1, ..., 1)
            stacked[name] = p.unsqueeze(0) - lr_p * d[name].unsqueeze(0)  # (n, *shape)
        out[start : start + len(lr)] = objective.losses(stacked)
    return out


def generic_coordinate_deltas(
    objective: Objective, steps: Sequence[Step], params: Optional[Mapping[str, torch.Tensor]] = None
) -> Params:
    """L(w + s_i·e_i) − L(w) by evaluating ``objective.losses`` on chunks of single-coordinate moves.

    L(w) is evaluated through the same ``losses`` path, so that the difference
    is exactly 0 for a move that changes nothing.
    """
    w = objective.with_params(params)
    n = sum(v.numel() for v in w.values())
    out = subset_coordinate_deltas(objective, steps, torch.arange(n), params)  # (n_steps, P), on the CPU
    return {name: t.reshape(len(out), *w[name].shape).to(w[name].device) for name, t in _split_rows(out, w).items()}


def subset_coordinate_deltas(
    objective: Objective,
    steps: Sequence[Step],
    coords: torch.Tensor,
    params: Optional[Mapping[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """L(w + s_i·e_i) − L(w) for the flat coordinates ``coords`` only; (n_steps, len(coords)) float64.

    Coordinates index the studied parameters flattened and concatenated in
    ``objective.params`` order (as :func:`lowbit.estimators.flatten`); a step
    is a number or a per-parameter mapping (see ``Objective.coordinate_deltas``).
    """
    w = objective.with_params(params)
    steps = [step_vector(s, w) for s in steps]  # (P,) float64 each
    base = flatten({k: v.detach() for k, v in w.items()})  # (P,)
    n = base.numel()
    coords = torch.as_tensor(coords, dtype=torch.long).reshape(-1)
    if len(coords) and (int(coords.min()) < 0 or int(coords.max()) >= n):
        raise ValueError(f"coordinates must lie in [0, {n}), got min {int(coords.min())}, max {int(coords.max())}")
    base_loss = float(objective.losses({k: v.detach().unsqueeze(0) for k, v in w.items()})[0])
    chunk = max(1, GENERIC_CHUNK_NUMBERS // max(1, n))
    out = torch.empty(len(steps), len(coords), dtype=torch.float64)
    for si, s in enumerate(steps):
        for start in range(0, len(coords), chunk):
            idx = coords[start : start + chunk]
            members = base.unsqueeze(0).repeat(len(idx), 1)  # (m, P)
            rows, cols = torch.arange(len(idx), device=members.device), idx.to(members.device)
            members[rows, cols] += s[cols].to(members.dtype)
            stacked = {k: v.reshape(len(idx), *w[k].shape) for k, v in _split_rows(members, w).items()}
            out[si, start : start + len(idx)] = objective.losses(stacked) - base_loss
    return out


def _split_rows(rows: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Split the columns of ``rows`` (m, P) into name -> (m, numel)."""
    out: Params = {}
    offset = 0
    for name, ref in like.items():
        out[name] = rows[:, offset : offset + ref.numel()]
        offset += ref.numel()
    return out


# --- surrogates ----------------------------------------------------------------------


def resolve_surrogate(spec: SurrogateSpec, **params: Any) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """A callable whose backward is the wanted surrogate derivative, or None (the model's own backward).

    ``spec``: None, a quantizer registry name (``"ste"``, ``"swish_sign"``, ...)
    with ``params``, a dict ``{"name": ..., **params}``, an ``nn.Module`` or a
    callable. Unknown names raise (a ValueError listing the valid names).
    """
    from lowbit.quant import get_quantizer

    if spec is None:
        if params:
            raise ValueError(f"surrogate parameters {sorted(params)} given without a surrogate")
        return None
    if isinstance(spec, str):
        return get_quantizer(spec, **params)
    if isinstance(spec, Mapping):
        merged = {**dict(spec), **params}
        name = merged.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"a surrogate dict needs a string 'name' key, got {dict(spec)!r}")
        return get_quantizer(name, **merged)
    if callable(spec):
        if params:
            raise ValueError(f"surrogate parameters {sorted(params)} cannot be applied to a module or callable")
        return spec
    raise ValueError(f"surrogate must be None, a name, a dict, a module or a callable, got {spec!r}")


class SurrogateUnusedWarning(UserWarning):
    """A surrogate was asked for on a model with no sign activation: it changes nothing."""


def check_no_training_batchnorm(module: nn.Module) -> None:
    """Refuse ``module`` if a BatchNorm is in training mode with running statistics (each loss would update them)."""
    training_bn = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None
    ]
    if training_bn:
        raise ValueError(
            f"BatchNorm layers {training_bn[:3]}{'...' if len(training_bn) > 3 else ''} are in training mode with "
            "running statistics, so every loss evaluation would update them; call "
            "lowbit.estimators.use_batch_statistics(module) (batch statistics, no buffers) or module.eval() first"
        )


def is_sign_activation(module: Any) -> bool:
    """True for a quantizer whose forward is exactly sign(x) with sign(0) = +1."""
    return bool(getattr(module, "forward_is_sign", False))


def surrogate_forward_is_sign(surrogate: Any) -> bool:
    return is_sign_activation(surrogate)


def with_surrogate(z: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor], surrogate: Callable) -> torch.Tensor:
    """activation(z) in the forward, surrogate's derivative in the backward.

    A sign-family surrogate has the same forward, so it is applied directly;
    anything else goes through the straight-through composite
    a = q(z).detach() + (s(z) − s(z).detach()), whose value is exactly q(z).
    """
    if is_sign_activation(activation) and surrogate_forward_is_sign(surrogate):
        return surrogate(z)
    s = surrogate(z)
    return activation(z).detach() + (s - s.detach())


# --- an Objective for any nn.Module --------------------------------------------------


class ModuleObjective(Objective):
    """An Objective for any ``nn.Module``: L(w) = loss_fn(module(inputs; w), targets).

    Args:
        module: the network; its current parameters and buffers are the fixed part.
        batch: ``(inputs, targets)``; ``inputs`` a tensor or a tuple of tensors.
        loss_fn: ``loss_fn(output, targets) -> scalar``; default MSE (mean).
        params: names of the studied parameters (default: every parameter
            with ``requires_grad``); their current values are snapshotted.
        activations: names of the submodules whose backward a surrogate
            replaces (default: every sign-family quantizer submodule).
        chunk: parameter sets per ``vmap`` call in ``losses`` (default: by size).

    ``losses`` vmaps ``functional_call`` over chunks of the population; if the
    module cannot be vmapped it falls back to a loop.
    """

    def __init__(
        self,
        module: nn.Module,
        batch: Tuple[Any, torch.Tensor],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
        params: Optional[Iterable[str]] = None,
        activations: Optional[Iterable[str]] = None,
        chunk: Optional[int] = None,
    ) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
        check_no_training_batchnorm(module)
        self.module = module
        inputs, self.targets = batch
        self.inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        self.loss_fn = loss_fn
        named = dict(module.named_parameters())
        names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(f"module has no parameters {missing}; its parameters: {sorted(named)}")
        if not names:
            raise ValueError("no parameters to study")
        self.params = {n: named[n].detach().clone() for n in names}
        self.fixed = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.fixed.update({n: b for n, b in module.named_buffers()})
        submodules = dict(module.named_modules())
        if activations is None:
            self.activations = [n for n, m in submodules.items() if is_sign_activation(m)]
        else:
            self.activations = list(activations)
            missing = [n for n in self.activations if n not in submodules]
            if missing:
                raise ValueError(f"module has no submodules {missing}")
        self._other_quantizers = [
            n for n, m in submodules.items() if _is_quantizer(m) and n not in self.activations and n != ""
        ]
        self.chunk = chunk
        self._vmap_ok: Optional[bool] = None
        self._warned_unused = False  # SurrogateUnusedWarning once per objective

    def _state(self, params: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {**self.fixed, **params}

    def loss(self, params: Optional[Mapping[str, torch.Tensor]] = None, surrogate: SurrogateSpec = None) -> torch.Tensor:
        params = self.with_params(params)
        s = resolve_surrogate(surrogate)
        if s is None:
            out = torch.func.functional_call(self.module, self._state(params), self.inputs)
            return self.loss_fn(out, self.targets)
        if not self.activations and self._other_quantizers:
            raise ValueError(
                "a surrogate replaces the backward of sign activations only; this model's quantizers "
                f"{self._other_quantizers} are not sign-family (pass surrogate=None)"
            )
        if not self.activations and not self._warned_unused:
            self._warned_unused = True
            warnings.warn(
                f"the surrogate {_describe(surrogate)} replaces nothing: {type(self.module).__name__} has no sign "
                "activation (no submodule with forward_is_sign = True), so this is the model's own gradient. "
                "A sign module of your own takes surrogates once its class sets forward_is_sign = True (docs/api.md)",
                SurrogateUnusedWarning,
                stacklevel=2,
            )
        submodules = dict(self.module.named_modules())
        handles = [
            submodules[n].register_forward_hook(_surrogate_hook(submodules[n], s)) for n in self.activations
        ]
        try:
            out = torch.func.functional_call(self.module, self._state(params), self.inputs)
        finally:
            for h in handles:
                h.remove()
        return self.loss_fn(out, self.targets)

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pop = stacked_size(stacked, self.params)
        full = {name: stacked.get(name, p.unsqueeze(0).expand(pop, *p.shape)) for name, p in self.params.items()}
        chunk = self.chunk or max(1, GENERIC_CHUNK_NUMBERS // max(1, self.numel()))
        out = torch.empty(pop, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, pop, chunk):
                part = {k: v[start : start + chunk] for k, v in full.items()}
                out[start : start + chunk] = self._losses_chunk(part)
        return out

    def _losses_chunk(self, part: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self._vmap_ok is not False:
            try:
                def one(p):
                    out = torch.func.functional_call(self.module, self._state(p), self.inputs)
                    return self.loss_fn(out, self.targets)

                values = torch.func.vmap(one)(dict(part)).double()
                self._vmap_ok = True
                return values
            except Exception:  # a module vmap cannot handle: fall back to the loop below
                if self._vmap_ok:
                    raise
                self._vmap_ok = False
        n = next(iter(part.values())).shape[0]
        return torch.tensor([float(self.loss({k: v[i] for k, v in part.items()})) for i in range(n)], dtype=torch.float64)


def _describe(surrogate: SurrogateSpec) -> str:
    if isinstance(surrogate, str):
        return repr(surrogate)
    if isinstance(surrogate, Mapping):
        return repr(surrogate.get("name"))
    return type(surrogate).__name__


def _is_quantizer(module: nn.Module) -> bool:
    try:
        from lowbit.quant import Quantizer
    except ImportError:  # pragma: no cover - quant is a lower layer and always present
        return False
    return isinstance(module, Quantizer)


def _surrogate_hook(activation: nn.Module, surrogate: Callable):
    def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        z = inputs[0]
        if is_sign_activation(activation) and surrogate_forward_is_sign(surrogate):
            return surrogate(z)
        s = surrogate(z)
        return output.detach() + (s - s.detach())

    return hook


__all__ = [
    "GENERIC_CHUNK_NUMBERS",
    "ModuleObjective",
    "Objective",
    "SurrogateUnusedWarning",
    "as_lr_tensor",
    "check_no_training_batchnorm",
    "checked_direction",
    "generic_coordinate_deltas",
    "generic_line_losses",
    "is_sign_activation",
    "resolve_surrogate",
    "Step",
    "stacked_size",
    "step_values",
    "step_vector",
    "subset_coordinate_deltas",
    "with_surrogate",
]
