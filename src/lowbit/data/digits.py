"""scikit-learn's handwritten digits: 1,797 8×8 grey images, 10 classes, no files needed.

The UCI "Optical Recognition of Handwritten Digits" test set as shipped with
scikit-learn (``sklearn.datasets.load_digits``), so it is the default for
quick runs and tests. scikit-learn is the optional extra ``digits``
(``pip install -c constraints.txt -e ".[digits]"``; the ``test`` extra has it). Pixel counts 0..16 are scaled to uint8 by
``round(v * 255 / 16)``.

Split: a fixed stratified 80/20 split with ``random_state=0``
(``sklearn.model_selection.train_test_split``): 1,437 train and 360 test
images, every class in both in proportion. ``mean``/``std`` are computed from
the train split (after any resize), as no published constants exist.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from lowbit.data.datasets import DatasetSpec, register_dataset
from lowbit.data.errors import DataFileNotFoundError

__all__ = ["load_digits_split", "TEST_FRACTION", "SPLIT_SEED"]

TEST_FRACTION = 0.2  # 80/20 train/test, stratified by class
SPLIT_SEED = 0  # fixed: every run sees the same split
INSTALL = 'pip install -c constraints.txt -e ".[digits]"'
MAX_VALUE = 16  # load_digits pixels count set bits in 4×4 blocks of a 32×32 bitmap: 0..16


@lru_cache(maxsize=1)
def _split_arrays() -> dict:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise DataFileNotFoundError(
            f"digits: the 1,797 digits come with scikit-learn, an optional extra that is not installed ({exc}). "
            f"Install it with {INSTALL} (or pip install -c constraints.txt scikit-learn); nothing is downloaded."
        ) from exc

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / MAX_VALUE)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)  # (1797,)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}


def load_digits_split(split: str, data_dir: Optional[Path] = None, verify: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 8, 8) uint8, labels (N,) int64)``; ``data_dir`` and ``verify`` are unused."""
    images, labels = _split_arrays()[split]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


register_dataset(DatasetSpec(name="digits", load_split=load_digits_split, num_classes=10, channels=1, image_side=8))
