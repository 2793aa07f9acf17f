"""im2col on packed bits: convolution windows gathered as words, never as floats.

Packed activations are (N, H, W, G, Wg) int64: pixel (h, w) of image n holds the
signs of channel group g in Wg words (``lowbit.deploy.bits``). A k_h x k_w window
is the concatenation of its taps' words in (tap row, tap column, word) order, so
one im2col row is k_h k_w Wg words, 1/32 of the float im2col's bytes.

Zero padding pads with the word 0, i.e. with -1 in every channel. The simulated
binary conv pads its +-1 input with 0 (a tap outside the image adds nothing), so
the packed layer adds back what the -1 padding subtracted: for output position p
and channel o, sum over the padded taps t of p of sum_c sign(W)[o, c, t]
(:func:`padding_correction`), an integer table per input size.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

Pair = Tuple[int, int]


def conv_output_size(size: Pair, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """(H', W') of a convolution, as ``nn.Conv2d`` computes it."""
    return tuple(  # type: ignore[return-value]
        (size[i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    )


def im2col_bits(bits: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    """(N, H, W, G, Wg) int64 -> (G, N H' W', k_h k_w Wg) int64, rows in (n, h', w') order."""
    n, h, w, groups, words = bits.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    ho, wo = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input {h}x{w} is smaller than the conv window (kernel {kernel_size}, padding {padding})")
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and (ph, pw) == (0, 0):
        return bits.permute(3, 0, 1, 2, 4).reshape(groups, n * h * w, words)  # a view when G = 1
    padded = F.pad(bits, (0, 0, 0, 0, pw, pw, ph, ph))  # (N, H + 2ph, W + 2pw, G, Wg), zero words
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    windows = padded.unfold(1, span_h, sh).unfold(2, span_w, sw)  # (N, H', W', G, Wg, span_h, span_w)
    windows = windows[..., ::dh, ::dw]  # (N, H', W', G, Wg, k_h, k_w)
    return windows.permute(3, 0, 1, 2, 5, 6, 4).reshape(groups, n * ho * wo, kh * kw * words)


def padding_correction(
    tap_sums: torch.Tensor, size: Pair, groups: int, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair
) -> torch.Tensor:
    """(H' W', C_out) int32: sum of ``tap_sums[o, t]`` over the taps t of each output position that fall in the padding.

    ``tap_sums`` (C_out, k_h, k_w) holds sum_c sign(W)[o, c, t] over the input channels
    of o's group. Computed as (sum over all taps) - (a convolution of ones), in float32,
    exact for these small integers.
    """
    c_out = tap_sums.shape[0]
    ones = torch.ones(1, groups, *size)
    inside = F.conv2d(ones, tap_sums.to(torch.float32).unsqueeze(1), None, stride, padding, dilation, groups)  # (1, C, H', W')
    total = tap_sums.sum(dim=(1, 2)).to(torch.float32).reshape(1, c_out, 1, 1)
    return (total - inside).reshape(c_out, -1).t().round().to(torch.int32).contiguous()  # (P, C_out)


__all__ = ["conv_output_size", "im2col_bits", "padding_correction"]
