"""Batched image augmentation as tensor operations: no Python loop over images.

One call augments a whole batch (or a whole 50,000-image epoch): every random
choice is drawn for all images at once from one ``torch.Generator``, then
applied with gathers and broadcast masks. ``BatchAugment`` holds the
configuration; :meth:`BatchAugment.sample` draws an :class:`AugmentParams`
and :meth:`BatchAugment.apply` applies it, so the same draw can be replayed
or checked against a per-image reference.

Conventions
-----------
* Input: ``(N, C, H, W)`` uint8 on 0..255, or float on [0, 1]. Output:
  float32 ``(N, C, H, W)``, ``(x / 255 - mean) / std`` per channel (mean/std
  on the [0, 1] scale), or just ``x / 255`` when ``mean``/``std`` are None.
* Order: pad + crop, then flip (one gather on the input dtype: uint8 moves
  4× fewer bytes than float), then normalise, then random erasing, then
  cutout (on the normalised output, so a fill value of 0 is the data set's
  mean colour, as in the references).
* Random crop (Krizhevsky et al. 2012; the CIFAR recipe of He et al. 2016):
  pad by ``p`` on every side (zeros, or reflection without repeating the
  edge, as ``torch.nn.functional.pad(mode="reflect")``), then take the
  ``H × W`` window at offsets ``dy, dx ~ U{0, …, 2p}`` per image:
  ``out[n, :, i, j] = padded[n, :, dy[n] + i, dx[n] + j]``.
* Horizontal flip: each image mirrored (``[..., ::-1]``) with probability 1/2.
* Random erasing (Zhong et al., *Random Erasing Data Augmentation*, AAAI
  2020): with probability ``p`` per image, target area ``s·H·W`` with
  ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``, box ``h = round(√(s·H·W·r))``,
  ``w = round(√(s·H·W / r))``; up to 10 attempts until ``h < H`` and ``w < W``
  (as torchvision; no box if all fail); top-left uniform over the positions
  where the box fits. Filled with ``value``: a number, one number per channel,
  or ``"random"`` (i.i.d. N(0, 1) per pixel in the normalised space, as
  torchvision; the paper draws uniform pixel values).
* Cutout (DeVries & Taylor, *Improved Regularization of Convolutional Neural
  Networks with Cutout*, 2017): every image, a ``L × L`` square centred on a
  uniformly random pixel, clipped at the border, set to 0 (the mean). The
  square spans rows ``[cy - L//2, cy - L//2 + L)``; the reference code uses
  ``[cy - L//2, cy + L//2)``, one pixel smaller for odd ``L``.
* Mixup (Zhang et al., *mixup: Beyond Empirical Risk Minimization*, ICLR
  2018): ``λ ~ Beta(α, α)`` once per batch, ``x̃ = λ x + (1 - λ) x[π]``,
  ``ỹ = λ y + (1 - λ) y[π]`` with ``π`` a random permutation and ``y`` one-hot.

Randomness comes only from the ``generator`` argument (the global RNG when
None), drawn on the generator's device, so a seeded generator gives identical
output on every call sequence.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BatchAugment",
    "AugmentParams",
    "normalize",
    "mixup",
    "crop_flip",
    "box_masks",
    "sample_erasing_boxes",
    "sample_cutout_boxes",
]

PAD_MODES = ("zeros", "reflect")
ERASING_DEFAULTS = {"p": 0.5, "scale": (0.02, 0.33), "ratio": (0.3, 3.3), "value": 0.0}  # Zhong et al. 2020, torchvision
ERASING_ATTEMPTS = 10  # boxes tried per image before giving up (torchvision's choice)
CHUNK = 1024  # images per pass: a CIFAR chunk's float32 output (12 MB) stays in cache between the passes


# ----------------------------------------------------------------------------- functional core


def _affine(mean: Optional[Sequence[float]], std: Optional[Sequence[float]], channels: int, from_uint8: bool, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scale, shift`` of shape ``(1, C, 1, 1)`` with ``out = x * scale + shift``."""
    unit = 1.0 / 255.0 if from_uint8 else 1.0
    if mean is None and std is None:
        mean_t = torch.zeros(channels, dtype=torch.float64)
        std_t = torch.ones(channels, dtype=torch.float64)
    elif mean is None or std is None:
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
    else:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(channels)
        if std_t.numel() == 1:
            std_t = std_t.expand(channels)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ValueError(f"mean/std need 1 or {channels} values (one per channel), got {list(mean)} / {list(std)}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be > 0, got {list(std)}")
    scale = unit / std_t  # float64 so that the folded constants are exact to float32
    shift = -mean_t / std_t
    return (
        scale.to(device=device, dtype=torch.float32).view(1, channels, 1, 1),
        shift.to(device=device, dtype=torch.float32).view(1, channels, 1, 1),
    )


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a (N, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{what} must be uint8 (0..255) or floating point ([0, 1]), got {images.dtype}")


def normalize(images: torch.Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel as float32 ``(N, C, H, W)``.

    uint8 input is on 0..255, float input on [0, 1] (then ``x / 255`` reads ``x``).
    ``mean``/``std`` are on the [0, 1] scale, one per channel (or one for all);
    None for both only rescales to [0, 1]. Always returns a new tensor.
    """
    _check_images(images)
    scale, shift = _affine(mean, std, images.shape[1], images.dtype == torch.uint8, images.device)
    out = images.to(torch.float32, copy=True)  # (N, C, H, W)
    return out.mul_(scale).add_(shift)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions in ``[-size + 1, 2·size - 2]`` into ``[0, size)`` by reflection (edge not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


@lru_cache(maxsize=32)
def _position_table(h: int, w: int, padding: int, pad_mode: str, flip: bool, device: torch.device) -> torch.Tensor:
    """``(S·S·F, H·W)`` int64: for each (dy, dx, flip) choice, the flat source position of every output pixel.

    ``S = 2·padding + 1`` offsets per axis and ``F = 2`` with flip (else 1); row ``(dy·S + dx)·F + f``.
    Positions index the zero-padded image (``pad_mode="zeros"``) or, for "reflect", the
    image itself, with out-of-range positions reflected back in.
    """
    span, flips = 2 * padding + 1, 2 if flip else 1
    offsets = torch.arange(span, device=device)[:, None]  # (S, 1)
    rows = offsets + torch.arange(h, device=device)  # (S, H) padded row of output row i at offset dy
    cols = offsets + torch.arange(w, device=device)  # (S, W)
    cols = torch.stack([cols, cols.flip(1)][:flips], 1)  # (S, F, W): flipped windows read right to left
    if pad_mode == "reflect":
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
        source_w = w
    else:
        source_w = w + 2 * padding
    table = rows[:, None, None, :, None] * source_w + cols[None, :, :, None, :]  # (S, S, F, H, W)
    return table.reshape(span * span * flips, h * w)


def crop_flip(
    images: torch.Tensor,
    dy: Optional[torch.Tensor],
    dx: Optional[torch.Tensor],
    flip: Optional[torch.Tensor],
    padding: int = 0,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Per-image pad-and-crop, then horizontal flip, in the input's dtype, as one gather.

    ``out[n] = c[..., ::-1] if flip[n] else c`` with ``c = pad(x[n])[:, dy[n]:dy[n] + H, dx[n]:dx[n] + W]``,
    ``dy, dx`` in ``[0, 2·padding]``; ``dy = None`` (or ``padding = 0``) skips the crop, ``flip = None``
    the flip. Always returns a new tensor.

    Crop and flip only choose which source pixel lands where, and there are just
    ``(2p + 1)² · 2`` such choices, so their position maps are tabulated once
    (:func:`_position_table`); each image picks its row of the table and a single
    ``torch.gather`` over the flattened planes moves every pixel of every image and channel.
    Reflect padding is never materialised (positions are reflected back into the image);
    zero padding gathers from a zero-padded copy.
    """
    n, c, h, w = images.shape
    crop = dy is not None and dx is not None and padding > 0
    if not crop and flip is None:
        return images.clone()
    if crop and pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if crop and pad_mode == "reflect" and (padding >= h or padding >= w):
        raise ValueError(f"reflect padding must be smaller than the image ({h}×{w}), got {padding}")
    p = padding if crop else 0
    table = _position_table(h, w, p, pad_mode, flip is not None, images.device)  # (K, H*W)
    key = torch.zeros(n, dtype=torch.long, device=images.device)  # (N,) row of the table per image
    if crop:
        key = dy.long() * (2 * p + 1) + dx.long()
    if flip is not None:
        key = key * 2 + flip.long()
    source = F.pad(images, (p,) * 4) if crop and pad_mode == "zeros" else images  # (N, C, H_src, W_src)
    index = table.index_select(0, key).unsqueeze(1)  # (N, 1, H*W) flat source positions
    planes = source.reshape(n, c, -1)  # (N, C, H_src*W_src)
    return torch.gather(planes, 2, index.expand(n, c, h * w)).view(n, c, h, w)  # (N, C, H, W)


def box_masks(boxes: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """``(N, H, W)`` masks (1 inside) of per-image boxes ``(top, left, box_h, box_w)`` (``box_h = 0``: empty).

    Built as the outer product of a row and a column indicator, ``m[n, i, j] = r[n, i]·c[n, j]``.
    """
    rows = torch.arange(height, device=boxes.device)  # (H,)
    cols = torch.arange(width, device=boxes.device)  # (W,)
    top, left, bh, bw = boxes.unbind(1)  # each (N,)
    in_rows = ((rows >= top[:, None]) & (rows < (top + bh)[:, None])).to(dtype)  # (N, H)
    in_cols = ((cols >= left[:, None]) & (cols < (left + bw)[:, None])).to(dtype)  # (N, W)
    if dtype == torch.bool:
        return in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    return in_rows[:, :, None] * in_cols[:, None, :]  # (N, H, W)


def _rand(n: Union[int, Tuple[int, ...]], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    shape = (n,) if isinstance(n, int) else n
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def sample_erasing_boxes(
    n: int,
    height: int,
    width: int,
    p: float,
    scale: Tuple[float, float],
    ratio: Tuple[float, float],
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(N, 4)`` int64 boxes ``(top, left, h, w)`` of random erasing (Zhong et al. 2020); ``h = w = 0``: none.

    Per image: erase with probability ``p``; try ``ERASING_ATTEMPTS`` boxes of area
    ``s·H·W`` (``s ~ U(scale)``) and aspect ``exp(U(log ratio))``, keep the first with
    ``h < H`` and ``w < W``; the top-left corner is uniform over where it fits.
    """
    device = torch.device(device)
    area = height * width
    k = ERASING_ATTEMPTS
    s = scale[0] + (scale[1] - scale[0]) * _rand((n, k), generator, device)  # (N, K) area fractions
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand((n, k), generator, device)
    aspect = torch.exp(log_r)  # (N, K)
    bh = torch.sqrt(s * area * aspect).round().long()  # (N, K)
    bw = torch.sqrt(s * area / aspect).round().long()  # (N, K)
    fits = (bh < height) & (bw < width)  # (N, K)
    first = fits.long().argmax(1, keepdim=True)  # (N, 1) first fitting attempt (0 if none fits)
    bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)  # (N,)
    apply = (_rand(n, generator, device) < p) & fits.any(1)  # (N,)
    bh, bw = bh * apply, bw * apply
    top = (_rand(n, generator, device) * (height - bh + 1)).long()  # uniform in [0, H - h]
    left = (_rand(n, generator, device) * (width - bw + 1)).long()  # uniform in [0, W - w]
    return torch.stack([top, left, bh, bw], 1)  # (N, 4)


def sample_cutout_boxes(
    n: int, height: int, width: int, size: int, generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(N, 4)`` int64 boxes ``(top, left, h, w)``: a ``size × size`` square centred on a uniform pixel, clipped."""
    device = torch.device(device)
    cy = torch.randint(0, height, (n,), generator=generator, device=device)  # (N,)
    cx = torch.randint(0, width, (n,), generator=generator, device=device)  # (N,)
    top, left = cy - size // 2, cx - size // 2
    bottom, right = (top + size).clamp(max=height), (left + size).clamp(max=width)
    top, left = top.clamp(min=0), left.clamp(min=0)
    return torch.stack([top, left, bottom - top, right - left], 1)  # (N, 4)


# ----------------------------------------------------------------------------- the module


@dataclass
class AugmentParams:
    """One draw of every random choice for a batch of N images (None: that step is off)."""

    flip: Optional[torch.Tensor] = None  # (N,) bool
    dy: Optional[torch.Tensor] = None  # (N,) int64 in [0, 2·padding]
    dx: Optional[torch.Tensor] = None  # (N,) int64 in [0, 2·padding]
    erase_boxes: Optional[torch.Tensor] = None  # (N, 4) int64 (top, left, h, w); h = 0: not erased
    cutout_boxes: Optional[torch.Tensor] = None  # (N, 4) int64 (top, left, h, w)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "AugmentParams":
        return AugmentParams(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> "AugmentParams":
        return self._map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> "AugmentParams":
        """The draw for images ``start:stop``."""
        return self._map(lambda t: t[start:stop])


def _pair(value: Any, name: str) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"erasing[{name!r}] must be a pair (low, high), got {value!r}") from None
    return lo, hi


class BatchAugment:
    """Random crop, horizontal flip, random erasing and cutout on whole batches, then normalisation.

    Args:
        crop_padding: ``p`` pixels of padding for the random crop; 0 disables it (4 is the CIFAR standard).
        pad_mode: "zeros" or "reflect".
        flip: random horizontal flip with probability 1/2.
        erasing: random erasing settings ``{"p", "scale", "ratio", "value"}``; missing keys take
            ``ERASING_DEFAULTS`` (p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0). None: off.
        cutout: side of the cutout square in pixels; None: off.
        mean, std: per-channel normalisation on the [0, 1] scale; None: only scale to [0, 1].

    ``augment(images, generator)`` maps uint8 (0..255) or float ([0, 1]) ``(N, C, H, W)`` to
    normalised float32 ``(N, C, H, W)``; see the module docstring for the formulas and order.
    All problems with the arguments are reported together.
    """

    def __init__(
        self,
        crop_padding: int = 0,
        pad_mode: str = "zeros",
        flip: bool = False,
        erasing: Optional[Mapping[str, Any]] = None,
        cutout: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ):
        problems = []
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, numbers.Integral) or crop_padding < 0:
            problems.append(f"crop_padding must be an int >= 0, got {crop_padding!r}")
        if pad_mode not in PAD_MODES:
            problems.append(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if not isinstance(flip, bool):
            problems.append(f"flip must be True or False, got {flip!r}")
        if cutout is not None and (isinstance(cutout, bool) or not isinstance(cutout, numbers.Integral) or cutout < 1):
            problems.append(f"cutout must be an int >= 1 or None, got {cutout!r}")
        if (mean is None) != (std is None):
            problems.append(f"give both mean and std or neither, got mean={mean!r}, std={std!r}")
        elif std is not None and any(float(s) <= 0 for s in np.atleast_1d(np.asarray(std, dtype=float))):
            problems.append(f"std must be > 0, got {std!r}")
        self.erasing: Optional[dict] = None
        if erasing is not None:
            erasing_problems, self.erasing = self._check_erasing(erasing)
            problems += erasing_problems
        if problems:
            raise ValueError("invalid BatchAugment: " + "; ".join(problems))
        self.crop_padding = int(crop_padding)
        self.pad_mode = pad_mode
        self.flip = flip
        self.cutout = None if cutout is None else int(cutout)
        self.mean = None if mean is None else tuple(float(m) for m in np.atleast_1d(mean))
        self.std = None if std is None else tuple(float(s) for s in np.atleast_1d(std))

    @staticmethod
    def _check_erasing(erasing: Mapping[str, Any]) -> Tuple[list, Optional[dict]]:
        problems = []
        if not isinstance(erasing, Mapping):
            return [f"erasing must be a dict with keys {sorted(ERASING_DEFAULTS)} or None, got {erasing!r}"], None
        unknown = sorted(set(erasing) - set(ERASING_DEFAULTS))
        if unknown:
            problems.append(f"erasing has unknown keys {unknown}; valid: {sorted(ERASING_DEFAULTS)}")
        cfg = {**ERASING_DEFAULTS, **erasing}
        try:
            p = float(cfg["p"])
            if not 0.0 <= p <= 1.0:
                problems.append(f"erasing['p'] must be in [0, 1], got {cfg['p']!r}")
        except (TypeError, ValueError):
            problems.append(f"erasing['p'] must be a number in [0, 1], got {cfg['p']!r}")
            p = 0.0
        try:
            scale = _pair(cfg["scale"], "scale")
            if not 0.0 < scale[0] <= scale[1] <= 1.0:
                problems.append(f"erasing['scale'] must satisfy 0 < low <= high <= 1, got {cfg['scale']!r}")
        except ValueError as exc:
            problems.append(str(exc))
            scale = (0.0, 0.0)
        try:
            ratio = _pair(cfg["ratio"], "ratio")
            if not 0.0 < ratio[0] <= ratio[1]:
                problems.append(f"erasing['ratio'] must satisfy 0 < low <= high, got {cfg['ratio']!r}")
        except ValueError as exc:
            problems.append(str(exc))
            ratio = (1.0, 1.0)
        value = cfg["value"]
        if isinstance(value, str):
            if value != "random":
                problems.append(f"erasing['value'] must be a number, one number per channel or 'random', got {value!r}")
        else:
            try:
                value = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=float)))
            except (TypeError, ValueError):
                problems.append(f"erasing['value'] must be a number, one number per channel or 'random', got {value!r}")
        return problems, {"p": p, "scale": scale, "ratio": ratio, "value": value}

    def __repr__(self) -> str:
        return (
            f"BatchAugment(crop_padding={self.crop_padding}, pad_mode={self.pad_mode!r}, flip={self.flip}, "
            f"erasing={self.erasing}, cutout={self.cutout}, mean={self.mean}, std={self.std})"
        )

    def sample(
        self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None, device: torch.device | str | None = None
    ) -> AugmentParams:
        """Draw every random choice for ``n`` images of ``height × width``, in a fixed order.

        Drawn on the generator's device (``device``, default CPU, when no generator is given).
        """
        device = generator.device if generator is not None else torch.device(device or "cpu")
        params = AugmentParams()
        if self.flip:
            params.flip = torch.rand(n, generator=generator, device=device) < 0.5  # (N,)
        if self.crop_padding > 0:
            span = 2 * self.crop_padding + 1
            params.dy = torch.randint(0, span, (n,), generator=generator, device=device)  # (N,)
            params.dx = torch.randint(0, span, (n,), generator=generator, device=device)  # (N,)
        if self.erasing is not None:
            e = self.erasing
            params.erase_boxes = sample_erasing_boxes(n, height, width, e["p"], e["scale"], e["ratio"], generator, device)
        if self.cutout is not None:
            params.cutout_boxes = sample_cutout_boxes(n, height, width, self.cutout, generator, device)
        return params

    def apply(
        self,
        images: torch.Tensor,
        params: AugmentParams,
        generator: Optional[torch.Generator] = None,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Apply the draw ``params`` to ``images``; ``generator`` only feeds ``value="random"`` erasing.

        ``out``: an optional float32 ``(N, C, H, W)`` buffer to write into (reusing one avoids
        the page faults of a fresh 600 MB allocation per CIFAR epoch).
        """
        _check_images(images)
        n, c, h, w = images.shape
        device = images.device
        if self.crop_padding > 0 and self.pad_mode == "reflect" and (self.crop_padding >= h or self.crop_padding >= w):
            raise ValueError(f"reflect padding {self.crop_padding} must be smaller than the images ({h}×{w})")
        if out is None:
            out = torch.empty((n, c, h, w), dtype=torch.float32, device=device)  # (N, C, H, W)
        elif out.shape != images.shape or out.dtype != torch.float32 or out.device != device:
            raise ValueError(f"out must be float32 {tuple(images.shape)} on {device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
        params = params.to(device)
        scale, shift = _affine(self.mean, self.std, c, images.dtype == torch.uint8, device)  # (1, C, 1, 1) each
        fill: Optional[torch.Tensor] = None  # erasing value (1, C or 1, 1, 1); None: nothing to add (0 or "random")
        if self.erasing is not None and self.erasing["value"] != "random":
            fill = torch.tensor(self.erasing["value"], dtype=torch.float32, device=device)
            if fill.numel() not in (1, c):
                raise ValueError(f"erasing['value'] needs 1 or {c} values, got {self.erasing['value']}")
            fill = None if bool((fill == 0).all()) else fill.view(1, -1, 1, 1)
        random_fill = self.erasing is not None and self.erasing["value"] == "random"
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            part = params.slice(start, stop)
            o = out[start:stop]  # (B, C, H, W)
            o.copy_(crop_flip(images[start:stop], part.dy, part.dx, part.flip, self.crop_padding, self.pad_mode))
            o.mul_(scale).add_(shift)  # normalise: x * scale + shift
            # Erasing, then cutout, as multiplicative masks broadcast over channels:
            # o <- o - o·m + m·value (vectorised, unlike masked_fill_ with a broadcast mask).
            if part.erase_boxes is not None:
                erase = box_masks(part.erase_boxes, h, w, torch.float32).unsqueeze(1)  # (B, 1, H, W)
                o.addcmul_(o, erase, value=-1.0)
                if random_fill:  # N(0, 1) per pixel in the normalised space
                    noise_device = generator.device if generator is not None else device
                    o.addcmul_(erase, torch.randn(o.shape, generator=generator, device=noise_device).to(device))
                elif fill is not None:
                    o.addcmul_(erase, fill)
            if part.cutout_boxes is not None:
                cut = box_masks(part.cutout_boxes, h, w, torch.float32).unsqueeze(1)  # (B, 1, H, W)
                o.addcmul_(o, cut, value=-1.0)  # value 0: the mean colour
        return out

    def __call__(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None, out: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Augment and normalise ``images`` ``(N, C, H, W)`` (uint8 or float) to float32 ``(N, C, H, W)``."""
        _check_images(images)
        n, _, h, w = images.shape
        params = self.sample(n, h, w, generator, device=images.device)
        return self.apply(images, params, generator, out=out)


def _beta(alpha: float, generator: Optional[torch.Generator], device: torch.device) -> float:
    """One draw of Beta(α, α), seeded from ``generator`` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): mixed inputs and soft targets ``(N, num_classes)`` that sum to 1.

    ``λ ~ Beta(α, α)`` once per batch (as in the paper's code), ``π`` a random permutation:
    ``x̃ = λ x + (1 - λ) x[π]``, ``ỹ = λ onehot(y) + (1 - λ) onehot(y[π])``. ``alpha = 0`` means no
    mixing (λ = 1). ``y`` may be labels ``(N,)`` or soft targets ``(N, num_classes)``.
    """
    if not isinstance(alpha, numbers.Real) or alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    if not x.is_floating_point():
        raise TypeError(f"mixup needs floating-point inputs (normalise first), got {x.dtype}")
    if y.dim() == 1:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
        targets = F.one_hot(y.long(), num_classes).to(x.dtype)  # (N, K)
    elif y.dim() == 2 and y.shape[1] == num_classes:
        targets = y.to(x.dtype)
    else:
        raise ValueError(f"y must be labels (N,) or targets (N, {num_classes}), got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if alpha == 0:
        return x.clone(), targets
    device = generator.device if generator is not None else x.device
    lam = _beta(float(alpha), generator, device)
    perm = torch.randperm(x.shape[0], generator=generator, device=device).to(x.device)  # (N,)
    mixed_x = torch.lerp(x[perm], x, lam)  # λ x + (1 - λ) x[π]
    mixed_y = torch.lerp(targets[perm], targets, lam)  # (N, K)
    return mixed_x, mixed_y
