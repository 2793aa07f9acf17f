"""Bounds on what a data file may make lowbit allocate, checked before the allocation.

A file states sizes (a tar member's length, an IDX header's dimensions, a
pickled array's shape); a small hostile file can state huge ones, or inflate
(a gzip bomb). Every loader checks the stated size before it reads:

- against the file: an uncompressed file must be as long as it says; a
  compressed one may unpack to at most :data:`MAX_RATIO` times its own size
  plus :data:`RATIO_SLACK` (image data compresses 1-5:1, the MNIST images
  4.8:1, CIFAR 1.1:1; a bomb of zeros 1000:1), so a small file cannot make
  lowbit allocate much more than it is;
- against :data:`MAX_FILE_BYTES` and a quarter of the memory the machine has free.

So a bad file costs an error, not the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lowbit.data.errors import DataError

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_FILE_BYTES", "MAX_RATIO", "available_memory", "check_size", "unpacked_limit"]

# The largest single file of a supported data set is the CIFAR-100 "train" batch, 155 MB unpacked
# (MNIST train images: 47 MB); 1 GiB leaves room for larger sets in the same formats.
MAX_FILE_BYTES = 1 << 30
# What a CIFAR archive may unpack to in all (the official ones: 178-185 MB): bounds the CPU time a
# decompression bomb can cost, streaming (its memory is bounded per member by MAX_FILE_BYTES).
MAX_ARCHIVE_BYTES = 4 << 30
MAX_RATIO = 64  # unpacked / compressed bytes that real image data never exceeds
RATIO_SLACK = 16 << 20  # bytes: tiny test archives of constant images compress far better than real data


def available_memory() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def unpacked_limit(compressed_bytes: int) -> int:
    """The most a compressed file of ``compressed_bytes`` may unpack to (see the module docstring)."""
    return MAX_RATIO * compressed_bytes + RATIO_SLACK


def check_size(nbytes: int, what: str, fix: str, limit: int = MAX_FILE_BYTES, compressed: Optional[int] = None) -> None:
    """Raise :class:`DataError` unless ``nbytes`` (stated by a file) is plausible and fits in memory.

    ``compressed``: the size of the compressed file it comes from. A quarter of
    the free memory at most: the loaders copy and resize what they read.
    """
    if compressed is not None and nbytes > unpacked_limit(compressed):
        raise DataError(
            f"{what} states {nbytes:,} bytes, but its compressed file has only {compressed:,}: no genuine image "
            f"file unpacks more than {MAX_RATIO}:1 (a decompression bomb?); {fix}"
        )
    if nbytes > limit:
        raise DataError(f"{what} states {nbytes:,} bytes, more than any genuine file of this data set ({limit:,}); {fix}")
    free = available_memory()
    if free is not None and nbytes > free // 4:
        raise DataError(
            f"{what} states {nbytes:,} bytes, more than a quarter of the {free:,} bytes of free memory; "
            f"free memory or use a smaller data set ({fix})"
        )
