"""Every file in configs/ loads, validates, and runs end to end once shrunk.

Files are discovered by glob, so a config added later is covered without a change here; its
family comes from its name (``train-*``, ``probe-*``, ``analyze-<analysis>-*``; ``sweep-*`` files
are tests/test_sweep.py's). Shrinking keeps every setting that selects *what* runs (model,
quantization, optimizer, schedule, estimators and their labels, measurements, analyses) and
lowers only *how much*: dims, widths, batches, epochs, steps, populations, subsets. CIFAR and
MNIST configs read tiny synthetic archives in the official formats (tests/test_data.py), so
nothing needs a download.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

from lowbit.config import from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep-"))
FAMILIES = ("train-", "probe-", "analyze-", "sweep-")

# One training step on 8 images, evaluated on 8, for every training a config makes.
TINY_TRAIN = {"data": {"train_subset": 16, "test_subset": 8, "batch_size": 8, "eval_batch_size": 8},
              "run": {"epochs": 1, "tensorboard": False, "threads": 1}}
TINY_TRAIN_OVERRIDES = ["run.epochs=1", "data.train_subset=16", "data.test_subset=8", "data.batch_size=8",
                        "data.eval_batch_size=8", "run.tensorboard=false", "run.threads=1"]
# Data sets the tests build tiny archives of; any other (digits, a data set installed on the machine such
# as apt's dataset-fashion-mnist) is read from where the config says, through the train/test subsets.
TINY_DATASETS = {"cifar10", "cifar100", "mnist", "fashion_mnist"}  # fashion-mnist: MNIST's IDX format
TINY_WIDTH = 4  # first-stage channels of the zoo's ResNets (`width`)
TINY_WIDTH_MULT = 0.0625  # channel multiplier of the others (`width_mult`)


def family(path: Path) -> str:
    return next(f[:-1] for f in FAMILIES if path.name.startswith(f))


def analysis_of(path: Path) -> str:
    """``analyze-bn-cifar10.yaml`` -> ``bn-smoothness``: the analysis whose first word follows ``analyze-``."""
    from lowbit.analysis.command import ANALYSES

    rest = path.stem[len("analyze-"):]
    matches = [name for name in ANALYSES if rest == name or rest.startswith(name + "-") or rest.startswith(name.split("-")[0] + "-")]
    assert len(matches) == 1, f"{path.name}: cannot tell its analysis from the name (analyses: {', '.join(ANALYSES)})"
    return matches[0]


def load(path: Path):
    """The config exactly as the command loads the file."""
    from lowbit.config import load_config

    kind = family(path)
    if kind == "train":
        from lowbit.train.config import load_train_config

        return load_train_config(path)
    if kind == "probe":
        from lowbit.probe import ProbeConfig

        return load_config(ProbeConfig, path)
    from lowbit.analysis.command import load_analysis_config

    return load_analysis_config(analysis_of(path), path)


def test_every_config_belongs_to_a_command():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    strays = [n for n in names if not n.startswith(FAMILIES)]
    assert not strays, f"configs/ files without a command prefix ({', '.join(FAMILIES)}): {strays}"
    assert len(CONFIGS) >= 40  # the glob found the folder (train, probe and analyze configs)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_passes_its_commands_checks(path):
    config = load(path)
    kind = family(path)
    if kind == "train":
        from lowbit.train import check_config

        check_config(config)
    elif kind == "probe":
        from lowbit.probe import prepare

        assert prepare(config)  # every estimator built, labels, layers, activation, data (network: digits)
    else:
        assert analysis_of(path) and config is not None


# --- shrinking ----------------------------------------------------------------------


def _even(n: float) -> int:
    return max(4, 2 * math.ceil(n / 2))


def shrink_estimator_params(name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Fewer samples, steps and coordinates; the same estimator, surrogate and hyper-parameters otherwise."""
    params = dict(params)
    for key in ("population",):
        if key in params:
            params[key] = _even(params[key] / 100)
    if name in ("multistep_ste",) and "steps" in params:
        params["steps"] = min(params["steps"], 3)
    for key in ("coords",):
        if params.get(key):
            params[key] = min(params[key], 8)
    for key in ("iterations",):
        if key in params:
            params[key] = min(params[key], 3)
    return params


