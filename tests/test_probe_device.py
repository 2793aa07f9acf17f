"""The probe on a device (issue #13): the ``device`` key and ``--device``, the no-CUDA error before any
work, resume on another device, and (marked ``cuda``, run wherever a GPU exists) CPU == CUDA records.

On the CPU the device plumbing runs through the same code as on a GPU: every estimator family of
the toy and of a network, with ``device=cpu`` given explicitly, must give exactly the records of
the default run, and ``--device`` must land in the run's config.yaml.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from lowbit.cli import main
from lowbit.config import from_dict
from lowbit.probe.command import run_probe
from lowbit.probe.config import ProbeConfig
from lowbit.runs import read_records

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVERY_TOY_FAMILY = {
    "name": "dev",
    "task": {"batch_size": 256, "pretrain_steps": 2},
    "probe": {"dims": [3], "inits": 1, "batches": 1},
    "estimators": [
        {"name": "cdg", "eps": 0.1},
        {"name": "ste", "surrogate": "swish_sign", "beta": 5.0},
        {"name": "nes", "population": 64, "sigma": 0.1},
        {"name": "dg", "step": 0.05, "budget": 0.1, "steps": 2},
        {"name": "multistep_ste", "optimizer": "sgdm", "steps": 3, "lr": 0.05, "budget": 0.1},
    ],
    "measure": {"lr_grid": {"num": 12}, "curve_points": 4},
    "threads": 1,
}
NETWORK = {
    "name": "dev-net",
    "network": {"model": {"name": "xnor_resnet18", "width": 1}, "image_size": None, "batch_size": 16},
    "probe": {"layers": ["layer1.0.conv1"], "inits": 1, "batches": 1},
    "estimators": [{"name": "cdg", "eps": 0.01, "coords": 8}, {"name": "ste", "surrogate": "ste_clipped"}],
    "measure": {"lr_grid": {"num": 6, "max": 1.0}, "curve_points": 3},
    "stats": {"batches": 2, "batch_size": 8},
    "threads": 1,
}

VOLATILE = ("seconds",)  # wall-clock timings differ between any two runs


def numbers(run_dir):
    return [
        (r["unit"], r["estimator"], r["metric"], r.get("lr"), "nan" if _isnan(r["value"]) else r["value"])
        for r in read_records(run_dir / "records.csv")
        if r["metric"] not in VOLATILE
    ]


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def probe(tmp_path, name, data):
    return run_probe(from_dict(ProbeConfig, data), runs_dir=tmp_path / name, progress=False)


@pytest.mark.parametrize("data", [EVERY_TOY_FAMILY, NETWORK], ids=["toy", "network"])
def test_device_cpu_given_explicitly_gives_the_default_runs_records(tmp_path, data):
    default = probe(tmp_path, "default", data)
    explicit = probe(tmp_path, "explicit", {**data, "device": "cpu", "allow_tf32": True})
    assert numbers(explicit) == numbers(default)
    assert yaml.safe_load((explicit / "config.yaml").read_text())["device"] == "cpu"


def test_device_flag_lands_in_the_config_and_may_change_on_resume(tmp_path, capsys):
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(EVERY_TOY_FAMILY))
    assert main(["probe", str(path), "--device", "cpu", "--quiet", "--runs-dir", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["device"] == "cpu"
    records = numbers(run_dir)
    (run_dir / "records.csv").unlink()  # nothing saved: resume recomputes everything, on the given device
    for stale in run_dir.glob(".records.csv*"):
        stale.unlink()
    assert main(["probe", "--resume", str(run_dir), "--device", "cpu", "--quiet"]) == 0
    assert numbers(run_dir) == records


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line_before_any_run_directory(tmp_path, capsys):
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(EVERY_TOY_FAMILY))
    assert main(["probe", str(path), "--device", "cuda", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is available" in err and "device=cpu" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _close(a, b, rel=1e-3, abs_=1e-5) -> bool:
    return a == b == "nan" or (a != "nan" and b != "nan" and math.isclose(a, b, rel_tol=rel, abs_tol=abs_))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("data", [EVERY_TOY_FAMILY, NETWORK], ids=["toy", "network"])
def test_cuda_records_equal_the_cpus_within_float32_rounding(tmp_path, data):
    cpu = numbers(probe(tmp_path, "cpu", data))
    gpu = numbers(probe(tmp_path, "gpu", {**data, "device": "cuda"}))
    assert [row[:4] for row in gpu] == [row[:4] for row in cpu]
    cosines = [(c[4], g[4]) for c, g in zip(cpu, gpu) if c[2] == "cosine"]
    assert cosines and all(_close(c, g, rel=0, abs_=1e-3) for c, g in cosines)
    losses = [(c[4], g[4]) for c, g in zip(cpu, gpu) if c[2] in ("best_loss", "quick_decrease")]
    assert all(_close(c, g) for c, g in losses)
