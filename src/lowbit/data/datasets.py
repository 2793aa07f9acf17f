"""In-memory image data sets and the one entry point that loads them by name.

``load_dataset("cifar10", "train", data_dir="~/data")`` returns an
:class:`ImageDataset`: all images as one ``(N, C, H, W)`` uint8 tensor plus
int64 labels. CIFAR-10 train is 150 MB as uint8, so the whole set lives in
memory and augmentation runs on whole batches of it (see ``augment.py``).

Where files are looked for (:func:`resolve_data_dir`): the ``data_dir``
argument (the CLI's ``--data-dir``), else ``$LOWBIT_DATA``, else ``./data``.
Nothing is ever downloaded; a missing file raises
:class:`~lowbit.data.errors.DataFileNotFoundError` naming the files expected,
the directories searched and how to provide them.

Each loader module (``cifar.py``, ``mnist.py``, ``digits.py``) registers a
:class:`DatasetSpec` here by name.

Resizing (``image_size``): bilinear interpolation with ``align_corners=False``
and *no* antialiasing (``torch.nn.functional.interpolate``), rounded back to
uint8. Antialiasing only matters when shrinking; the intended use is
enlarging small images (digits 8×8 → 32×32, MNIST 28×28 → 32×32) to fit a
CIFAR-shaped model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from lowbit.registry import Registry

__all__ = [
    "ImageDataset",
    "DatasetSpec",
    "dataset_spec",
    "load_dataset",
    "list_datasets",
    "resolve_data_dir",
    "resize_images",
    "register_dataset",
    "SPLITS",
    "DATA_ENV_VAR",
]

DATA_ENV_VAR = "LOWBIT_DATA"
SPLITS = ("train", "test")
_RESIZE_CHUNK = 4096  # images resized per interpolate call at most ...
_RESIZE_BYTES = 256 << 20  # ... and at most this many bytes of float32 temporaries per call


@dataclass
class ImageDataset:
    """A labelled image data set held in memory.

    ``mean`` / ``std`` are per-channel statistics on the [0, 1] scale, for
    :func:`~lowbit.data.augment.normalize`; they describe the *train* split
    (the published constants, or computed from it) whichever split this is.
    """

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        problems = []
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            problems.append(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            problems.append(f"labels must be (N,) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")
        elif self.images.dim() >= 1 and self.labels.shape[0] != self.images.shape[0]:
            problems.append(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        channels = self.images.shape[1] if self.images.dim() == 4 else None
        if channels is not None and not (len(self.mean) == len(self.std) == channels):
            problems.append(f"mean/std need one value per channel ({channels}), got {self.mean} / {self.std}")
        if problems:
            raise ValueError(f"invalid ImageDataset {self.name!r}: " + "; ".join(problems))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: torch.Tensor | slice | range) -> "ImageDataset":
        """The same data set restricted to ``indices`` (e.g. ``slice(0, 1000)`` for a quick run)."""
        if isinstance(indices, range):
            indices = torch.as_tensor(indices)
        return ImageDataset(self.images[indices], self.labels[indices], self.num_classes, self.name, self.mean, self.std)


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named data set.

    ``load_split(split, data_dir, verify)`` returns ``(images, labels)`` at the
    native size: ``(N, C, H, W)`` uint8 and ``(N,)`` int64. ``mean``/``std`` are
    the published train-split constants, or ``None`` to compute them from the
    train split (after resizing). ``channels`` and ``image_side`` let a config
    be checked against the data (model input, crop padding) before any file is read.
    """

    name: str
    load_split: Callable[[str, Path, Optional[bool]], Tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    channels: Optional[int] = None  # C of the images, known without loading them (None: unknown)
    image_side: Optional[int] = None  # native H = W in pixels, known without loading (None: unknown)


_DATASETS = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec`` loadable as ``load_dataset(spec.name)``."""
    _DATASETS.register(spec.name)(spec)
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` of ``name`` (an unknown name lists the valid ones)."""
    return _DATASETS.get(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return _DATASETS.names()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory data files are read from, as an absolute path.

    ``data_dir`` (e.g. the ``--data-dir`` argument) if given, else the
    ``LOWBIT_DATA`` environment variable if set and non-empty, else ``./data``.
    ``~`` is expanded. The directory need not exist (loaders report that).
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV_VAR) or "data"
    return Path(os.path.abspath(Path(data_dir).expanduser()))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``size × size``.

    Bilinear, ``align_corners=False``, ``antialias=False``, rounded to the
    nearest integer and clamped to [0, 255]. Returns ``images`` itself when
    already that size.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    from lowbit.data.limits import check_size

    n, c = images.shape[0], images.shape[1]
    check_size(n * c * size * size, f"resizing {n} images to {size}x{size} (image_size)",
               "lower data.image_size", limit=1 << 36)
    # images per interpolate call: the float32 temporary stays under _RESIZE_BYTES
    chunk_size = max(1, min(_RESIZE_CHUNK, _RESIZE_BYTES // max(1, c * size * size * 4)))
    out = torch.empty((n, c, size, size), dtype=torch.uint8)  # (N, C, size, size)
    for start in range(0, n, chunk_size):
        chunk = images[start : start + chunk_size].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        out[start : start + chunk_size] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _channel_stats(images: torch.Tensor) -> Tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images on the [0, 1] scale."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0  # (C, N*H*W)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).tolist())


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    verify: bool | None = None,
) -> ImageDataset:
    """Load split ``split`` ("train" or "test") of data set ``name`` into memory.

    Args:
        name: one of :func:`list_datasets` ("cifar10", "cifar100", "digits", "mnist").
        split: "train" or "test".
        data_dir: where the files are; see :func:`resolve_data_dir`. Unused by "digits",
            which ships with scikit-learn.
        image_size: if given, resize to ``image_size × image_size`` (see :func:`resize_images`).
        verify: archive md5 check (CIFAR only): ``None`` checks an archive whose size is
            that of the official download, ``True`` checks always, ``False`` never.
            See :mod:`lowbit.data.cifar`.

    Raises:
        UnknownNameError: ``name`` is not a registered data set (lists the valid ones).
        DataFileNotFoundError: a file is missing (names it and the directories searched).
        DataError: a file is corrupt, unsafe or malformed.
    """
    spec: DatasetSpec = _DATASETS.get(name)
    problems = []
    if split not in SPLITS:
        problems.append(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0):
        problems.append(f"image_size must be a positive int or None, got {image_size!r}")
    if verify not in (None, True, False):
        problems.append(f"verify must be None, True or False, got {verify!r}")
    if problems:
        raise ValueError(f"load_dataset({name!r}): " + "; ".join(problems))

    root = resolve_data_dir(data_dir)
    images, labels = spec.load_split(split, root, verify)
    if image_size is not None:
        images = resize_images(images, image_size)
    if spec.mean is not None and spec.std is not None:
        mean, std = spec.mean, spec.std
    else:
        train = images if split == "train" else spec.load_split("train", root, verify)[0]
        if image_size is not None:
            train = resize_images(train, image_size)
        mean, std = _channel_stats(train)
    return ImageDataset(images, labels, spec.num_classes, spec.name, tuple(mean), tuple(std))
