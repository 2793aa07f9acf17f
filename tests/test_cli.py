"""The ``lowbit`` command's own behaviour: lowbit's warnings as one line under a command, Python's format elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import yaml

from lowbit.cli import is_lowbit_warning
from lowbit.config import from_dict
from lowbit.estimators import SurrogateUnusedWarning
from lowbit.nn import DeadSignWarning
from lowbit.probe.config import ProbeConfig
from lowbit.probe.runner import run_grid
from lowbit.runs import RecordsRecovered

# A network probe of a float model (LeNet-5, no sign activation) with a surrogate STE: the surrogate replaces
# nothing, so ModuleObjective warns SurrogateUnusedWarning (in the STE statistics unit).
FLOAT_NET_PROBE = {
    "name": "float-net",
    "network": {"model": {"name": "lenet5"}, "image_size": 32, "batch_size": 16},
    "probe": {"layers": ["fc2"], "inits": 1, "batches": 1},
    "estimators": [{"name": "ste", "surrogate": "ste_clipped"}],
    "measure": {"lr_grid": {"num": 4, "max": 1.0}, "curve_points": 2, "reference": None},
    "stats": {"batches": 2, "batch_size": 8},
    "threads": 1,
}


def test_lowbits_own_warning_classes_are_told_apart_from_others():
    assert all(map(is_lowbit_warning, (SurrogateUnusedWarning, RecordsRecovered, DeadSignWarning)))
    plugin_warning = type("PluginWarning", (UserWarning,), {"__module__": "lowbit_user_plugin"})  # a user's package
    assert not any(map(is_lowbit_warning, (UserWarning, DeprecationWarning, RuntimeWarning, plugin_warning)))


def test_a_surrogate_that_replaces_nothing_is_one_warning_line_under_the_command(tmp_path):
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(FLOAT_NET_PROBE))
    done = subprocess.run([sys.executable, "-m", "lowbit", "probe", "probe.yaml", "--runs-dir", "runs", "--quiet"],
                          cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1, done.stderr  # once, although every mini-batch builds its own objective
    assert warned[0].startswith("lowbit probe: warning: the surrogate ClippedSignSTE replaces nothing: LeNet5 has no sign"), warned
    assert warned[0].endswith("forward_is_sign = True (docs/api.md)"), warned  # the whole message, on that line
    assert "SurrogateUnusedWarning" not in done.stderr and ".py:" not in done.stderr  # not Python's file:line format


def test_from_python_the_same_probe_warns_as_python_does(tmp_path):
    config = from_dict(ProbeConfig, FLOAT_NET_PROBE)
    with pytest.warns(SurrogateUnusedWarning, match="LeNet5 has no sign activation"):
        run_grid(config, tmp_path, progress=False, estimate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SurrogateUnusedWarning)
        with pytest.raises(SurrogateUnusedWarning):  # a Python user can make it an error, as with any warning
            run_grid(from_dict(ProbeConfig, {**FLOAT_NET_PROBE, "seed": 1}), tmp_path / "again", progress=False, estimate=False)


def test_a_sweep_cell_log_shows_the_warning_as_the_command_does(tmp_path):
    from lowbit.sweep.driver import load_sweep_spec, run_sweep

    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(FLOAT_NET_PROBE))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"name": "w", "command": "probe", "base": "probe.yaml",
                                                        "grid": {"seed": [0]}, "workers": 1, "threads": 1}))
    sweep_dir = run_sweep(load_sweep_spec(tmp_path / "spec.yaml"), spec_dir=tmp_path, runs_dir=tmp_path / "sweeps",
                          progress=False, log=lambda line: None)
    (log,) = sweep_dir.rglob("cell.log")
    warned = [line for line in log.read_text().splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("lowbit probe: warning: the surrogate ClippedSignSTE replaces nothing")
    assert "SurrogateUnusedWarning" not in log.read_text()
