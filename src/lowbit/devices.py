"""Devices: one spelling (``cpu``, ``cuda``, ``cuda:N``), one error, chunk sizes from the device, TF32.

Every command takes ``device`` (a config key, and ``--device`` on the command
line). ``resolve_device`` turns the name into a ``torch.device`` or fails in
one line, before any work, when the machine has no such device.

Chunk sizes: the fast paths evaluate many parameter sets at once in chunks of
about N numbers. On a CPU, N is sized for the caches (the defaults the callers
pass); on a GPU it is a share of the free memory, so a chunk fills the device
instead of launching thousands of small kernels.

TF32: CUDA matmuls and convolutions may round their inputs to 10-bit
mantissas (TensorFloat-32) on Ampere and later GPUs. lowbit turns that off
wherever it claims exact or reproducible numbers; ``allow_tf32`` turns it on.
"""

from __future__ import annotations

import re
from typing import Union

import torch

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
GPU_MEMORY_SHARE = 0.25  # of the free memory, for one chunk's intermediate tensors (a chunk makes a few of them)


def check_device_name(name: str, key: str = "device") -> str:
    """``name`` if it is ``cpu``, ``cuda`` or ``cuda:N``; else a ValueError naming ``key``."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ValueError(f"{key} must be cpu, cuda or cuda:N, got {name!r}")
    return name


def resolve_device(name: Union[str, torch.device], key: str = "device") -> torch.device:
    """The ``torch.device`` for ``name``; a one-line error when this machine has no such device."""
    if isinstance(name, torch.device):
        name = str(name)
    check_device_name(name, key)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key}={name!r} but no CUDA device is available (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda}); use {key}=cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{key}={name!r} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}")
    return device


def chunk_numbers(device: torch.device, cpu_default: int, bytes_per_number: int = 4) -> int:
    """How many numbers one chunk of a batched evaluation may hold on ``device``."""
    if device.type != "cuda":
        return cpu_default
    free, _ = torch.cuda.mem_get_info(device)
    return max(cpu_default, int(free * GPU_MEMORY_SHARE) // bytes_per_number)


def set_tf32(allowed: bool) -> None:
    """TensorFloat-32 for CUDA matmuls and cuDNN convolutions on (``allowed``) or off."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
