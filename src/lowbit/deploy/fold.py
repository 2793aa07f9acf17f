"""BatchNorm -> sign folded into integer thresholds on a binary layer's accumulator.

A binary layer whose output goes only into a sign (through an optional eval-mode
BatchNorm) never needs its float output: with d the integer dot product of
output channel j, the simulated model computes (exact eval form,
``lowbit.nn.binary``)

    z_j(d) = BN_j( fl(fl(d alpha_j) + b_j) ),   bit_j = z_j(d) >= 0.

Every float32 step is monotone in d (rounding is monotone), so {d : z_j(d) >= 0}
is an interval that reaches an end of [-K, K]: bit_j = (s_j d >= t_j) with
s_j = +1 (an up-set; t_j its least element) or -1 (a down-set; t_j = -its greatest
element), t_j = -K-1 for "always 1" and K+1 for "never". Rather than solving
gamma (alpha d + b - mu) / sigma + beta >= 0 in real arithmetic, which can
disagree with float32 at a tie, the thresholds are read off the simulated
computation itself, evaluated for every d in [-K, K] with the same torch
operations (BatchNorm's eval kernel is elementwise, so its value does not depend
on the tensor's shape). The packed model's bits are therefore the simulated
model's bits, ties included.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

# Candidates evaluated per chunk of channels: (2K + 1) x channels floats.
_CHUNK_ELEMENTS = 1 << 24


def sign_thresholds(
    alpha: torch.Tensor, bias: Optional[torch.Tensor], bn: Optional[nn.Module], k: int, spatial: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, t), both (C,) int32, with (s_j d >= t_j) == (z_j(d) >= 0) for every integer d in [-K, K].

    ``alpha``, ``bias``: (C,) float32 (bias may be None); ``bn``: an eval-mode
    BatchNorm over the C channels, or None; ``spatial``: the layer is a conv
    (candidates shaped (D, C, 1, 1) for BatchNorm2d) rather than a linear ((D, C)).
    """
    channels = alpha.numel()
    candidates = torch.arange(-k, k + 1, dtype=torch.float32)  # (D,) every reachable dot product, D = 2K + 1
    signs = torch.empty(channels, dtype=torch.int32)
    thresholds = torch.empty(channels, dtype=torch.int32)
    step = max(1, _CHUNK_ELEMENTS // candidates.numel())
    with torch.no_grad():
        for start in range(0, channels, step):
            part = slice(start, min(channels, start + step))
            z = _simulated_pre_sign(candidates, alpha, bias, bn, part, channels, spatial)  # (D, c)
            s, t = _interval_thresholds(z >= 0, k)
            signs[part], thresholds[part] = s, t
    return signs, thresholds


def _simulated_pre_sign(candidates, alpha, bias, bn, part, channels, spatial) -> torch.Tensor:
    """z(d) for the channels ``part``, with the simulated layer's operations in its order."""
    view = (-1, 1, 1, 1) if spatial else (-1, 1)
    y = candidates.reshape(view) * alpha.reshape(1, -1, *view[2:])  # (D, C[, 1, 1]): fl(d alpha)
    if bias is not None:
        y = y + bias.reshape(1, -1, *view[2:])
    if bn is not None:
        y = bn(y)
    return y.reshape(candidates.numel(), channels)[:, part]


def _interval_thresholds(bits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, t) for each column of ``bits`` (D, c): True on d in [-K, K] ascending, an up- or down-set."""
    d_count, columns = bits.shape
    count = bits.sum(dim=0)  # (c,)
    first = torch.where(count > 0, bits.int().argmax(dim=0), 0)  # first True index
    ascending = bits[-1] | (count == 0)  # an up-set (or empty) ends with True; a down-set does not
    s = torch.where(ascending, 1, -1).to(torch.int32)
    lowest = first - k  # the least d with bit 1
    highest = first + count - 1 - k  # the greatest d with bit 1
    t = torch.where(ascending, lowest, -highest)
    t = torch.where(count == 0, k + 1, t)  # never
    t = torch.where(count == d_count, -k - 1, t)  # always
    s = torch.where(count == d_count, 1, s)
    # Verify the interval shape the thresholds assume (guaranteed by monotone rounding).
    d = torch.arange(-k, k + 1, dtype=torch.int32).reshape(-1, 1)
    if not torch.equal((s * d >= t), bits):
        bad = ((s * d >= t) != bits).any(dim=0).nonzero().reshape(-1).tolist()
        raise RuntimeError(f"sign after the layer is not monotone in the accumulator in channels {bad[:8]}")
    return s.to(torch.int32), t.to(torch.int32)


__all__ = ["sign_thresholds"]
