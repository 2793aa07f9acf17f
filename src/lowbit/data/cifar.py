"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009;
files from https://www.cs.toronto.edu/~kriz/cifar.html.

Files looked for, in ``data_dir`` then ``data_dir/<name>``: the extracted
folder (``cifar-10-batches-py/``, ``cifar-100-python/``) if present, else the
archive (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``). Archive
members are unpickled straight from the tar stream in one sequential pass:
nothing is extracted to disk, so member paths (absolute, ``..``) cannot
escape anywhere, and link members are refused. Every pickle goes through
:class:`~lowbit.data.safe_pickle.SafeUnpickler`.

Layout. Each batch is a dict with ``b"data"``: an ``(n, 3072)`` uint8 array,
one image per row, channel-major (1024 red, then green, then blue values,
each a 32×32 image in row-major order), so ``data.reshape(n, 3, 32, 32)`` is
``(N, C, H, W)``; and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100): a list of n ints. CIFAR-10 train is ``data_batch_1`` …
``data_batch_5`` concatenated in that order, test is ``test_batch``;
CIFAR-100 train/test are ``train``/``test``.

Checksums (``verify``): the published md5 is of the whole archive, so only
archives are checked. ``verify=None`` (default) checks an archive whose size
is exactly that of the official download — a file of any other size cannot
match the checksum, is not the official archive (e.g. a small synthetic one
in a test), and is still validated structurally (gzip/tar integrity, array
shapes, dtypes and label ranges). ``True`` always checks (so a file of another
size fails), ``False`` never does. Digests are cached per (path, size, mtime)
so loading train and test hashes the archive once.

``mean``/``std`` are the standard constants, computed over the 50,000
training images on the [0, 1] scale (population std over all pixels of a
channel — not the often-quoted (0.2023, 0.1994, 0.2010), which averages
per-image stds).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from lowbit.data.datasets import DatasetSpec, register_dataset
from lowbit.data.errors import DataError, missing_files_error
from lowbit.data.limits import MAX_ARCHIVE_BYTES, check_size, unpacked_limit
from lowbit.data.safe_pickle import SafeUnpickler

__all__ = ["CifarLayout", "CIFAR10", "CIFAR100", "load_cifar", "md5sum"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (3, 32, 32)  # (C, H, W): one row of b"data" is 3 * 32 * 32 = 3072 bytes, channel-major


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and what it calls them."""

    name: str
    archive: str
    archive_md5: str
    archive_size: int  # bytes of the official download: the size at which verify=None checks md5
    folder: str  # top-level folder inside the archive (= the extracted folder)
    train_members: Tuple[str, ...]
    test_members: Tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


CIFAR10 = CifarLayout(
    name="cifar10",
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    archive_size=170_498_071,
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_members=("test_batch",),
    label_key=b"labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarLayout(
    name="cifar100",
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    archive_size=169_001_437,
    folder="cifar-100-python",
    train_members=("train",),
    test_members=("test",),
    label_key=b"fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

_MD5_CACHE: Dict[Tuple[str, int, int], str] = {}
_HASH_CHUNK = 1 << 20  # 1 MiB reads


def md5sum(path: Path) -> str:
    """Hex md5 of ``path``, cached per (path, size, mtime_ns)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(block)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def _check_md5(path: Path, layout: CifarLayout, verify: Optional[bool]) -> None:
    size = path.stat().st_size
    if verify is False or (verify is None and size != layout.archive_size):
        return
    actual = md5sum(path)
    if actual != layout.archive_md5:
        raise DataError(
            f"{layout.name}: md5 mismatch for {path} ({size} bytes): expected {layout.archive_md5} "
            f"(the official {layout.archive}, {layout.archive_size} bytes), got {actual}. The download is "
            f"corrupt or not the official archive: delete it and download it again from {CIFAR_URL}."
        )


def _corrupt(layout: CifarLayout, source: str, exc: BaseException) -> DataError:
    return DataError(
        f"{layout.name}: could not read {source}: {type(exc).__name__}: {exc}. The file looks truncated or "
        f"corrupt; delete it and download {layout.archive} again from {CIFAR_URL}."
    )


class _BoundedReader(io.RawIOBase):
    """A read-only stream that raises once more than ``limit`` bytes came out of ``inner``."""

    def __init__(self, inner: Any, limit: int, what: str, fix: str):
        self.inner, self.limit, self.count, self.what, self.fix = inner, limit, 0, what, fix

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n if n is not None and n >= 0 else self.limit + 1 - self.count)
        self.count += len(data)
        if self.count > self.limit:
            raise DataError(f"{self.what} unpacks to more than {self.limit:,} bytes (a decompression bomb?); {self.fix}")
        return data


