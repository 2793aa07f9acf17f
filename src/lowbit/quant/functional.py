"""The functional core shared by every quantizer.

Each quantizer is a pair of pure functions: ``forward_fn(x, *aux) -> q(x)`` (the
quantization) and ``backward_fn(x, grad) -> grad_x`` (the surrogate derivative
applied to the upstream gradient). :func:`quantize_with_surrogate` joins them in
one ``torch.autograd.Function`` written in the ``setup_context`` form with
``generate_vmap_rule = True``, so ``torch.func.vmap``, ``torch.func.grad``,
forward mode (``jvp``, ``jacfwd``, ``hessian``) and their compositions work
through every quantizer.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Optional

import torch

from lowbit.quant.fused import fused_hard_sign

# torch 2.11's Dynamo gives a traced autograd.Function zero gradients when its
# forward returns a tensor that is also one of its intermediates (the same
# TensorImpl, as ``t.to(t.dtype)`` returns): the gradient edge is routed to the
# intermediate's output slot (pytorch/pytorch#180642, fixed in 2.12). On that
# release the traced forward returns a copy (compiled code only; eager is unaffected).
_COPY_TRACED_OUTPUT = (2, 11) <= torch.__version__ < (2, 12)  # TorchVersion compares with tuples

ForwardFn = Callable[..., torch.Tensor]
BackwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _QuantizeWithSurrogateTraced(torch.autograd.Function):
    """forward = ``forward_fn(x, *aux)``; backward = ``backward_fn(x, grad)``; no forward mode.

    ``aux`` are extra tensors the forward needs (e.g. uniform noise for
    stochastic rounding); they receive no gradient. This is the form
    TorchDynamo traces: it cannot trace a Function that defines a custom
    ``jvp``, and would break the graph at every quantizer (a binary ResNet-18
    then compiles as ~30 separately guarded pieces, each block's forward
    recompiled per shape until the recompile limit sends it back to eager).
    Forward-mode AD is not used inside compiled code.
    """

    @staticmethod
    def forward(x, forward_fn, backward_fn, *aux):
        out = forward_fn(x, *aux)
        return out.clone() if _COPY_TRACED_OUTPUT and torch.compiler.is_compiling() else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, backward_fn, *aux = inputs
        ctx.save_for_backward(x)
        ctx.backward_fn = backward_fn
        ctx.num_aux = len(aux)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (ctx.backward_fn(x, grad), None, None) + (None,) * ctx.num_aux


class _QuantizeWithSurrogate(_QuantizeWithSurrogateTraced):
    """The eager form: :class:`_QuantizeWithSurrogateTraced` plus forward mode and a generated vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        _QuantizeWithSurrogateTraced.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        # Forward mode (jacfwd, hessian): the surrogate Jacobian is diagonal, so
        # J t = J^T t = backward_fn(x, t). For ``vste``, whose backward clips
        # the incoming gradient, this clips the tangent the same way.
        (x,) = ctx.saved_tensors
        return ctx.backward_fn(x, x_tangent)


def quantize_with_surrogate(
    x: torch.Tensor, forward_fn: ForwardFn, backward_fn: BackwardFn, *aux: torch.Tensor
) -> torch.Tensor:
    """``forward_fn(x, *aux)`` in the forward pass, ``backward_fn(x, grad)`` in the backward.

    Both functions must be pure torch code (no in-place ops on inputs, no
    ``.item()``) so that the generated vmap rule applies.

    While ``torch.compile`` / ``torch.export`` trace a forward that needs no
    gradient (no grad mode, or ``x`` does not require grad), this is
    ``forward_fn(x, *aux)`` itself: the surrogate is never used there, so an
    inference graph compiles whole (``fullgraph=True``). A traced forward that
    needs the gradient (``torch.compile`` of a training step) goes through
    :class:`_QuantizeWithSurrogateTraced`, the same Function without forward
    mode, which Dynamo traces into the graph.
    """
    if torch.compiler.is_compiling():
        if not (torch.is_grad_enabled() and x.requires_grad):
            return forward_fn(x, *aux)
        return _QuantizeWithSurrogateTraced.apply(x, forward_fn, backward_fn, *aux)
    return _QuantizeWithSurrogate.apply(x, forward_fn, backward_fn, *aux)


