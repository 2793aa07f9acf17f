"""The XNOR kernels as torch custom operators, so that packed models trace, compile and export.

``lowbit.deploy.kernels`` calls its C++ kernels through pybind11, outside torch's
dispatcher: ``torch.export`` cannot run them on fake tensors, ``torch.jit.trace``
records their outputs as constants, and ``torch.compile`` breaks the graph at each.
Registered here with ``torch.library.custom_op``, the three operations are opaque
nodes of a graph with a schema and a fake implementation (output shape and dtype
from the input shapes alone):

- ``lowbit::pack_signs(x, groups)``: (N, C, H, W) float -> (N, H, W, G, ceil(C/G / 64)) int64;
- ``lowbit::binary_layer(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold,
  out_groups)``: (N, H, W, G, Wg) int64 -> float (N, G n, H', W') when ``sign`` is None,
  else bits (N, H', W', out_groups, ceil(G n / out_groups / 64)) int64;
- ``lowbit::popcount_gemm(a, bt, n)``: (G, M, Kw), (G, Kw, Np) int64 -> (M, G n) int32.

Their implementation is the eager function of ``kernels``, which picks the kernel
when it runs (``kernels.resolved_kernel()``: C++ AVX-512 / AVX2 / portable, or the
pure-PyTorch fallback), so an exported or compiled model computes what eager computes.

The functions below are what the packed layers call. In eager mode they call the
kernel directly: a custom op's Python dispatch costs 12-20 us per call, 1.25-1.38x
a batch-1 xnor_resnet18 forward (benchmarks/bench_packed_dispatch.py). While a graph is
being recorded (:func:`recording`) they call the custom op instead.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from lowbit.deploy import kernels
from lowbit.deploy.bits import words_for
from lowbit.deploy.im2col import conv_output_size

Tensor = torch.Tensor


def recording(x: Tensor) -> bool:
    """True while TorchDynamo (``torch.compile``, strict export), ``torch.jit.trace``, or a
    dispatch-level tracer (non-strict ``torch.export``, ``make_fx``, fake or functional
    tensors) records the computation; False in plain eager mode (~0.2 us to decide)."""
    return (
        torch.compiler.is_compiling()  # first: constant True under Dynamo, which must not see the C calls below
        or torch.jit.is_tracing()
        or type(x) is not torch.Tensor
        or torch._C._len_torch_dispatch_stack() > 0
    )


def concrete(t: Tensor) -> bool:
    """True if ``t`` may be kept across calls (a cache entry): a plain tensor outside any
    dispatch-level tracer, or any tensor under TorchDynamo (``torch.compile``), which replays
    such side effects with the real values; False for the fake and functional tensors of
    non-strict ``torch.export`` (where ``torch.compiler.is_compiling()`` is True as well)."""
    return torch.compiler.is_dynamo_compiling() or (
        type(t) is torch.Tensor and torch._C._len_torch_dispatch_stack() == 0
    )


# --- the registrations ---------------------------------------------------------------------


@torch.library.custom_op("lowbit::pack_signs", mutates_args=())
def _pack_signs_op(x: Tensor, groups: int) -> Tensor:
    return kernels.pack_signs(x, groups)


@_pack_signs_op.register_fake
def _(x: Tensor, groups: int) -> Tensor:
    batch, channels, h, w = x.shape
    torch._check(channels % groups == 0, lambda: f"{channels} channels do not divide into {groups} groups")
    return x.new_empty((batch, h, w, groups, words_for(channels // groups)), dtype=torch.int64)


@torch.library.custom_op("lowbit::binary_layer", mutates_args=())
def _binary_layer_op(
    x: Tensor,
    panel: Tensor,
    n: int,
    geometry: List[int],
    k: int,
    correction: Optional[Tensor],
    alpha: Optional[Tensor],
    bias: Optional[Tensor],
    sign: Optional[Tensor],
    threshold: Optional[Tensor],
    out_groups: int,
) -> Tensor:
    return kernels.binary_layer(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold, out_groups)


@_binary_layer_op.register_fake
def _(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold, out_groups):
    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    batch, h, w, groups = x.shape[:4]
    ho, wo = conv_output_size((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    channels = groups * n  # C_out
    if sign is not None:
        return x.new_empty((batch, ho, wo, out_groups, words_for(channels // out_groups)))  # int64 bits
    return x.new_empty((batch, channels, ho, wo), dtype=torch.float32)


@torch.library.custom_op("lowbit::popcount_gemm", mutates_args=())
def _popcount_gemm_op(a: Tensor, bt: Tensor, n: int) -> Tensor:
    return kernels.popcount_gemm(a, bt, n)


@_popcount_gemm_op.register_fake
def _(a, bt, n):
    groups, m = a.shape[:2]
    return a.new_empty((m, groups * n), dtype=torch.int32)


# --- what the packed layers call -------------------------------------------------------------


def pack_signs(x: Tensor, groups: int) -> Tensor:
    """``kernels.pack_signs``, through ``lowbit::pack_signs`` while recording."""
    if recording(x):
        return torch.ops.lowbit.pack_signs(x, groups)
    return kernels.pack_signs(x, groups)


def binary_layer(
    x: Tensor,
    panel: Tensor,
    n: int,
    geometry: Sequence[int],
    k: int,
    correction: Optional[Tensor],
    alpha: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    sign: Optional[Tensor] = None,
    threshold: Optional[Tensor] = None,
    out_groups: int = 1,
) -> Tensor:
    """``kernels.binary_layer``, through ``lowbit::binary_layer`` while recording."""
    if recording(x):
        return torch.ops.lowbit.binary_layer(
            x, panel, n, list(geometry), k, correction, alpha, bias, sign, threshold, out_groups
        )
    return kernels.binary_layer(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold, out_groups)


def popcount_gemm(a: Tensor, bt: Tensor, n: int) -> Tensor:
    """``kernels.popcount_gemm``, through ``lowbit::popcount_gemm`` while recording."""
    if recording(a):
        return torch.ops.lowbit.popcount_gemm(a, bt, n)
    return kernels.popcount_gemm(a, bt, n)


OPS = ("lowbit::pack_signs", "lowbit::binary_layer", "lowbit::popcount_gemm")

__all__ = ["OPS", "binary_layer", "concrete", "pack_signs", "popcount_gemm", "recording"]
