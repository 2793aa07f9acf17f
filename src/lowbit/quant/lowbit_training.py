"""Low-bit training: k-bit grids for weights (W), activations (A), weight gradients (G) and errors (E).

Every tensor is quantized onto a symmetric per-tensor (layer-wise) grid

    q(x) = s * clamp(R(x / s), -n, n),   n = 2^(k-1) - 1   (127 for k = 8),

with one float step ``s`` per tensor chosen from its range r = max|x| (or a
clip value c <= max|x|, see below) in one of two ways:

- ``scale="maxabs"``: s = r / n, the float scale of the 2020 notes ("layer-wise
  float scale", the symmetric scheme of Banner et al. 2018); the largest entry
  lands exactly on +-n.
- ``scale="pow2"``:   s = 2^ceil(log2(r / n)), a power of two, so that
  multiplying by s is a shift (WAGE's ``Shift``). We take the *ceiling* so the
  grid always covers the range (nothing saturates); WAGE rounds the exponent
  (2^round(log2 x)) and saturates what falls outside. The cost of the ceiling:
  up to one bit of resolution (r / s lies in (n/2, n]).

R is round-to-nearest with ties away from zero (``round_half_away``, as in the
rest of ``lowbit.quant``) or stochastic rounding, R(y) = floor(y) + 1{u < frac(y)},
u ~ U[0, 1), which is unbiased, E[R(y)] = y, inside the range (Gupta et al.
2015). WAGE rounds G stochastically and E to nearest; those are the defaults of
the layers (``lowbit.nn.QuantLinear``).

Direction-sensitive clipping (Zhu et al. 2020, "Towards Unified INT8 Training
for Convolutional Neural Network", CVPR): instead of r = max|g|, search a clip
value c on a grid of fractions of max|g| and keep the one whose quantization
points most nearly in the gradient's direction,

    c* = argmin_c  1 - cos(g, q_c(g)),   q_c(g) = q(clamp(g, -c, c)) with r = c.

A sharp, wide gradient distribution (most entries tiny, a few huge) wastes an
8-bit grid scaled to its largest entry: the small entries all round to zero.
Clipping the few outliers gives the bulk a finer grid. The search rounds to
nearest (deterministic) whatever rounding the final quantization uses.

G and E live in the backward pass, so their quantizer is an autograd Function
that is the identity forward and quantizes the incoming gradient backward
(:func:`quantize_backward`, module :class:`GradientQuantizer`). Placed on a
layer's output it quantizes the error E = dL/dy flowing into the layer; placed
on the latent weight it quantizes the weight gradient G = dL/dW before it is
accumulated into ``weight.grad`` (float32; the update W <- W - lr G is applied to
float latent weights, as in Banner et al.).

References: Wu, Li, Chen & Shi, "Training and Inference with Integers in Deep
Neural Networks" (WAGE), ICLR 2018; Zhu et al., "Towards Unified INT8 Training
for Convolutional Neural Network", CVPR 2020; Banner, Hubara, Hoffer & Soudry,
"Scalable Methods for 8-bit Training of Neural Networks", NeurIPS 2018.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from lowbit.quant.functional import (
    check_bool,
    check_choice,
    check_generator,
    check_int_at_least,
    check_non_negative,
    check_positive,
    identity_grad,
    max_abs,
    quantize_with_surrogate,
    round_half_away,
    uniform_noise,
)
from lowbit.quant.uniform import _nearest_on_grid, _stochastic_on_grid, _working_dtype, symmetric_qmax

SCALES = ("maxabs", "pow2")
ROUNDINGS = ("nearest", "stochastic")
CLIPS = ("none", "direction")

# Clip candidates for the direction-sensitive search, as fractions of max|g|:
# 2^(-i/2), i = 0..12, i.e. 1, 0.71, 0.5, ..., 1/64 (half-octave steps, six
# octaves). On the digits LeNet-5 the optimum is 1 at 8 bits and 1/3..1 at
# 4 bits (docs/lowbit-training.md), well inside the grid; pass clip_fractions
# for a finer or deeper search.
DEFAULT_CLIP_FRACTIONS: Tuple[float, ...] = tuple(2.0 ** (-i / 2) for i in range(13))

_TIE_TOLERANCE = 1e-9  # cosine distances closer than this are equal (float64 round-off is ~1e-15)
_TINY = torch.finfo(torch.float32).tiny  # the range floor: an all-zero tensor quantizes to 0, not 0/0


# --- scales --------------------------------------------------------------------------


def step_for_range(r: torch.Tensor, bits: int, scale: str = "maxabs") -> torch.Tensor:
    """The grid step s for a range r >= 0 (a tensor, no gradient): r / n or 2^ceil(log2(r / n)).

    n = 2^(bits-1) - 1. r is floored at the smallest normal float32 so that an
    all-zero tensor gets a positive step (and quantizes to 0).
    """
    qmax = symmetric_qmax(check_int_at_least("bits", bits, 2))
    check_choice("scale", scale, SCALES)
    per_level = r.detach().to(torch.promote_types(r.dtype, torch.float32)).clamp_min(_TINY) / qmax
    if scale == "maxabs":
        return per_level
    return torch.exp2(torch.ceil(torch.log2(per_level)))


def grid_step(x: torch.Tensor, bits: int, scale: str = "maxabs") -> torch.Tensor:
    """The per-tensor step of ``x``'s k-bit grid from r = max|x| (0-d tensor, no gradient)."""
    return step_for_range(max_abs(x.detach()), bits, scale)


