"""k-bit layers: uniform k-bit weights and signed k-bit activations.

    y = Q_w(W) . Q_a(x) + b

- ``Q_w`` is ``uniform_weight(bits=w_bits)`` from ``lowbit.quant``
  (deterministic rounding; pass ``stochastic_weights=True`` for stochastic).
- ``Q_a`` is :class:`SignedUniformActivation` (defined here): the input of a
  layer in the middle of a network is signed (it follows a BatchNorm or a
  residual sum, not only a ReLU), so an unsigned [0, 1] quantizer such as DoReFa
  would clip away half of it. With n = 2^(k-1) - 1 and a per-tensor max-abs
  scale (a constant in the backward pass),

      Q_a(x) = s round(x / s),  s = max|x| / n   (values s * {-n, ..., 0, ..., n}),
      dQ_a/dx := 1                               (straight-through; nothing is clipped),

  i.e. the grid of ``uniform_weight`` applied to the activations: 2^k - 1 of
  the 2^k codes, so that 0 is exact and the grid is odd-symmetric. This is the
  symmetric per-tensor scheme of 8-bit training (Banner et al., "Scalable
  Methods for 8-bit Training of Neural Networks", NeurIPS 2018). The scale is
  taken over the whole tensor, batch included, so an example's quantization
  depends on the rest of its batch.

Both need bits >= 2 (a symmetric grid with 0); for 1 bit use the binary layers.
``w_bits`` / ``a_bits`` = None (or >= 32) leaves that operand in float. These are
the names :func:`lowbit.nn.quantize_model` and the ``quant:`` config section use
too (with ``g_bits`` / ``e_bits``: WAGE's W, A, G, E); the former ``weight_bits`` /
``act_bits`` keywords still work but raise a DeprecationWarning.

Low-bit training (WAGE-style, ``lowbit.quant.lowbit_training``): ``g_bits`` and
``e_bits`` (default None = float, the behaviour above) quantize the two
backward tensors of the layer,

    E = dL/dy  (the error flowing into the layer):  y = QE(op(Q_a(x), Q_w(QG(W))) + b)
    G = dL/dW  (the weight gradient):               W.grad += Q_g(dL/dQ_w(W))

where QE and QG are identity in the forward pass and quantize the gradient in
the backward pass (:class:`lowbit.quant.GradientQuantizer`). So dL/dx and G are
computed from the quantized error and the quantized operands, G is then
quantized itself, and the optimizer adds it to the float32 latent weight
(Banner et al.: float accumulation). We quantize G inside the graph rather than
with ``weight.register_hook`` so that it needs no handles, survives
``copy.deepcopy`` and ``state_dict`` round trips, and also applies under
``torch.func.functional_call``. The bias gradient (a sum of quantized errors)
stays float, as the bias itself does.

``scale`` ("maxabs" | "pow2") picks the per-tensor step of all four grids;
``g_rounding`` (default "stochastic", as WAGE) and ``e_rounding`` (default
"nearest", as WAGE) the rounding of G and E; ``g_clip`` / ``e_clip`` = "direction"
turns on direction-sensitive clipping (Zhu et al. 2020), "none" uses max|g|.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.binary import QuantizedWeightLayer
from lowbit.nn.spec import FLOAT_BITS
from lowbit.quant import (
    CLIPS,
    DEFAULT_CLIP_FRACTIONS,
    ROUNDINGS,
    SCALES,
    GradientQuantizer,
    UniformGridQuantizer,
    get_quantizer,
    uniform_weight,
)


def signed_uniform_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric k-bit quantization with a per-tensor max-abs scale and a straight-through gradient.

    q = s * clamp(round(x / s), -n, n) with n = 2^(bits-1) - 1 and s = max |x| / n
    (a constant in the backward pass); dq/dx := 1. Ties round away from zero; a
    zero tensor maps to zero; any shape; output dtype = input dtype. This is
    exactly ``lowbit.quant.uniform_weight``'s grid, applied to activations.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise ValueError(f"a signed uniform quantizer needs an integer bits >= 2, got {bits!r}")
    return uniform_weight(x, bits)


class SignedUniformActivation(nn.Module):
    """Module form of :func:`signed_uniform_quantize`; ``bits`` declares the precision."""

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
            raise ValueError(f"bits must be an integer >= 2, got {bits!r}")
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return signed_uniform_quantize(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _check_bits(name: str, bits: Optional[int], minimum: int) -> Optional[int]:
    """None for float (None or >= 32 bits), else the validated integer."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < minimum:
        binary = " (1 bit is a binary layer: use BinaryLinear / BinaryConv2d or lowbit.nn.binarize)" if bits == 1 else ""
        raise ValueError(f"{name} must be None or an integer >= {minimum}, got {bits!r}{binary}")
    return None if bits >= FLOAT_BITS else bits


