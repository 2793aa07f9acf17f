"""The C allocator's policy for training on a CPU: keep freed memory instead of returning it.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large
blocks (above ``M_MMAP_THRESHOLD``, 128 KiB to 32 MiB, adjusted as it goes) with
fresh ``mmap`` pages and hands them back to the kernel on ``free``, and it trims
the top of its heap past ``M_TRIM_THRESHOLD``. A training step allocates and frees
activations and gradients of many MiB, so every step touches fresh pages: measured
on xnor_resnet18 width 64, batch 128, one thread (BENCHMARKS.md, "Binary layers in
training"), ~300 000 page faults a step, and 20-30 % of its CPU time, in the float
twin as in the binary model, whose extra tensors (signs, masks) fault too.

:func:`keep_freed_memory` sets both thresholds to 2^31 - 1 bytes with ``mallopt``:
blocks are taken from and returned to the process's heap, which keeps its size, so
a step after the first faults no page in. The price is memory: the process keeps its
peak (and the heap's fragmentation, ~30 % more resident memory measured there). It
changes no number a run computes, only its speed.

The ``lowbit`` command applies it at start (:func:`apply_policy`), and so do the
sweep's worker processes and Ray tasks; ``LOWBIT_MALLOC=default`` keeps glibc's own policy. From
Python, call :func:`keep_freed_memory` yourself. Elsewhere than glibc (macOS, musl)
this does nothing; jemalloc or tcmalloc (``LD_PRELOAD``) are the usual alternatives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

MALLOC_ENV = "LOWBIT_MALLOC"
POLICIES = ("keep", "default")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_LARGEST = 2**31 - 1  # mallopt takes an int

_applied: Optional[str] = None


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (module docstring); False where not glibc."""
    global _applied
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_LARGEST)) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_LARGEST)) == 1 and ok
    if ok:
        _applied = "keep"
    return ok


def policy_from_environment() -> str:
    """``LOWBIT_MALLOC``: ``keep`` (the default) or ``default`` (glibc's own); ValueError otherwise."""
    value = os.environ.get(MALLOC_ENV, "keep").strip().lower() or "keep"
    if value not in POLICIES:
        raise ValueError(f"{MALLOC_ENV} must be one of {', '.join(POLICIES)}, got {value!r}")
    return value


def apply_policy() -> Optional[str]:
    """Apply ``LOWBIT_MALLOC`` once per process; the policy in effect ("keep", or None for the C library's)."""
    if _applied is None and policy_from_environment() == "keep":
        keep_freed_memory()
    return _applied


def current_policy() -> Optional[str]:
    """"keep" once :func:`keep_freed_memory` took effect in this process, else None (the C library's own)."""
    return _applied


__all__ = ["MALLOC_ENV", "POLICIES", "apply_policy", "current_policy", "keep_freed_memory", "policy_from_environment"]