def eager_tensor(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain eager tensor, so that ``out=`` kernels may write into fresh tensors.

    False under ``torch.func`` transforms (vmap, grad, jvp wrap their tensors and have no
    batching rule for ``out=`` variants), while ``torch.compile`` traces (it fuses the
    plain form anyway) and for ``torch.fx`` proxies.
    """
    if not isinstance(x, torch.Tensor) or torch.compiler.is_compiling():  # e.g. a torch.fx Proxy
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1} with sign(0) = +1 (unlike ``torch.sign``), same dtype as ``x``.

    NaN maps to -1 (``NaN >= 0`` is false); -0 maps to +1 (``-0 >= 0`` is true).
    On eager CPU float32/float64 tensors one C++ pass writes it (``lowbit.quant.fused``);
    on other eager float tensors (and without the C++ build) it is ``ge(x, 0)`` written as 0/1 floats, times 2,
    minus 1: a float comparison, 10-15x faster on CPU than
    ``torch.where(x >= 0, 1, -1)`` (the form used under transforms and compile,
    which gives the same values; BENCHMARKS.md, "Binary layers").
    """
    fused = fused_hard_sign(x)  # one pass in C++ where lowbit.quant.fused applies
    if fused is not None:
        return fused
    if eager_tensor(x) and x.is_floating_point():
        return torch.ge(x, 0, out=torch.empty_like(x)).mul_(2).sub_(1)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def max_abs(x: torch.Tensor) -> torch.Tensor:
    """max |x| over every entry (0-d), same dtype as ``x``.

    The reduction names its dims, ``amax(dim=(0, ..., n-1))``: the ONNX exporter
    has no translation for ``amax`` without ``dim``.
    """
    return x.abs().amax(dim=tuple(range(x.dim())))


def round_half_away(y: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (0.5 -> 1, -0.5 -> -1, 1.5 -> 2).

    Chosen over ``torch.round`` (ties to even) so that the quantization grid is
    regular (every bin has the same width) and odd-symmetric, q(-x) = -q(x).
    The fractional part is compared exactly (``|y| - floor(|y|)`` is exact in
    floating point), unlike ``floor(y + 0.5)``, which rounds the largest float
    below 0.5 up to 1.
    """
    magnitude = y.abs()
    whole = torch.floor(magnitude)
    rounded = whole + (magnitude - whole >= 0.5).to(y.dtype)
    # rounded * sign(y) equals copysign(rounded, y) in value (y = -0 gives +0 instead of -0),
    # in ops the ONNX exporter translates (copysign decomposes to prims.signbit, which it does not).
    return rounded * torch.sign(y)


def pass_where(condition: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` where ``condition`` holds, 0 elsewhere (0, not grad * 0, so inf does not become NaN).

    Eager float gradients go through ``threshold_backward(grad, mask, 0.5)`` (0
    where the 0/1 float mask is <= 0.5, ``grad`` elsewhere: a selection, like
    ``torch.where``, which is 5x slower on CPU).
    """
    if eager_tensor(grad) and eager_tensor(condition) and grad.is_floating_point():
        return torch.ops.aten.threshold_backward(grad, condition.to(grad.dtype), 0.5)
    return torch.where(condition, grad, 0.0)


def pass_within(x: torch.Tensor, bound: float, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` where |x| <= bound, 0 elsewhere (NaN x: 0); = ``pass_where(x.abs() <= bound, grad)``.

    The eager path writes the comparison straight into a float mask (no bool
    tensor, whose kernels are slow on CPU) and selects with ``threshold_backward``.
    """
    if eager_tensor(x) and eager_tensor(grad) and grad.dtype == x.dtype and x.shape == grad.shape and x.is_floating_point():
        # One fresh tensor for the three passes (fresh large tensors cost page faults):
        # |x|, then the 0/1 mask over it, then the selected gradient over the mask.
        buffer = x.detach().abs()
        torch.le(buffer, bound, out=buffer)  # 1.0 inside, 0.0 outside or NaN
        if torch.is_grad_enabled() and grad.requires_grad:  # a double backward: keep the graph (no out=)
            return torch.ops.aten.threshold_backward(grad, buffer, 0.5)
        return torch.ops.aten.threshold_backward.grad_input(grad, buffer, 0.5, grad_input=buffer)
    return pass_where(x.abs() <= bound, grad)


def identity_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The identity straight-through estimator: dq/dx := 1."""
    return grad


def uniform_noise(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U[0, 1) noise shaped like ``x`` on its device, in float32 whatever ``x``'s dtype.

    float32 because a bfloat16 uniform has only 8 significant bits, which would
    bias probabilities compared against it. ``generator`` must live on
    ``x.device``. Under ``torch.func.vmap`` pass ``randomness="different"`` (or
    ``"same"``); vmap's default ``"error"`` refuses random draws.
    """
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)


# --- parameter validation (raised at construction, quoting the value) -------------


def check_positive(name: str, value: float) -> float:
    """``value`` as a float if it is a real number > 0, else ValueError quoting it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_finite(name: str, value: float) -> float:
    """``value`` as a float if it is a finite real number, else ValueError quoting it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """``value`` as a float if it is a finite real number >= 0, else ValueError quoting it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_bool(name: str, value: bool) -> bool:
    """``value`` if it is a bool, else ValueError quoting it (so 0/1/"yes" are not taken as flags)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def check_generator(value: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """``value`` if it is None or a ``torch.Generator``, else ValueError quoting it."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {value!r}")
    return value


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else ValueError quoting it."""
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ValueError quoting it and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
