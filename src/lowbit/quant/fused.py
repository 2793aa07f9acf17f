"""Fused sign quantizers: one elementwise pass forward and one backward (C++, ``csrc/sign.cpp``).

ATen writes the binary activation of a layer in three passes over memory (``ge`` into a
float tensor, ``* 2``, ``- 1``) and its clipped surrogate gradient in three more
(``|x|``, ``<= clip``, ``threshold_backward``), and saves the float input for the
backward. The kernels here do each direction in one pass and save a 1-byte mask:

    forward   y = sign(x) in {-1, +1} (sign(0) = +1, NaN -> -1, -0 -> +1),
              m = 1{|x| <= bound}                        (written in the same pass)
    backward  grad_x = m * clamp(scale * grad_y, -c, c)  (a selection: 0, not 0 * inf)

which covers ``ste`` (no mask, the gradient passes unchanged), ``ste_clipped``
(bound = clip), ``steep`` (bound = 1 / slope, scale = slope) and ``vste`` (c =
grad_clip); ``approx_sign`` keeps x and computes grad (2 - 2|x|) 1{|x| <= 1} in one
pass. The weight quantizers ``xnor_weight`` (q = alpha_c sign(W), alpha_c = mean |W| of
output channel c) and ``magnitude_aware_sign`` write q in one pass from ATen's alpha;
xnor_weight's backward, dL/dW = alpha_c g + sgn(W) (sum_c g sign(W)) / n, is one pass
around ATen's channel sum.

Every kernel does the same float operations in the same order as the ATen form it
replaces, so values and gradients are bit for bit those of the unfused path
(tests/test_fused_sign.py), NaN, +-0 and inf included. ``swish_sign`` and the k-bit
quantizers are not fused.

When: eager CPU float32 / float64 tensors, contiguous or channels_last. Under ``torch.func``
transforms, ``torch.compile``, ``torch.jit.trace``, fake tensors and dispatch modes (export),
on other devices and dtypes, and where the C++ build failed (no compiler), the callers keep
the ATen path, which gives the same values. ``LOWBIT_FUSED_SIGN=0`` (read once) or
:func:`set_fused` / :func:`use_fused` switch the kernels off, e.g. to compare.
A double backward (``create_graph=True``) runs the same formulas in differentiable ATen
operations; forward-mode dual tensors take the ATen path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch.autograd import forward_ad

from lowbit.native import NativeExtension

FUSED_ENV = "LOWBIT_FUSED_SIGN"
SOURCE = Path(__file__).resolve().parent / "csrc" / "sign.cpp"
CFLAGS = ["-O3", "-ffp-contract=off"]  # no FMA: the same roundings as the ATen expressions

EXTENSION = NativeExtension(
    "lowbit_sign",
    [SOURCE],
    CFLAGS,
    purpose="fused sign kernels",
    fallback="binary layers use the ATen path (identical results, slower).",
)

_FLOAT_TYPES = (torch.float32, torch.float64)
_enabled: Optional[bool] = None  # None: not read from the environment yet


def fused_enabled() -> bool:
    """Whether the fused kernels are switched on (``LOWBIT_FUSED_SIGN``, default on; :func:`set_fused`)."""
    global _enabled
    if _enabled is None:
        value = os.environ.get(FUSED_ENV, "1").strip().lower()
        if value not in ("0", "1", "false", "true", "off", "on", ""):
            raise ValueError(f"{FUSED_ENV} must be 1 or 0 (on or off), got {value!r}")
        _enabled = value not in ("0", "false", "off")
    return _enabled


def set_fused(enabled: bool) -> None:
    """Switch the fused kernels on or off for this process."""
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    _enabled = enabled


@contextlib.contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """The fused kernels on or off inside the block (``with use_fused(False): ...`` gives the ATen path)."""
    previous = fused_enabled()
    set_fused(enabled)
    try:
        yield
    finally:
        set_fused(previous)


def fused_available() -> bool:
    """Whether the fused kernels run in this process: switched on, and the C++ build loaded."""
    return fused_enabled() and EXTENSION.load() is not None


def _is_eager(x: torch.Tensor) -> bool:
    # A plain eager tensor: not a torch.func-wrapped one, not while compiling or tracing, not under
    # a dispatch mode, not a forward-mode dual tensor (the ATen path carries tangents).
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if type(x) not in (torch.Tensor, torch.nn.Parameter) or torch._C._len_torch_dispatch_stack() > 0:
        return False  # fake, functional or other subclass tensors, or a dispatch mode (make_fx): no data to read
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return forward_ad._current_level < 0 or forward_ad.unpack_dual(x).tangent is None


def _dense(x: torch.Tensor) -> bool:
    # The dense layouts the kernels walk in storage order (the C++ side checks the general case).
    if x.is_contiguous():
        return True
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _kernels_for(x: torch.Tensor) -> Any:
    """The extension if the fused kernels apply to ``x`` (module docstring, "When"), else None."""
    if not (
        isinstance(x, torch.Tensor)
        and x.device.type == "cpu"
        and x.dtype in _FLOAT_TYPES
        and fused_enabled()
        and _is_eager(x)
        and _dense(x)
    ):
        return None
    return EXTENSION.load()


# --- activations ---------------------------------------------------------------------


class SignRule(NamedTuple):
    """A fused surrogate: grad_x = 1{|x| <= bound} clamp(scale grad, -clip, clip), or Bi-Real's from x.

    ``bound`` None: no mask (the identity STE); ``clip`` None: no clamp; ``approx``: the
    ``approx_sign`` surrogate, computed from the saved x.
    """

    bound: Optional[float] = None
    scale: float = 1.0
    clip: Optional[float] = None
    approx: bool = False


def sign_rule(surrogate: str, params: dict) -> Optional[SignRule]:
    """The fused form of ``sign_ste``'s surrogate ``surrogate`` with validated ``params``, or None."""
    if surrogate == "ste":
        return SignRule()
    if surrogate == "ste_clipped":
        return SignRule(bound=params["clip"])
    if surrogate == "steep":
        return SignRule(bound=1.0 / params["slope"], scale=params["slope"])
    if surrogate == "vste":
        return SignRule(bound=params["clip"], clip=params["grad_clip"])
    if surrogate == "approx_sign":
        return SignRule(approx=True)
    return None  # swish_sign: transcendental functions, left to ATen