def shrink_probe(data: Dict[str, Any], data_dir: Path = None) -> Dict[str, Any]:
    from lowbit.probe.config import expand_estimators

    data = copy.deepcopy(data)
    grid = data["probe"]
    grid["inits"], grid["batches"] = 1, 1
    grid["dims"] = [min(grid["dims"]) if min(grid["dims"]) <= 3 else 3]
    grid["select"] = {}
    for key, values in list(grid["sweep"].items()):
        if key in ("pretrain_steps", "pretrain_epochs"):
            grid["sweep"][key] = sorted({min(int(v), 1) for v in values})
        elif key == "batch_size":
            grid["sweep"][key] = sorted({min(int(v), 32) for v in values}) if len(set(values)) == 1 else list(range(16, 16 + 8 * len(values), 8))
    # Keep every label (references and comparisons name them): expand first, then shrink each.
    data["estimators"] = [
        {"name": s.name, "label": s.label, **shrink_estimator_params(s.name, s.params)}
        for s in expand_estimators(data["estimators"])
    ]
    task = data["task"]
    task["batch_size"] = 64
    task["pretrain_steps"] = min(task["pretrain_steps"], 2)
    task["pretrain_batch_size"] = 32
    lr_grid = data["measure"]["lr_grid"]
    lr_grid["num"] = min(lr_grid["num"], 20)
    data["measure"]["curve_points"] = min(data["measure"]["curve_points"], 5)
    trajectory = data["trajectory"]
    if trajectory["evaluations"]:
        trajectory["evaluations"] = min(trajectory["evaluations"], 120)
        trajectory["points"] = min(trajectory["points"], 4)
        trajectory["methods"] = [
            {"name": s.name, "label": s.label, **shrink_estimator_params(s.name, s.params)}
            for s in expand_estimators(trajectory["methods"])
        ]
    network = data.get("network")
    if network:
        network["batch_size"] = 16
        if network["dataset"] in TINY_DATASETS and data_dir is not None:
            network["data_dir"] = str(data_dir)
        network["pretrain_epochs"] = min(network["pretrain_epochs"], 1)
        network["pretrain_batch_size"] = 512  # a handful of steps per epoch
        if network["dataset"] == "digits" and not network.get("checkpoint"):
            network["image_size"] = None  # native 8x8: the zoo's ResNets are fully convolutional
        if isinstance(grid["layers"], list):
            grid["layers"] = grid["layers"][:2]
        if "width" in network["model"]:
            network["model"]["width"] = TINY_WIDTH
        data["stats"]["batches"] = min(data["stats"]["batches"], 2)
        data["stats"]["batch_size"] = 16
    data["threads"] = 1
    return data


def shrink_model(model: Dict[str, Any]) -> None:
    import inspect

    from lowbit.models.registry import MODELS

    accepted = inspect.signature(MODELS.get(model["name"])).parameters
    if "width" in accepted:
        model["width"] = TINY_WIDTH
    if "width_mult" in accepted:
        model["width_mult"] = TINY_WIDTH_MULT


def shrink_train(data: Dict[str, Any], data_dir: Path, teacher_of=None) -> Dict[str, Any]:
    data = copy.deepcopy(data)
    distill = data.get("distill")
    if distill and distill.get("teacher") and teacher_of is not None:
        distill["teacher"] = str(teacher_of(distill["teacher"]))  # a shrunk run of the config that makes it
    for section, values in TINY_TRAIN.items():
        data[section].update(values)
    shrink_model(data["model"])
    if data["data"]["dataset"] in TINY_DATASETS:
        data["data"]["data_dir"] = str(data_dir)
    if data.get("probe"):
        data["probe"].update(every=1, batch_size=16, coords=4, stats_batches=2, stats_batch_size=8)
    return data


def shrink_analysis(name: str, data: Dict[str, Any], data_dir: Path) -> Dict[str, Any]:
    data = copy.deepcopy(data)
    data["threads"] = 1 if "threads" in data else None
    if name == "bn-smoothness":
        data["model"]["width_mult"] = TINY_WIDTH_MULT
        data["train"]["steps"] = 2
        data["probe"].update(every=2, num_steps=2)
        data["lr_band"].update(lrs=data["lr_band"]["lrs"][:1], steps=1)
        data["data"].update(batch_size=8, train_subset=16)
        if data["data"]["dataset"] in TINY_DATASETS:
            data["data"]["data_dir"] = str(data_dir)
    if name == "landscape":
        data["grid"]["resolution"] = 3
        data["eval"].update(num_images=8, batch_size=8, points_per_batch=4, bn_batches=1)
        data["interpolation"]["points"] = 3
    if name == "attribution":
        data["ig_steps"] = 4
        data["indices"] = [i for i in data["indices"] if i < 8] or [0]
    if "source" in data:
        data["source"]["train_overrides"] = list(data["source"]["train_overrides"]) + TINY_TRAIN_OVERRIDES
    if name == "weights":
        data["train"] = {label: list(overrides) + TINY_TRAIN_OVERRIDES for label, overrides in data["train"].items()}
    return data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """One folder with tiny CIFAR-10, CIFAR-100 and MNIST archives in their official formats."""
    from test_data import write_cifar_archive, write_mnist

    from lowbit.data.cifar import CIFAR10, CIFAR100

    folder = tmp_path_factory.mktemp("tiny-data")
    write_cifar_archive(folder, CIFAR10)
    write_cifar_archive(folder, CIFAR100)
    write_mnist(folder, gz=True, n=(24, 8))
    return folder


