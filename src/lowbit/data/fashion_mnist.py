"""Fashion-MNIST: Zalando's 70,000 28x28 greyscale images of 10 kinds of clothing, in MNIST's IDX format.

Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747, 2017.

Files and format: exactly MNIST's (``train-images-idx3-ubyte[.gz]``, ...,
``t10k-labels-idx1-ubyte[.gz]``; :mod:`lowbit.data.mnist`), 60,000 train and
10,000 test images. Looked for in ``data_dir``, ``data_dir/fashion-mnist``,
``data_dir/fashion_mnist`` and ``data_dir/FashionMNIST/raw`` (torchvision's
layout), then -- unless ``--data-dir`` / ``data.data_dir`` names another
directory than the default one -- in :data:`DEBIAN_DIR`, where Debian's package
installs them::

    apt-get install -y dataset-fashion-mnist      # /usr/share/datasets/fashion-mnist

Labels: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal,
6 shirt, 7 sneaker, 8 bag, 9 ankle boot. ``mean``/``std``: over the 60,000
training images on the [0, 1] scale (0.2860, 0.3530; measured on the Debian
package's files).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import torch

from lowbit.data.datasets import DatasetSpec, register_dataset, resolve_data_dir
from lowbit.data.mnist import NUM_CLASSES, load_idx_split

__all__ = ["CLASSES", "DEBIAN_DIR", "load_fashion_mnist"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "apt-get install -y dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _search_dirs(data_dir: Path) -> List[Path]:
    dirs = [data_dir, data_dir / "fashion-mnist", data_dir / "fashion_mnist", data_dir / "FashionMNIST" / "raw"]
    if data_dir == resolve_data_dir(None):  # no directory named by the user: the system copy is the fallback
        dirs.append(DEBIAN_DIR)
    return dirs


def load_fashion_mnist(
    split: str, data_dir: Path, verify: Optional[bool] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 28, 28) uint8, labels (N,) int64)`` of one split; ``verify`` is unused."""
    how = (
        f"Install them with `{INSTALL}` (as root; files in {DEBIAN_DIR}), or put the four IDX files "
        "from github.com/zalandoresearch/fashion-mnist in any directory."
    )
    fix = f"reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or replace the file"
    return load_idx_split("fashion_mnist", split, _search_dirs(data_dir), how, fix)


register_dataset(
    DatasetSpec(
        name="fashion_mnist", load_split=load_fashion_mnist, num_classes=NUM_CLASSES, mean=(0.2860,), std=(0.3530,),
        channels=1, image_side=28,
    )
)
