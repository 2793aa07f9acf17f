"""The XNOR-popcount kernels: C++ (AVX-512 VPOPCNTDQ / AVX2 / portable) or pure PyTorch, same results.

Three operations carry a packed binary layer (see ``csrc/xnor.cpp`` for the bit layout):

- ``pack_signs(x, groups)``: x >= 0 of a float (N, C, H, W) tensor -> (N, H, W, G, Wg) words;
- ``binary_layer(x, ...)``: a whole packed conv on bits (im2col on words, the
  XNOR-popcount GEMM, and the output stage: alpha * dot + bias as float32, or
  thresholded bits packed again);
- ``popcount_gemm(a, bt, n)``: the GEMM alone, popcount(A_i XOR B_j) for a (G, M, Kw)
  and the transposed packed weights bt (G, Kw, Np), -> (M, G n) int32 (tests, benchmarks).

The C++ extension is compiled on first use (``lowbit.native.NativeExtension``: ninja
and a C++ compiler; ~30 s) into torch's extension cache (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) under a name that includes a hash of the
source, so later processes load it in well under a second and an edited source
builds anew. One build holds the three GEMM kernels; the one used is
chosen at run time from the CPU's features (``best_kernel()``: AVX-512 VPOPCNTDQ, else
AVX2, else portable). Where the build fails (no compiler, no ninja), every operation
falls back to the pure-PyTorch implementation here, with a warning: the results are
identical (integers, and the same float32 operations in the same order), only slower.

Kernel choice: ``use_kernel("avx2")`` (a context manager), ``set_kernel(name)``, or the
environment variable ``LOWBIT_XNOR_KERNEL`` = auto | avx512 | avx2 | portable | torch,
read at first use. ``available_kernels()`` lists what this machine can run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

import torch

from lowbit.deploy.bits import pack_bits, popcount
from lowbit.native import NativeExtension

KERNEL_ENV = "LOWBIT_XNOR_KERNEL"
KERNELS = ("auto", "avx512", "avx2", "portable", "torch")
_CODES = {"portable": 1, "avx2": 2, "avx512": 3}
_NAMES = {code: name for name, code in _CODES.items()}
SOURCE = Path(__file__).resolve().parent / "csrc" / "xnor.cpp"
CFLAGS = ["-O3", "-ffp-contract=off"]  # no FMA: alpha * dot + bias rounds twice, as the simulated layer

EXTENSION = NativeExtension(
    "lowbit_xnor",
    [SOURCE],
    CFLAGS,
    purpose="XNOR kernels of lowbit.deploy",
    fallback="using the pure-PyTorch fallback (identical results, slower).",
)
_selected: Optional[str] = None  # None: not read from the environment yet

# The pure-PyTorch GEMM materialises (rows, Kw, n) int64 XORs; this many elements per chunk.
_TORCH_GEMM_CHUNK = 1 << 22


class KernelUnavailable(RuntimeError):
    """The requested kernel cannot run here (no C++ build, or the CPU lacks the instructions)."""


def extension_name() -> str:
    """The extension's module name: ``lowbit_xnor_`` + a hash of the source and flags."""
    return EXTENSION.name()


def load_extension() -> Any:
    """The compiled extension (built and cached on first call), or None with the reason in ``build_error()``."""
    return EXTENSION.load()


def build_error() -> Optional[str]:
    """Why the C++ build failed (None if it succeeded or was not tried)."""
    return EXTENSION.build_error()


def available_kernels() -> List[str]:
    """Kernels this machine can run, fastest first; ``"torch"`` (the fallback) always."""
    ext = load_extension()
    if ext is None:
        return ["torch"]
    mask = ext.cpu_kernels()
    return [name for name, bit in (("avx512", 4), ("avx2", 2), ("portable", 1)) if mask & bit] + ["torch"]