def _rule_grad_aten(rule: SignRule, saved: Optional[torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
    """The rule's gradient in differentiable ATen operations (a double backward, a gradient in another layout)."""
    if rule.approx:
        magnitude = saved.abs()
        return torch.where(magnitude <= 1.0, grad * (2.0 - 2.0 * magnitude), 0.0)
    if rule.bound is None:
        return grad
    value = grad * rule.scale if rule.scale != 1.0 else grad
    if rule.clip is not None:
        value = value.clamp(-rule.clip, rule.clip)
    return torch.where(saved, value, 0.0)


class _FusedSign(torch.autograd.Function):
    """y = sign(x) with the surrogate ``rule``: one pass forward (y and the mask), one backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: SignRule, kernels: Any) -> torch.Tensor:
        ctx.rule, ctx.kernels = rule, kernels
        needs_saved = ctx.needs_input_grad[0] and rule.bound is not None
        if not needs_saved:
            y = kernels.sign_forward(x, -1.0)[0]
            saved = x if ctx.needs_input_grad[0] and rule.approx else None
        else:
            y, saved = kernels.sign_forward(x, rule.bound)
        if saved is not None:
            ctx.save_for_backward(saved)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rule = ctx.rule
        saved = ctx.saved_tensors[0] if ctx.saved_tensors else None
        if rule.bound is None and not rule.approx:
            return grad, None, None
        fits = grad.dtype in _FLOAT_TYPES and grad.device.type == "cpu" and grad.stride() == saved.stride()
        if torch.is_grad_enabled() or not (fits and _dense(grad)):
            # a double backward (create_graph=True) or a gradient in another layout
            return _rule_grad_aten(rule, saved, grad), None, None
        if rule.approx:
            return ctx.kernels.approx_sign_grad(grad, saved), None, None
        clip = -1.0 if rule.clip is None else rule.clip
        return ctx.kernels.masked_grad(grad, saved, rule.scale, clip), None, None


def fused_sign_ste(x: torch.Tensor, rule: SignRule) -> Optional[torch.Tensor]:
    """sign(x) with ``rule`` through the fused kernels, or None where they do not apply (then use ATen)."""
    kernels = _kernels_for(x)
    if kernels is None:
        return None
    return _FusedSign.apply(x, rule, kernels)


def fused_hard_sign(x: torch.Tensor) -> Optional[torch.Tensor]:
    """sign(x) in {-1, +1} in one pass (no autograd), or None where the kernels do not apply."""
    kernels = _kernels_for(x)
    if kernels is None:
        return None
    return kernels.sign_forward(x.detach(), -1.0)[0]


# --- weights -------------------------------------------------------------------------


def _channel_scale(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """mean |W| per output channel (C, 1, ..., 1), or over all of W (0-d): ``lowbit.quant.mean_abs``'s ATen ops."""
    if per_channel:
        return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return w.abs().mean()


class _FusedXNORWeight(torch.autograd.Function):
    """q = alpha_c sign(W) with alpha differentiated (``xnor_weight``): one pass each way around ATen's reductions."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, per_channel: bool, kernels: Any) -> torch.Tensor:
        alpha = _channel_scale(w, per_channel)
        ctx.save_for_backward(w, alpha)
        ctx.kernels = kernels
        return kernels.scaled_sign(w, alpha.reshape(-1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, alpha = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward: autograd through the unfused form
            from lowbit.quant.weights import xnor_weight

            with use_fused(False):
                q = xnor_weight(w, per_channel=alpha.dim() > 0)
            return torch.autograd.grad(q, w, grad, create_graph=True)[0], None, None
        grad = grad.contiguous()
        # autograd's order: d/d alpha = sum over the channel of g sign(W) (MulBackward's sum_to),
        # MeanBackward divides by n, AbsBackward multiplies by sgn(W); d/d sign(W) = g alpha.
        per_alpha = ctx.kernels.signed_grad(grad, w).sum_to_size(alpha.shape) / (w.numel() // alpha.numel())
        return ctx.kernels.xnor_weight_grad(grad, w, alpha.reshape(-1), per_alpha.reshape(-1)), None, None


class _FusedMagnitudeAwareSign(torch.autograd.Function):
    """q = alpha_c sign(W), alpha = mean |W| a constant; dq/dW := alpha_c 1{|W| <= clip}."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, clip: float, kernels: Any) -> torch.Tensor:
        alpha = _channel_scale(w, True)
        ctx.save_for_backward(w, alpha)
        ctx.clip, ctx.kernels = clip, kernels
        return kernels.scaled_sign(w, alpha.reshape(-1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, alpha = ctx.saved_tensors
        if torch.is_grad_enabled():
            return torch.where(w.abs() <= ctx.clip, grad * alpha, 0.0), None, None
        return ctx.kernels.clipped_scaled_grad(grad.contiguous(), w, alpha.reshape(-1), ctx.clip), None, None


def _weight_kernels(w: torch.Tensor, per_channel: bool) -> Any:
    # Per-channel scales need a channel dim (a 1-D weight is its own scale: left to ATen).
    if not isinstance(w, torch.Tensor) or (per_channel and w.dim() < 2) or not w.is_contiguous():
        return None
    return _kernels_for(w)


def fused_xnor_weight(w: torch.Tensor, per_channel: bool) -> Optional[torch.Tensor]:
    """``xnor_weight(w)`` through the fused kernels, or None where they do not apply."""
    kernels = _weight_kernels(w, per_channel)
    return None if kernels is None else _FusedXNORWeight.apply(w, per_channel, kernels)


def fused_magnitude_aware_sign(w: torch.Tensor, clip: float) -> Optional[torch.Tensor]:
    """``magnitude_aware_sign(w, clip)`` through the fused kernels, or None where they do not apply."""
    kernels = _weight_kernels(w, True)
    return None if kernels is None else _FusedMagnitudeAwareSign.apply(w, clip, kernels)


__all__ = [
    "EXTENSION",
    "FUSED_ENV",
    "SignRule",
    "fused_available",
    "fused_enabled",
    "fused_hard_sign",
    "fused_magnitude_aware_sign",
    "fused_sign_ste",
    "fused_xnor_weight",
    "set_fused",
    "sign_rule",
    "use_fused",
]