def is_power_of_two(s: torch.Tensor) -> torch.Tensor:
    """Elementwise: s > 0 and s = 2^m for an integer m (mantissa exactly 1/2 in ``frexp``)."""
    mantissa, _ = torch.frexp(s)
    return (s > 0) & (mantissa == 0.5)


# --- rounding onto a given grid -----------------------------------------------------


def round_to_grid(
    x: torch.Tensor,
    step: torch.Tensor,
    bits: int,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """step * clamp(R(x / step), -n, n) with R nearest (ties away) or stochastic; no surrogate gradient.

    A plain function of values (meant for gradients, or under ``no_grad``); the
    output dtype is ``x``'s, the arithmetic at least float32. ``generator`` (on
    ``x.device``) drives the stochastic draws.
    """
    qmax = symmetric_qmax(check_int_at_least("bits", bits, 2))
    if check_choice("rounding", rounding, ROUNDINGS) == "nearest":
        return _nearest_on_grid(x, step, qmax)
    return _stochastic_on_grid(x, step, uniform_noise(x, generator), qmax)


# --- direction-sensitive clipping ----------------------------------------------------


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) over all entries, in float64 (0-d). Two zero tensors: 0; one zero tensor: 1."""
    a64, b64 = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    norms = a64.norm() * b64.norm()
    if norms == 0:
        same = bool(a64.norm() == b64.norm())
        return torch.tensor(0.0 if same else 1.0, dtype=torch.float64, device=a.device)
    return 1.0 - torch.dot(a64, b64) / norms


def _check_fractions(fractions: Sequence[float]) -> Tuple[float, ...]:
    values = tuple(fractions)
    if not values or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in values):
        raise ValueError(f"clip_fractions must be a non-empty sequence of numbers in (0, 1], got {fractions!r}")
    return tuple(float(f) for f in values)


def direction_clip_search(
    g: torch.Tensor,
    bits: int,
    scale: str = "maxabs",
    fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(candidates c_j = f_j max|g|, their distances 1 - cos(g, q_{c_j}(g))), both (len(fractions),).

    q_c rounds to nearest on the grid of range c (step s from :func:`step_for_range`).
    Computed exactly without quantizing g once per candidate: q_c is odd, so
    cos(g, q_c(g)) = sum |g| q_c(|g|) / (||g|| ||q_c(g)||), and q_c(|g|) = k s on
    the bin [(k - 1/2) s, (k + 1/2) s) (ties away from zero), k = 0 .. K with
    K = round(c / s) (everything from (K - 1/2) s up, clipped entries included,
    lands on K s). One pass bins |g| on the union of all candidates' bin edges
    (counts and sums of |g| per bin); each candidate's bins are unions of those,
    read off prefix sums. Cost O(n log E + E) for E <= m 2^(bits-1) edges,
    instead of m full quantizations.
    """
    fractions = _check_fractions(fractions)
    check_int_at_least("bits", bits, 2)
    g = g.detach()
    magnitudes = g.reshape(-1).abs().double()  # (n,)
    magnitudes = magnitudes[magnitudes > 0]  # zeros land on level 0 for every c: no contribution
    g_norm = magnitudes.square().sum().sqrt()
    largest = g.abs().amax().to(_working_dtype(g))
    candidates = largest * torch.tensor(fractions, dtype=largest.dtype, device=g.device)  # (m,)

    levels, edges = [], []
    for c in candidates:
        step = step_for_range(c, bits, scale).double()
        top = int(round_half_away(c.double() / step))  # K: the level of every clipped entry
        k = torch.arange(top + 1, dtype=torch.float64, device=g.device)  # (K + 1,): 0 .. K
        levels.append(k * step)  # (K + 1,) the values q takes on |g|
        edges.append((k[:-1] + 0.5) * step)  # (K,): level k starts at edge k - 1
    all_edges = torch.unique(torch.cat(edges))  # (E,) sorted
    count_below, sum_below = _below_edges(magnitudes, all_edges)

    distances = []
    for value, edge in zip(levels, edges):
        below = torch.searchsorted(all_edges, edge) + 1  # (K,) prefix index of each of this candidate's edges
        bounds = torch.cat([below.new_zeros(1), below, below.new_full((1,), count_below.numel() - 1)])  # (K + 2,)
        counts = count_below[bounds[1:]] - count_below[bounds[:-1]]  # (K + 1,) entries per level
        sums = sum_below[bounds[1:]] - sum_below[bounds[:-1]]  # (K + 1,) sum of |g| per level
        dot = (value * sums).sum()
        q_norm = (value.square() * counts).sum().sqrt()
        if g_norm == 0:
            distances.append(torch.zeros((), dtype=torch.float64, device=g.device))
        elif q_norm == 0:
            distances.append(torch.ones((), dtype=torch.float64, device=g.device))
        else:
            distances.append(1.0 - dot / (g_norm * q_norm))
    return candidates, torch.stack(distances)


