"""Generated bad inputs for lowbit's commands: malformed configs and overrides, hostile files.

``all_cases(seed, checkpoint)`` returns a fixed list (for a fixed seed) of
:class:`Case`: the command line to run, the files to create first in the
case's sandbox folder, and the words one of which the error must contain (the
key or the file at fault). Used by ``test_fuzz.py`` (and by
``benchmarks/bench_reliability.py`` for the figures of docs/reliability.md).

The kinds:

- ``override``: one key of a tiny valid train / probe / landscape config set to
  a malformed value (wrong type, NaN, ±inf, absurd magnitude, negative, a
  foreign name or path), or a misspelt key;
- ``yaml``: a config file that is hostile (alias bomb, deep nesting, python
  tags that would run a command, duplicate keys, binary, huge, empty, a NUL);
- ``data``: CIFAR / MNIST files that lie about their sizes or hold code;
- ``checkpoint``: ``run.init_from``, ``--resume`` and ``source.checkpoint``
  pointing at pickles that run code, truncated archives, foreign tensors;
- ``records``: ``lowbit report`` on run directories with corrupt files.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import yaml

MARKER = "PWNED"  # a hostile file's payload creates this file in the sandbox; it must never appear

# Tiny valid configs every override case starts from (a valid mutation then runs in about a second).
TRAIN_BASE = ["run.epochs=1", "data.train_subset=64", "data.test_subset=32", "run.tensorboard=false", "run.threads=1"]
PROBE_BASE = {
    "name": "fuzz",
    "task": {"batch_size": 64},
    "probe": {"dims": [3], "inits": 1, "batches": 1, "layers": "all"},
    "estimators": [{"name": "cdg", "eps": 0.1}, {"name": "ste", "surrogate": "ste_clipped"}],
    "measure": {"lr_grid": {"num": 10}, "curve_points": 4},
    "threads": 1,
}
LANDSCAPE_BASE = ["grid.resolution=3", "eval.num_images=16", "interpolation.points=3", "threads=1"]

# values no numeric key can mean; strings and containers where a number or a name is expected
BAD_NUMBERS = [".inf", "-.inf", ".nan", "1e20", "-1e20", "1e300", "-1", "-0.5", "2**70", "1.5e400"]
BAD_TYPES = ["abc", "[1, 2]", "{a: 1}", "true", "'1e-3x'", "[[[]]]", "null"]
BAD_NAMES = ["nonexistent", "../../escaped", "/etc/passwd", "'a\\0b'", "''", "' '"]


@dataclass
class Case:
    kind: str
    label: str
    argv: List[str]  # "{sandbox}" and "{runs}" are filled in by the runner
    names: List[str]  # the error must contain one of these (the key or the file at fault)
    files: Dict[str, bytes] = field(default_factory=dict)  # sandbox-relative path -> content
    may_run: bool = True  # a correct run (exit 0) is an acceptable outcome


def _train_keys() -> Dict[str, object]:
    from lowbit.config import to_dict
    from lowbit.train.config import TrainConfig

    return dict(_leaves(to_dict(TrainConfig())))


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _bad_values(default: object, rng: random.Random, count: int) -> List[str]:
    if isinstance(default, bool):
        pool = BAD_TYPES[:3] + ["2", ".nan"]
    elif isinstance(default, (int, float)) or default is None:
        pool = BAD_NUMBERS + BAD_TYPES[:4] + BAD_NAMES[:3]
    elif isinstance(default, str):
        pool = BAD_NAMES + ["[a, b]", "{x: 1}", "3"]
    else:  # lists, dicts
        pool = BAD_TYPES + BAD_NUMBERS[:3] + ["{bogus_key: 1}", "[.inf]", "[-1e20, 1e20]"]
    return rng.sample(pool, min(count, len(pool)))


def override_cases(rng: random.Random, checkpoint: str) -> List[Case]:
    cases: List[Case] = []
    for key, default in _train_keys().items():
        for value in _bad_values(default, rng, 3):
            cases.append(Case("override", f"train {key}={value}", ["train", "--quiet", *TRAIN_BASE, f"{key}={value}"],
                              [key, key.split(".")[-1]]))
    for typo in ["optim.lrr=0.1", "run.epoch=3", "modle.name=lenet5", "data.batchsize=3", "quant.w_bitz=8",
                 "augment.erasing.q=0.5", "schedule=3", "run=[1]"]:
        key = typo.split("=")[0]
        parts = key.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]  # "unknown key 'modle'" names the part at fault
        cases.append(Case("override", f"train {typo}", ["train", "--quiet", *TRAIN_BASE, typo], prefixes))
    probe_keys = dict(_leaves({k: v for k, v in PROBE_BASE.items() if k != "estimators"}))
    probe_keys.update({"measure.quick_lr": 0.1, "measure.reference": "cdg", "seed": 0, "task.depth": 3, "task.act": "ste",
                       "task.pretrain_steps": 0, "probe.select": {}, "probe.sweep": {}, "budget": None, "stats.batches": 0})
    for key, default in probe_keys.items():
        for value in _bad_values(default, rng, 2):
            cases.append(Case("override", f"probe {key}={value}", ["probe", "{sandbox}/probe.yaml", "--quiet", f"{key}={value}"],
                              [key, key.split(".")[-1]], files={"probe.yaml": yaml.safe_dump(PROBE_BASE).encode()}))
    for est in ["estimators=[{name: cdg, eps: -1}]", "estimators=[{name: nope}]", "estimators=[{name: nes, population: 1e20}]",
                "estimators=[{name: ste, surrogate: .inf}]", "estimators=[]", "estimators=7"]:
        cases.append(Case("override", f"probe {est}", ["probe", "{sandbox}/probe.yaml", "--quiet", est],
                          ["estimator", "eps", "nope", "population", "surrogate"], files={"probe.yaml": yaml.safe_dump(PROBE_BASE).encode()}))
    from lowbit.analysis.config import LandscapeConfig
    from lowbit.config import to_dict

    landscape = dict(_leaves(to_dict(LandscapeConfig())))
    landscape.pop("source.train_overrides")
    for key, default in landscape.items():
        for value in _bad_values(default, rng, 2):
            cases.append(Case("override", f"landscape {key}={value}",
                              ["analyze", "landscape", "--quiet", f"source.checkpoint={checkpoint}", *LANDSCAPE_BASE, f"{key}={value}"],
                              [key, key.split(".")[-1]]))
    return cases


def _evil_pickle(marker: str) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({b"data": Evil(), "model": Evil()}, protocol=2)


def yaml_cases(rng: random.Random) -> List[Case]:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    texts = {
        "alias bomb": laughs.encode(),
        "recursive alias": b"run: &r\n  x: *r\n",
        "deep flow": ("a: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "deep block": "".join("  " * i + f"k{i}:\n" for i in range(300)).encode() + b"  " * 300 + b"x\n",
        "python tag": f"run: !!python/object/apply:os.system ['touch {MARKER}']\n".encode(),
        "python name": b"run: !!python/name:os.system\n",
        "python module": b"run: !!python/module:os\n",
        "duplicate keys": b"optim:\n  lr: 0.1\noptim:\n  lr: 0.2\n",
        "duplicate nested": b"optim:\n  lr: 0.1\n  lr: 0.2\n",
        "empty": b"",
        "comments only": b"# a config\n# with nothing in it\n",
        "a list": b"- 1\n- 2\n",
        "a scalar": b"42\n",
        "binary": bytes(rng.randrange(256) for _ in range(2000)),
        "invalid utf-8": b"run:\n  name: \xff\xfe\n",
        "huge": b"run:\n  name: x\n" + b"# " + b"y" * (2 << 20) + b"\n",
        "nul in name": b'run:\n  name: "a\\0b"\n',
        "tab indent": b"run:\n\tepochs: 3\n",
        "unclosed": b"run: {epochs: 3\n",
        "non-string key": b"1: 2\n",
        "unhashable key": b"? [a, b]\n: 1\n",
        "many documents": b"run: {}\n---\nrun: {}\n",
    }
    cases = []
    for label, text in texts.items():
        for command in (["train"], ["probe"], ["analyze", "weights"]):
            cases.append(Case("yaml", f"{' '.join(command)} {label}", [*command, "{sandbox}/c.yaml", "--quiet"],
                              ["c.yaml", "name", "run"], files={"c.yaml": text}, may_run=False))
    # a report of a run whose files were replaced by hostile ones
    for label in ("python tag", "alias bomb", "duplicate keys"):
        cases.append(Case("yaml", f"report {label}", ["report", "{sandbox}/run"], ["config.yaml"],
                          files={"run/config.yaml": texts[label], "run/metrics.csv": b"epoch,test_acc\r\n1,0.5\r\n"}, may_run=False))
    cases.append(Case("yaml", "sweep alias bomb", ["sweep", "{sandbox}/s.yaml"], ["s.yaml"], files={"s.yaml": laughs.encode()},
                      may_run=False))
    return cases


def _cifar_batch(data, labels, protocol: int = 2) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol)


class _Reduce:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return self.value


def _cifar_tar(members: Dict[str, bytes], links: Sequence[str] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def data_cases(rng: random.Random) -> List[Case]:
    reconstruct = getattr(np, "_core", np).multiarray._reconstruct
    good = np.zeros((10, 3072), np.uint8)
    folder = "data/cifar-10-batches-py"
    hostile_batches = {
        "code": _evil_pickle(MARKER),
        "zero strides": _cifar_batch(_Reduce((np.ndarray, ((1_000_000, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))),
                                     _Reduce((np.ndarray, ((1_000_000,), np.dtype("u1"), b"\0", 0, (0,))))),
        "short data": _cifar_batch(_Reduce((reconstruct, (np.ndarray, (0,), b"b"), (1, (10_000, 3072), np.dtype("u1"), False, b"\0" * 8))), [0]),
        "object dtype": _cifar_batch(np.array([[object()]], dtype=object), [0]),
        "float labels": _cifar_batch(good, [1.5] * 10),
        "bool labels": _cifar_batch(good, [True] * 10),
        "labels out of range": _cifar_batch(good, [10] * 10),
        "negative labels": _cifar_batch(good, [-1] * 10),
        "label count": _cifar_batch(good, [0] * 9),
        "wrong width": _cifar_batch(np.zeros((10, 3071), np.uint8), [0] * 10),
        "float data": _cifar_batch(np.zeros((10, 3072), np.float32), [0] * 10),
        "3-d data": _cifar_batch(np.zeros((10, 3072, 1), np.uint8), [0] * 10),
        "truncated": _cifar_batch(good, [0] * 10)[:200],
        "not a dict": pickle.dumps([1, 2, 3], protocol=2),
        "garbage": bytes(rng.randrange(256) for _ in range(500)),
        "empty": b"",
        "persistent id": b"\x80\x02P0\n.",
        "builtins": pickle.dumps(_Reduce((eval, ("1+1",))), protocol=2),
        "big-endian": _cifar_batch(np.zeros((10, 3072), ">u2"), [0] * 10),
        "cyclic list": b"\x80\x02]q\x00h\x00a.",
    }
    cases = []
    for label, content in hostile_batches.items():
        files = {f"{folder}/data_batch_{i}": _cifar_batch(good, [0] * 10) for i in range(1, 6)}
        files[f"{folder}/test_batch"] = _cifar_batch(good, [0] * 10)
        files[f"{folder}/data_batch_1"] = content
        cases.append(Case("data", f"cifar batch: {label}", ["train", "--quiet", *TRAIN_BASE, "data.dataset=cifar10",
                                                             "--data-dir", "{sandbox}/data"], ["cifar10", "data_batch_1"],
                          files=files, may_run=False))
    member = "cifar-10-batches-py/"
    ok = _cifar_batch(good, [0] * 10)
    full = {member + m: ok for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    archives = {
        "symlink member": _cifar_tar({k: v for k, v in full.items() if not k.endswith("_1")}, [member + "data_batch_1"]),
        "missing member": _cifar_tar({k: v for k, v in full.items() if not k.endswith("_3")}),
        "code member": _cifar_tar({**full, member + "data_batch_2": _evil_pickle(MARKER)}),
        "bomb member": _gzip_tar_bomb(member + "data_batch_1"),
        "truncated archive": _cifar_tar(full)[:300],
        "not an archive": b"hello" * 100,
    }
    for label, content in archives.items():
        cases.append(Case("data", f"cifar archive: {label}", ["train", "--quiet", *TRAIN_BASE, "data.dataset=cifar10",
                                                               "--data-dir", "{sandbox}/data"], ["cifar10", "cifar-10-python.tar.gz"],
                          files={"data/cifar-10-python.tar.gz": content}, may_run=False))
    labels = gzip.compress(struct.pack(">II", 0x801, 10) + bytes(10))
    mnist = {
        "bomb": _gzip_bomb(struct.pack(">IIII", 0x803, 60_000, 28, 28), 128 << 20),
        "header states 4 GB": gzip.compress(struct.pack(">IIII", 0x803, 1_000_000, 64, 64) + bytes(100)),
        "longer than its header": gzip.compress(struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(10 * 784 + 99)),
        "shorter than its header": gzip.compress(struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(100)),
        "bad magic": gzip.compress(struct.pack(">IIII", 0x804, 10, 28, 28) + bytes(7840)),
        "not gzip": b"\x1f\x8bnot really gzip" * 10,
        "truncated gzip": gzip.compress(struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(7840))[:40],
        "header only": gzip.compress(b"\0\0\x08"),
    }
    for label, content in mnist.items():
        cases.append(Case("data", f"mnist: {label}", ["train", "--quiet", *TRAIN_BASE, "data.dataset=mnist", "--data-dir", "{sandbox}/data"],
                          ["mnist"], files={"data/train-images-idx3-ubyte.gz": content, "data/train-labels-idx1-ubyte.gz": labels,
                                            "data/t10k-images-idx3-ubyte.gz": content, "data/t10k-labels-idx1-ubyte.gz": labels},
                          may_run=False))
    cases.append(Case("data", "mnist: labels out of range", ["train", "--quiet", *TRAIN_BASE, "data.dataset=mnist", "--data-dir", "{sandbox}/data"],
                      ["mnist"], files={"data/train-images-idx3-ubyte": struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(7840),
                                        "data/train-labels-idx1-ubyte": struct.pack(">II", 0x801, 10) + bytes([11] * 10)},
                      may_run=False))
    return cases


def _gzip_bomb(header: bytes, size: int) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as handle:
        handle.write(header)
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            handle.write(block)
    return buffer.getvalue()


def _gzip_tar_bomb(name: str) -> bytes:
    """A .tar.gz whose one member states (and inflates to) 128 MiB of zeros, in ~130 kB."""
    header = tarfile.TarInfo(name)
    header.size = 128 << 20
    raw = header.tobuf(format=tarfile.GNU_FORMAT)
    return _gzip_bomb(raw, 128 << 20)


def _zip_checkpoint(entries: Dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def checkpoint_cases(rng: random.Random, checkpoint: str) -> List[Case]:
    import torch

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    real = open(checkpoint, "rb").read()
    hostile = {
        "code (plain pickle)": _evil_pickle(MARKER),
        "code inside torch zip": _zip_checkpoint({"archive/data.pkl": _evil_pickle(MARKER), "archive/version": b"3\n"}),
        "truncated": real[: len(real) // 3],
        "garbage": bytes(rng.randrange(256) for _ in range(4000)),
        "empty": b"",
        "a list": saved([1, 2, 3]),
        "foreign shapes": saved({"model": {"conv1.weight": torch.zeros(2, 2)}}),
        "no tensors": saved({"model": {"conv1.weight": 3}}),
        "nan weights": saved({**torch.load(checkpoint, weights_only=True),
                              "model": {k: v.float() * float("nan") for k, v in torch.load(checkpoint, weights_only=True)["model"].items()}}),
    }
    cases = []
    for label, content in hostile.items():
        cases.append(Case("checkpoint", f"init_from: {label}", ["train", "--quiet", *TRAIN_BASE, "run.init_from={sandbox}/x.pt"],
                          ["init_from", "x.pt"], files={"x.pt": content}, may_run=label == "nan weights"))
        config = yaml.safe_dump(yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "config.yaml")).read()))
        cases.append(Case("checkpoint", f"resume: {label}", ["train", "--quiet", "--resume", "{sandbox}/run"], ["last.pt", "checkpoint"],
                          files={"run/config.yaml": config.encode(), "run/checkpoints/last.pt": content}, may_run=False))
        cases.append(Case("checkpoint", f"landscape source: {label}", ["analyze", "landscape", "--quiet", *LANDSCAPE_BASE,
                                                                       "source.checkpoint={sandbox}/x.pt"], ["source.checkpoint", "x.pt"],
                          files={"x.pt": content}, may_run=label == "nan weights"))
    return cases


def records_cases(rng: random.Random) -> List[Case]:
    config = b"name: r\nrun: {epochs: 1}\n"
    texts = {
        "binary metrics": bytes(rng.randrange(256) for _ in range(3000)),
        "ragged rows": b"epoch,test_acc\r\n1,0.5,9,9\r\n2\r\n",
        "torn tail": b"epoch,train_loss,test_acc,test_loss,train_acc,lr,step,seconds\r\n1,0.5,0.5,0.5,0.5,0.1,2,0.1\r\n2,0.4",
        "text numbers": b"epoch,train_loss,test_acc,test_loss,train_acc,lr,step,seconds\r\nx,y,z,w,v,u,t,s\r\n",
        "huge field": b"epoch,test_acc\r\n1," + b"9" * (1 << 20) + b"\r\n",
        "unterminated quote": b'epoch,test_acc\r\n1,"0.5\r\n',
    }
    return [Case("records", f"report: {label}", ["report", "{sandbox}/run"], ["metrics.csv", "run"],
                 files={"run/config.yaml": config, "run/metrics.csv": text}) for label, text in texts.items()]


def all_cases(seed: int, checkpoint: str) -> List[Case]:
    """Every case, in a fixed order for a fixed seed."""
    rng = random.Random(seed)
    return (override_cases(rng, checkpoint) + yaml_cases(rng) + data_cases(rng) + checkpoint_cases(rng, checkpoint)
            + records_cases(rng))