def teacher_runs(data_dir: Path, root: Path):
    """``teacher_of(glob)``: a shrunk run of the shipped train config whose runs the glob matches.

    Distillation configs name their teacher by the run directories of another shipped config
    (``runs/fmnist-float-*``); that config is run shrunk once, into ``root``.
    """
    import fnmatch

    made: Dict[str, Path] = {}

    def teacher_of(pattern: str) -> Path:
        if pattern in made:
            return made[pattern]
        for path in CONFIGS:
            if family(path) != "train":
                continue
            config = load(path)
            if config.distill is None and fnmatch.fnmatch(f"runs/{config.run_name}-20260101-000000", pattern):
                made[pattern] = run_shrunk(path, root / config.run_name, data_dir)
                return made[pattern]
        raise AssertionError(f"no shipped train config makes the runs {pattern!r} a distillation config names")

    return teacher_of


def run_shrunk(path: Path, run_dir: Path, data_dir: Path, teacher_of=None) -> Path:
    kind = family(path)
    config = load(path)
    if kind == "probe":
        from lowbit.probe import ProbeConfig
        from lowbit.probe.command import run_probe

        small = from_dict(ProbeConfig, shrink_probe(to_dict(config), data_dir))
        return run_probe(small, run_dir=run_dir, progress=False, estimate=False)
    if kind == "train":
        from lowbit.train import TrainConfig, train

        small = from_dict(TrainConfig, shrink_train(to_dict(config), data_dir, teacher_of))
        return train(small, run_dir=run_dir)
    from lowbit.analysis.command import analysis_config_class, run_analysis

    name = analysis_of(path)
    small = from_dict(analysis_config_class(name), shrink_analysis(name, to_dict(config), data_dir))
    return run_analysis(name, small, run_dir=run_dir, data_dir=str(data_dir), progress=False)


# Shrunk runs that still take over 4 s on 2 shared cores go to `-m slow`: the analyses that train a model
# first, low-bit training of a deep model (its report draws gradient histograms of every layer), the
# training-time probe (tests/test_grad_probe.py covers it), and every network probe but the first (each
# pretrains a ResNet and probes it; the first one keeps the network path in the default run).
SLOW_ANALYSES = {"attribution", "weights"}


def _marks(path: Path):
    kind = family(path)
    heavy = False
    if kind == "analyze":
        heavy = analysis_of(path) in SLOW_ANALYSES
    elif kind == "train":
        config = load(path)
        heavy = (bool(config.quant) and config.model.name != "lenet5") or config.probe is not None
    else:
        networks = [p for p in CONFIGS if family(p) == "probe" and load(p).network is not None]
        heavy = path in networks[1:]
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if heavy else [])


@pytest.fixture(scope="module")
def teacher_of(tiny_data, tmp_path_factory):
    return teacher_runs(tiny_data, tmp_path_factory.mktemp("teachers"))


@pytest.mark.parametrize("path", [_marks(p) for p in CONFIGS])
def test_config_runs_end_to_end_when_shrunk(path, tmp_path, tiny_data, teacher_of):
    run_dir = run_shrunk(path, tmp_path / "run", tiny_data, teacher_of)
    assert (run_dir / "config.yaml").is_file()
    report = run_dir / "report.md"
    assert report.is_file() and report.stat().st_size > 200, f"{path.name}: no report"
    written = {p.name for p in run_dir.rglob("*.png")}
    assert written, f"{path.name}: the run drew no plot"
    if family(path) == "probe":
        from lowbit.runs import read_records

        records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer", "probed_layer"))
        estimators = {r["estimator"] for r in records if r["metric"] == "seconds"}
        assert estimators == {e["label"] for e in shrink_probe(to_dict(load(path)))["estimators"]}