def _below_edges(
    magnitudes: torch.Tensor, edges: torch.Tensor, use_sort: Optional[bool] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(count, sum) of the magnitudes below each edge, both (E + 2,): [0] none, [p + 1] below edges[p], [-1] all.

    CPU: one ``bucketize`` and two ``bincount`` (no sort). Other devices: a sort
    and ``searchsorted``, because ``bincount`` with weights has no
    deterministic CUDA kernel (``torch.use_deterministic_algorithms`` refuses it).
    ``use_sort`` forces one path (tests compare them).
    """
    zero = magnitudes.new_zeros(1)
    if not (magnitudes.device.type != "cpu" if use_sort is None else use_sort):
        fine = torch.bucketize(magnitudes, edges, right=True)  # (n,): edges[b-1] <= |g| < edges[b]
        counts = torch.bincount(fine, minlength=edges.numel() + 1).double()  # (E + 1,)
        sums = torch.bincount(fine, weights=magnitudes, minlength=edges.numel() + 1)  # (E + 1,)
        return torch.cat([zero, counts.cumsum(0)]), torch.cat([zero, sums.cumsum(0)])
    ordered = magnitudes.sort().values  # (n,)
    prefix = torch.cat([zero, ordered.cumsum(0)])  # (n + 1,)
    below = torch.searchsorted(ordered, edges)  # (E,): entries < each edge
    everything = below.new_full((1,), ordered.numel())
    index = torch.cat([below.new_zeros(1), below, everything])  # (E + 2,)
    return index.double(), prefix[index]


def direction_clip(
    g: torch.Tensor,
    bits: int,
    scale: str = "maxabs",
    fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
) -> torch.Tensor:
    """The clip value c* = argmin_c 1 - cos(g, q_c(g)) over c in fractions * max|g| (0-d tensor).

    Ties (distances within 1e-9 of the minimum, i.e. equal up to float64
    round-off) go to the first candidate (the largest when ``fractions``
    descend): clip no more than needed. Zhu et al. 2020, "direction-sensitive
    gradient clipping"; they search c continuously, we on a fixed grid of fractions.
    """
    candidates, distances = direction_clip_search(g, bits, scale, fractions)
    near_best = distances <= distances.min() + _TIE_TOLERANCE  # (m,)
    return candidates[torch.nonzero(near_best)[0, 0]]


def deviation_lr_scale(distance: float, alpha: float = 20.0, beta: float = 0.1) -> float:
    """Zhu et al.'s deviation-counteractive learning-rate factor max(exp(-alpha d), beta).

    d = 1 - cos(g, q(g)) is the direction deviation of the quantized gradient
    (``GradientStats`` records it as ``cos_distance``); a large deviation shrinks
    the step. The defaults alpha = 20, beta = 0.1 are our reading of the paper's
    settings; check them against it before relying on them. Not applied by the
    layers: a training loop multiplies its learning rate by it if it wants.
    """
    d = check_non_negative("distance", distance)
    return max(math.exp(-check_positive("alpha", alpha) * d), check_positive("beta", beta))


# --- the full quantization of one tensor ---------------------------------------------


def quantize_tensor_with_step(
    x: torch.Tensor,
    bits: int,
    *,
    scale: str = "maxabs",
    rounding: str = "nearest",
    clip: str = "none",
    clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
    generator: Optional[torch.Generator] = None,
    clip_range: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q(x), step s, range r) with r = max|x| (``clip="none"``) or the direction-sensitive c*.

    See the module docstring for q; values beyond +-r saturate at +-n s. A given
    ``clip_range`` (a 0-d tensor) is used as r instead, whatever ``clip`` says.
    """
    check_choice("clip", clip, CLIPS)
    x_detached = x.detach()
    if clip_range is not None:
        r = clip_range.detach().to(_working_dtype(x))
    elif clip == "direction":
        r = direction_clip(x_detached, bits, scale, clip_fractions)
    else:
        r = max_abs(x_detached).to(_working_dtype(x))
    step = step_for_range(r, bits, scale)
    return round_to_grid(x_detached, step, bits, rounding, generator), step, r


def quantize_tensor(
    x: torch.Tensor,
    bits: int,
    *,
    scale: str = "maxabs",
    rounding: str = "nearest",
    clip: str = "none",
    clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """q(x) on the per-tensor k-bit grid (no surrogate gradient; for gradients or under ``no_grad``)."""
    return quantize_tensor_with_step(
        x, bits, scale=scale, rounding=rounding, clip=clip, clip_fractions=clip_fractions, generator=generator
    )[0]


# --- forward quantizer for W and A (straight-through) --------------------------------


def uniform_grid(
    x: torch.Tensor,
    bits: int = 8,
    scale: str = "maxabs",
    stochastic: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """q(x) on the per-tensor grid with range max|x| in the forward pass; dq/dx := 1 (STE).

    With ``scale="maxabs"`` this is exactly ``uniform_weight(x, bits, stochastic)``.
    """
    qmax = symmetric_qmax(check_int_at_least("bits", bits, 2))
    step = grid_step(x, bits, scale)
    if stochastic:
        return quantize_with_surrogate(
            x, functools.partial(_stochastic_on_grid, qmax=qmax), identity_grad, step, uniform_noise(x, generator)
        )
    return quantize_with_surrogate(x, functools.partial(_nearest_on_grid, qmax=qmax), identity_grad, step)


class UniformGridQuantizer(nn.Module):
    """Forward k-bit quantizer of W or A with a max-abs or power-of-two per-tensor scale.

    q(x) = s clamp(R(x / s), -n, n), s = max|x| / n or 2^ceil(log2(max|x| / n));
    dq/dx := 1 (straight-through; s is a constant). ``bits`` is read by
    ``lowbit.nn.quantizer_bits``. Not in the ``get_quantizer`` registry: the
    layers build it from their ``scale`` option (``"pow2"``); for ``"maxabs"``
    they keep ``uniform_weight`` / ``SignedUniformActivation``, which it equals.
    """

    def __init__(
        self, bits: int = 8, scale: str = "pow2", stochastic: bool = False, generator: Optional[torch.Generator] = None
    ) -> None:
        super().__init__()
        self.bits = check_int_at_least("bits", bits, 2)
        self.scale = check_choice("scale", scale, SCALES)
        self.stochastic = check_bool("stochastic", stochastic)
        self.generator = check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_grid(x, self.bits, self.scale, self.stochastic, self.generator)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={self.scale!r}, stochastic={self.stochastic}"


# --- backward quantizer for G and E --------------------------------------------------

GradFn = Callable[[torch.Tensor], torch.Tensor]


class _QuantizeBackward(torch.autograd.Function):
    """forward: y = x (a view); backward: dL/dx = grad_fn(dL/dy)."""

    @staticmethod
    def forward(x: torch.Tensor, grad_fn: GradFn) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.grad_fn = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.grad_fn(grad), None


def quantize_backward(
    x: torch.Tensor,
    bits: int = 8,
    *,
    scale: str = "maxabs",
    rounding: str = "nearest",
    clip: str = "none",
    clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Identity forward; backward: dL/dx = q(dL/dy) (:func:`quantize_tensor` on the incoming gradient).

    On a layer's output y this quantizes the error E; on a latent weight W
    (before the weight quantizer) it quantizes the weight gradient G.
    """
    _check_options(bits, scale, rounding, clip, clip_fractions, generator)
    fn = functools.partial(
        quantize_tensor,
        bits=bits,
        scale=scale,
        rounding=rounding,
        clip=clip,
        clip_fractions=clip_fractions,
        generator=generator,
    )
    return _QuantizeBackward.apply(x, fn)


def _check_options(
    bits: int,
    scale: str,
    rounding: str,
    clip: str,
    clip_fractions: Sequence[float],
    generator: Optional[torch.Generator],
) -> None:
    """Every option checked; all errors reported together."""
    errors = []
    for check in (
        lambda: check_int_at_least("bits", bits, 2),
        lambda: check_choice("scale", scale, SCALES),
        lambda: check_choice("rounding", rounding, ROUNDINGS),
        lambda: check_choice("clip", clip, CLIPS),
        lambda: _check_fractions(clip_fractions),
        lambda: check_generator(generator),
    ):
        try:
            check()
        except ValueError as error:
            errors.append(str(error))
    if errors:
        raise ValueError("; ".join(errors))


# observer(quantizer, grad, quantized, step, range): sees each float gradient and its quantization.
Observer = Callable[["GradientQuantizer", torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class GradientQuantizer(nn.Module):
    """Module form of :func:`quantize_backward`: holds the options (and an optional observer).

    ``forward(x)`` returns x; in the backward pass the gradient reaching it is
    replaced by q(grad) (see the module docstring: k-bit grid, max-abs or
    power-of-two step, nearest or stochastic rounding, optional direction-
    sensitive clipping). ``observer``, if set (``lowbit.nn.GradientStats`` sets
    it), is called as ``observer(self, grad, q(grad), step, range)`` on every
    backward pass, so that the float gradient can be measured before it is
    quantized. ``bits`` is read by ``lowbit.nn.quantizer_bits``.
    """

    def __init__(
        self,
        bits: int = 8,
        scale: str = "maxabs",
        rounding: str = "stochastic",
        clip: str = "none",
        clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
        generator: Optional[torch.Generator] = None,
        clip_interval: int = 1,
    ) -> None:
        super().__init__()
        _check_options(bits, scale, rounding, clip, clip_fractions, generator)
        self.bits = int(bits)
        self.scale = scale
        self.rounding = rounding
        self.clip = clip
        self.clip_fractions = _check_fractions(clip_fractions)
        self.generator = generator
        self.clip_interval = check_int_at_least("clip_interval", clip_interval, 1)
        self.observer: Optional[Observer] = None
        self._calls = 0  # backward passes seen (for clip_interval)
        self._clip_fraction: Optional[float] = None  # c* / max|g| of the last search

    def quantize(self, grad: torch.Tensor) -> torch.Tensor:
        """q(grad), reported to the observer if one is set.

        With ``clip="direction"`` and ``clip_interval`` = N > 1, the search runs
        on every N-th backward pass; in between, the clip value is the last
        search's fraction of max|g| times the current max|g| (Zhu et al. also
        update their clip values only periodically, to save the search's cost).
        """
        clip_range = None
        if self.clip == "direction" and self._clip_fraction is not None and self._calls % self.clip_interval != 0:
            clip_range = self._clip_fraction * grad.detach().abs().amax()
        self._calls += 1
        q, step, r = quantize_tensor_with_step(
            grad,
            self.bits,
            scale=self.scale,
            rounding=self.rounding,
            clip=self.clip,
            clip_fractions=self.clip_fractions,
            generator=self.generator,
            clip_range=clip_range,
        )
        if self.clip == "direction" and clip_range is None:
            largest = float(grad.detach().abs().amax())
            self._clip_fraction = min(1.0, float(r) / largest) if largest > 0 else None
        if self.observer is not None:
            self.observer(self, grad, q, step, r)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuantizeBackward.apply(x, self.quantize)

    # The clip_interval schedule is state that a training checkpoint must carry to resume exactly. It is
    # not in state_dict, so that a quantized model's weights still load into its float twin.
    def schedule_state(self) -> Dict[str, Any]:
        """The clip schedule: backward passes seen and the last searched clip fraction (plain types)."""
        return {"calls": self._calls, "clip_fraction": self._clip_fraction}

    def load_schedule_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`schedule_state`."""
        self._calls = int(state["calls"])
        self._clip_fraction = None if state["clip_fraction"] is None else float(state["clip_fraction"])

    def extra_repr(self) -> str:
        periodic = self.clip == "direction" and self.clip_interval > 1
        interval = f", clip_interval={self.clip_interval}" if periodic else ""
        return f"bits={self.bits}, scale={self.scale!r}, rounding={self.rounding!r}, clip={self.clip!r}{interval}"


__all__ = [
    "CLIPS",
    "DEFAULT_CLIP_FRACTIONS",
    "ROUNDINGS",
    "SCALES",
    "GradientQuantizer",
    "UniformGridQuantizer",
    "cosine_distance",
    "deviation_lr_scale",
    "direction_clip",
    "direction_clip_search",
    "grid_step",
    "is_power_of_two",
    "quantize_backward",
    "quantize_tensor",
    "quantize_tensor_with_step",
    "round_to_grid",
    "step_for_range",
    "uniform_grid",
]