_UNSET: Any = object()  # marks a deprecated keyword that was not passed


def _bits_spelling(w_bits: Optional[int], a_bits: Optional[int], weight_bits: Any, act_bits: Any) -> tuple:
    """(w_bits, a_bits), accepting the deprecated ``weight_bits`` / ``act_bits`` with a DeprecationWarning."""
    resolved = []
    for new, value, old, old_value in (("w_bits", w_bits, "weight_bits", weight_bits), ("a_bits", a_bits, "act_bits", act_bits)):
        if old_value is not _UNSET:
            warnings.warn(
                f"{old}= is deprecated; use {new}= (the spelling of quantize_model and the quant: config)",
                DeprecationWarning,
                stacklevel=3,
            )
            if value != 8:  # the new keyword was set as well (to something other than its default)
                raise TypeError(f"give {new} or its deprecated spelling {old}, not both")
            value = old_value
        resolved.append(value)
    return tuple(resolved)


def _weight_quantizer(bits: Optional[int], stochastic: bool, scale: str = "maxabs") -> Optional[nn.Module]:
    if bits is None:
        return None
    if scale == "maxabs":
        return get_quantizer("uniform_weight", bits=bits, stochastic=stochastic)
    return UniformGridQuantizer(bits, scale=scale, stochastic=stochastic)


def _act_quantizer(bits: Optional[int], scale: str = "maxabs") -> Optional[nn.Module]:
    if bits is None:
        return None
    return SignedUniformActivation(bits) if scale == "maxabs" else UniformGridQuantizer(bits, scale=scale)