def _open_decompressed(path: Path) -> Any:
    """The archive's bytes after gzip / bzip2 / xz (by magic number), or as they are (a plain tar)."""
    with open(path, "rb") as probe:
        magic = probe.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _read_archive(path: Path, layout: CifarLayout, members: Tuple[str, ...]) -> Dict[str, Any]:
    """Unpickle ``members`` of the archive in one sequential pass, without extracting anything.

    Bounded (:mod:`lowbit.data.limits`): each member's stated size is checked
    before it is read, and the archive may unpack to at most
    :func:`~lowbit.data.limits.unpacked_limit` of its size in all.
    """
    wanted = {f"{layout.folder}/{m}": m for m in members}
    found: Dict[str, Any] = {}
    fix = f"it is not the official {layout.archive}; download it again from {CIFAR_URL}"
    archive_size = path.stat().st_size
    try:
        with _open_decompressed(path) as raw, tarfile.open(
            fileobj=_BoundedReader(raw, min(MAX_ARCHIVE_BYTES, unpacked_limit(archive_size)), f"{layout.name}: {path}", fix),
            mode="r|",
        ) as tar:  # stream mode: one decompression pass, no seeking
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is None:
                    continue
                if not info.isfile():
                    raise DataError(
                        f"{layout.name}: refusing member {info.name!r} of {path}: it is a link or special file, "
                        f"not a regular file as in the official archive; download {layout.archive} again from {CIFAR_URL}."
                    )
                check_size(info.size, f"{layout.name}: member {info.name} of {path}", fix, compressed=archive_size)
                handle = tar.extractfile(info)
                found[member] = SafeUnpickler(handle, f"{path}:{info.name}").load()
                if len(found) == len(wanted):
                    break
    except DataError:
        raise
    except Exception as exc:  # tarfile/gzip/zlib/pickle/numpy all signal corruption differently
        raise _corrupt(layout, str(path), exc) from exc
    missing = [name for name in wanted if wanted[name] not in found]
    if missing:
        raise DataError(
            f"{layout.name}: archive {path} has no member {', '.join(missing)}; it is not the official "
            f"{layout.archive}. Download it again from {CIFAR_URL}."
        )
    return found


def _read_folder(folder: Path, layout: CifarLayout, members: Tuple[str, ...]) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    for member in members:
        path = folder / member
        if not path.is_file():
            raise missing_files_error(
                layout.name,
                member,
                [folder],
                f"The folder is incomplete; extract {layout.archive} from {CIFAR_URL} again.",
            )
        try:
            check_size(path.stat().st_size, f"{layout.name}: {path}", f"it is not a CIFAR batch; extract {layout.archive} again")
            with open(path, "rb") as handle:
                found[member] = SafeUnpickler(handle, str(path)).load()
        except DataError:
            raise
        except Exception as exc:
            raise _corrupt(layout, str(path), exc) from exc
    return found


def _batch_arrays(batch: Any, source: str, layout: CifarLayout) -> Tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; return ``(data (n, 3072) uint8, labels (n,) int64)``."""
    expected = f"a dict with b'data' ((n, 3072) uint8) and {layout.label_key!r} (n ints in [0, {layout.num_classes}))"
    if not isinstance(batch, dict):
        raise DataError(f"{layout.name}: {source} holds a {type(batch).__name__}, expected {expected}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}  # Python 3 re-pickles: str keys
    data, labels = batch.get(b"data"), batch.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{layout.name}: b'data' in {source} is a {got}, expected {expected}")
    try:
        raw_labels = np.asarray(labels)
    except (TypeError, ValueError):
        raw_labels = None
    if raw_labels is None or raw_labels.shape != (data.shape[0],):
        raise DataError(f"{layout.name}: {layout.label_key!r} in {source} does not hold {data.shape[0]} ints; expected {expected}")
    if raw_labels.size and raw_labels.dtype.kind not in "iu":  # 1.5 or True would otherwise be cast silently
        raise DataError(
            f"{layout.name}: {layout.label_key!r} in {source} holds {raw_labels.dtype} values "
            f"(e.g. {raw_labels[0]!r}), not integers; expected {expected}"
        )
    labels = raw_labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(
            f"{layout.name}: labels in {source} range over [{labels.min()}, {labels.max()}], expected [0, {layout.num_classes})"
        )
    return data, labels


def load_cifar(layout: CifarLayout, split: str, data_dir: Path, verify: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of one split; see the module docstring."""
    members = layout.train_members if split == "train" else layout.test_members
    searched = [data_dir, data_dir / layout.name]
    batches: Optional[Dict[str, Any]] = None
    for directory in searched:
        folder, archive = directory / layout.folder, directory / layout.archive
        if folder.is_dir():
            batches = _read_folder(folder, layout, members)
            sources = {m: str(folder / m) for m in members}
            break
        if archive.is_file():
            _check_md5(archive, layout, verify)
            batches = _read_archive(archive, layout, members)
            sources = {m: f"{archive}:{layout.folder}/{m}" for m in members}
            break
    if batches is None:
        raise missing_files_error(
            layout.name,
            f"{layout.archive} (or its extracted folder {layout.folder}/)",
            searched,
            f"Download the CIFAR python version from {CIFAR_URL} (md5 {layout.archive_md5}) and put the archive there.",
        )
    arrays = [_batch_arrays(batches[m], sources[m], layout) for m in members]
    data = np.concatenate([d for d, _ in arrays])  # (N, 3072), a fresh writable copy
    labels = np.concatenate([l for _, l in arrays])  # (N,)
    images = torch.from_numpy(data).reshape(-1, *IMAGE_SHAPE)  # (N, 3, 32, 32): rows are channel-major
    return images, torch.from_numpy(labels)


for _layout in (CIFAR10, CIFAR100):
    register_dataset(
        DatasetSpec(
            name=_layout.name,
            load_split=lambda split, data_dir, verify, layout=_layout: load_cifar(layout, split, data_dir, verify),
            num_classes=_layout.num_classes,
            mean=_layout.mean,
            std=_layout.std,
            channels=IMAGE_SHAPE[0],
            image_side=IMAGE_SHAPE[1],
        )
    )