def _check_name(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {name!r}")
    return name


def set_kernel(name: str) -> None:
    """Use kernel ``name`` (see the module docstring) from now on; raises if this machine cannot run it."""
    global _selected
    name = _check_name(name)
    if name not in ("auto", "torch") and name not in available_kernels():
        reason = build_error() or "this CPU lacks its instructions"
        raise KernelUnavailable(f"kernel {name!r} is not available here ({reason}); available: {available_kernels()}")
    _selected = name


@contextlib.contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Use kernel ``name`` inside the block (e.g. ``with use_kernel("avx2"): packed(x)``)."""
    global _selected
    previous = current_kernel()
    set_kernel(name)
    try:
        yield
    finally:
        _selected = previous


def current_kernel() -> str:
    """The kernel setting: ``auto`` (the best this CPU runs), a named one, or ``torch``."""
    if _selected is None:
        name = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
        try:
            set_kernel(name)
        except (ValueError, KernelUnavailable) as error:
            raise type(error)(f"{KERNEL_ENV}={name!r}: {error}") from None
    return _selected  # type: ignore[return-value]


def resolved_kernel() -> str:
    """The kernel that runs now: ``auto`` resolved on this CPU, ``torch`` where there is no build."""
    name = current_kernel()
    if name == "torch":
        return "torch"
    ext = load_extension()
    if ext is None:
        return "torch"
    return _NAMES[ext.best_kernel()] if name == "auto" else name


# --- the operations -------------------------------------------------------------------


def popcount_gemm(a: torch.Tensor, bt: torch.Tensor, n: int) -> torch.Tensor:
    """(M, G n) int32: popcount(a[g, i] XOR bt[g, :, j]) for j < n; a (G, M, Kw), bt (G, Kw, Np)."""
    name = resolved_kernel()
    if name != "torch":
        return load_extension().xnor_popcount_gemm(a.contiguous(), bt, n, _CODES[name])
    return popcount_gemm_torch(a, bt, n)


def popcount_gemm_torch(a: torch.Tensor, bt: torch.Tensor, n: int) -> torch.Tensor:
    groups, m, kw = a.shape
    out = torch.empty(m, groups * n, dtype=torch.int32)
    rows = max(1, _TORCH_GEMM_CHUNK // max(1, kw * n))
    for g in range(groups):
        weights = bt[g, :, :n]  # (Kw, n)
        for start in range(0, m, rows):
            xor = a[g, start : start + rows].unsqueeze(2) ^ weights  # (rows, Kw, n)
            out[start : start + rows, g * n : (g + 1) * n] = popcount(xor).sum(dim=1, dtype=torch.int32)
    return out


def pack_signs(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N, H, W, G, Wg) int64 words of x >= 0 (channel c of group g at bit c % 64)."""
    if resolved_kernel() != "torch" and x.dtype == torch.float32:
        return load_extension().pack_signs_nchw(x.contiguous(), groups)
    return pack_signs_torch(x, groups)


def pack_signs_torch(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    bits = (x >= 0).permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups)  # (N, H, W, G, C/G)
    return pack_bits(bits)


def binary_layer(
    x: torch.Tensor,
    panel: torch.Tensor,
    n: int,
    geometry: Sequence[int],
    k: int,
    correction: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    sign: Optional[torch.Tensor] = None,
    threshold: Optional[torch.Tensor] = None,
    out_groups: int = 1,
) -> torch.Tensor:
    """A packed binary conv on bits x (N, H, W, G, Wg); see ``csrc/xnor.cpp``'s ``binary_layer``.

    ``geometry`` = (k_h, k_w, s_h, s_w, p_h, p_w, d_h, d_w); ``n`` = C_out / G; ``k`` the
    number of products in a full window; ``correction`` (H' W', C_out) int32 or None.
    Float output (N, C_out, H', W') = float(dot) * alpha (+ bias), or, with ``sign`` and
    ``threshold``, bits (N, H', W', out_groups, Wg') of sign * dot >= threshold.
    """
    name = resolved_kernel()
    if name != "torch":
        return load_extension().binary_layer(
            x.contiguous(), panel, n, list(geometry), k, correction, alpha, bias, sign, threshold, out_groups, _CODES[name]
        )
    return binary_layer_torch(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold, out_groups)


def binary_layer_torch(x, panel, n, geometry, k, correction, alpha, bias, sign, threshold, out_groups):
    """The pure-PyTorch pipeline: im2col on words, SWAR-popcount GEMM, epilogue; same results as C++."""
    from lowbit.deploy.im2col import conv_output_size, im2col_bits

    kh, kw, sh, sw, ph, pw, dh, dw = geometry
    batch, h, w = x.shape[:3]
    ho, wo = conv_output_size((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    columns = im2col_bits(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))  # (G, N H' W', Kw)
    dots = k - 2 * popcount_gemm_torch(columns, panel, n)  # (N H' W', C_out) int32
    if correction is not None:
        dots = (dots.reshape(batch, ho * wo, -1) + correction).reshape(dots.shape)
    if sign is not None:
        bits = sign * dots >= threshold  # (N H' W', C_out)
        return pack_bits(bits.reshape(batch, ho, wo, out_groups, -1))
    y = dots.to(torch.float32) * alpha  # the same two float32 roundings as C++ and the simulated layer
    if bias is not None:
        y = y + bias
    return y.reshape(batch, ho, wo, -1).permute(0, 3, 1, 2).contiguous()  # (N, C_out, H', W')


__all__ = [
    "KERNELS",
    "KERNEL_ENV",
    "KernelUnavailable",
    "available_kernels",
    "build_error",
    "current_kernel",
    "binary_layer",
    "extension_name",
    "load_extension",
    "pack_signs",
    "popcount_gemm",
    "resolved_kernel",
    "set_kernel",
    "use_kernel",
]