class LowBitTrainingLayer:
    """Mixin (before ``QuantizedWeightLayer``) adding G and E quantization to a k-bit layer.

    Holds ``grad_quantizer`` (QG, on the latent weight) and ``error_quantizer``
    (QE, on the output), each a :class:`~lowbit.quant.GradientQuantizer` or None
    (float); see the module docstring for where they sit in the graph.
    """

    grad_quantizer: Optional[GradientQuantizer]
    error_quantizer: Optional[GradientQuantizer]

    def _configure(
        self,
        w_bits: Optional[int],
        a_bits: Optional[int],
        stochastic_weights: bool,
        g_bits: Optional[int],
        e_bits: Optional[int],
        scale: str,
        g_rounding: str,
        e_rounding: str,
        g_clip: str,
        e_clip: str,
        clip_fractions: Sequence[float],
        clip_interval: int,
        generator: Optional[torch.Generator],
    ) -> None:
        """Validate every option (all errors reported together), then build the four quantizers."""
        errors = []

        def check(fn, *args):
            try:
                return fn(*args)
            except ValueError as error:
                errors.append(str(error))
                return None

        self.scale = scale
        self.w_bits = check(_check_bits, "w_bits", w_bits, 2)
        self.a_bits = check(_check_bits, "a_bits", a_bits, 2)
        self.g_bits = check(_check_bits, "g_bits", g_bits, 2)
        self.e_bits = check(_check_bits, "e_bits", e_bits, 2)
        for name, value, choices in (
            ("scale", scale, SCALES),
            ("g_rounding", g_rounding, ROUNDINGS),
            ("e_rounding", e_rounding, ROUNDINGS),
            ("g_clip", g_clip, CLIPS),
            ("e_clip", e_clip, CLIPS),
        ):
            if value not in choices:
                errors.append(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        if not isinstance(stochastic_weights, bool):
            errors.append(f"stochastic_weights must be a bool, got {stochastic_weights!r}")
        if isinstance(clip_interval, bool) or not isinstance(clip_interval, int) or clip_interval < 1:
            errors.append(f"clip_interval must be an integer >= 1, got {clip_interval!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            errors.append(f"generator must be a torch.Generator or None, got {generator!r}")
        # A clip without a grid to clip for is a mistake, not a no-op.
        if g_clip == "direction" and (g_bits is None or (isinstance(g_bits, int) and g_bits >= FLOAT_BITS)):
            errors.append(f"g_clip='direction' needs g_bits < {FLOAT_BITS} (the gradient is float), got {g_bits!r}")
        if e_clip == "direction" and (e_bits is None or (isinstance(e_bits, int) and e_bits >= FLOAT_BITS)):
            errors.append(f"e_clip='direction' needs e_bits < {FLOAT_BITS} (the error is float), got {e_bits!r}")
        if errors:
            raise ValueError("; ".join(errors))

        self._set_quantizers(  # type: ignore[attr-defined]
            _act_quantizer(self.a_bits, scale), _weight_quantizer(self.w_bits, stochastic_weights, scale)
        )
        backward = dict(scale=scale, clip_fractions=clip_fractions, clip_interval=clip_interval, generator=generator)
        g_options = dict(rounding=g_rounding, clip=g_clip, **backward)
        e_options = dict(rounding=e_rounding, clip=e_clip, **backward)
        g_quantizer = None if self.g_bits is None else GradientQuantizer(self.g_bits, **g_options)
        e_quantizer = None if self.e_bits is None else GradientQuantizer(self.e_bits, **e_options)
        self.register_module("grad_quantizer", g_quantizer)  # type: ignore[attr-defined]
        self.register_module("error_quantizer", e_quantizer)  # type: ignore[attr-defined]

    def quantized_weight(self) -> torch.Tensor:
        """Q_w(QG(W)): the forward sees Q_w(W); the backward quantizes G on its way to ``W.grad``."""
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        if self.grad_quantizer is not None:
            weight = self.grad_quantizer(weight)
        return weight if self.weight_quantizer is None else self.weight_quantizer(weight)  # type: ignore[attr-defined]

    def quantize_error(self, y: torch.Tensor) -> torch.Tensor:
        """QE(y): y in the forward pass; the error dL/dy is quantized in the backward pass."""
        return y if self.error_quantizer is None else self.error_quantizer(y)

    @property
    def weight_bits(self) -> Optional[int]:
        """Deprecated: ``w_bits``."""
        warnings.warn("weight_bits is deprecated; use w_bits", DeprecationWarning, stacklevel=2)
        return self.w_bits

    @property
    def act_bits(self) -> Optional[int]:
        """Deprecated: ``a_bits``."""
        warnings.warn("act_bits is deprecated; use a_bits", DeprecationWarning, stacklevel=2)
        return self.a_bits


class QuantLinear(LowBitTrainingLayer, QuantizedWeightLayer, nn.Linear):
    """y = QE(Q_w(QG(W)) Q_a(x) + b) with k-bit W, A, G, E; (..., in) -> (..., out).

    ``w_bits``, ``a_bits``, ``g_bits``, ``e_bits`` >= 2, or None (also
    >= 32) for float (G and E default to float); ``.weight`` stays the latent
    float weight. See the module docstring for ``scale``, the roundings, the
    clips; ``clip_fractions`` is the direction-sensitive search grid,
    ``clip_interval`` the backward passes between searches (the clip fraction
    is reused in between) and ``generator`` drives the stochastic roundings.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        w_bits: Optional[int] = 8,
        a_bits: Optional[int] = 8,
        stochastic_weights: bool = False,
        g_bits: Optional[int] = None,
        e_bits: Optional[int] = None,
        scale: str = "maxabs",
        g_rounding: str = "stochastic",
        e_rounding: str = "nearest",
        g_clip: str = "none",
        e_clip: str = "none",
        clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
        clip_interval: int = 1,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        weight_bits: Optional[int] = _UNSET,  # deprecated spelling of w_bits
        act_bits: Optional[int] = _UNSET,  # deprecated spelling of a_bits
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._configure(
            *_bits_spelling(w_bits, a_bits, weight_bits, act_bits),
            stochastic_weights,
            g_bits,
            e_bits,
            scale,
            g_rounding,
            e_rounding,
            g_clip,
            e_clip,
            clip_fractions,
            clip_interval,
            generator,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_error(F.linear(self.quantize_input(x), self.quantized_weight(), self.bias))


class QuantConv2d(LowBitTrainingLayer, QuantizedWeightLayer, nn.Conv2d):
    """QE(conv2d(Q_a(x), Q_w(QG(W))) + b) with k-bit W, A, G, E; (N, C, H, W) -> (N, C', H', W').

    Options as :class:`QuantLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        w_bits: Optional[int] = 8,
        a_bits: Optional[int] = 8,
        stochastic_weights: bool = False,
        g_bits: Optional[int] = None,
        e_bits: Optional[int] = None,
        scale: str = "maxabs",
        g_rounding: str = "stochastic",
        e_rounding: str = "nearest",
        g_clip: str = "none",
        e_clip: str = "none",
        clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
        clip_interval: int = 1,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        weight_bits: Optional[int] = _UNSET,  # deprecated spelling of w_bits
        act_bits: Optional[int] = _UNSET,  # deprecated spelling of a_bits
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._configure(
            *_bits_spelling(w_bits, a_bits, weight_bits, act_bits),
            stochastic_weights,
            g_bits,
            e_bits,
            scale,
            g_rounding,
            e_rounding,
            g_clip,
            e_clip,
            clip_fractions,
            clip_interval,
            generator,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_error(self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias))


__all__ = ["LowBitTrainingLayer", "QuantConv2d", "QuantLinear", "SignedUniformActivation", "signed_uniform_quantize"]
