"""User code from the command line: ``--import MODULE``, ``plugins:`` in a config, ``lowbit.plugins`` entry points.

A real plugin package is written into a temporary folder: it registers a model,
a sign quantizer with a surrogate of its own and an estimator. Every run that
registers them happens in a subprocess of the real ``lowbit`` command (the
registries of this test process stay as lowbit ships them); only failures,
which register nothing, run in-process.
"""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lowbit import plugins
from lowbit.cli import SUBCOMMANDS, main
from lowbit.runs import read_records

PLUGIN = "lowbit_test_plugin"

PLUGIN_CODE = '''
"""A user's package: one model, one quantizer and one estimator, registered on import."""
import torch
from torch import nn

from lowbit.estimators import GradientEstimator, register_estimator, resolve_surrogate, ste_gradient
from lowbit.models import register_model
from lowbit.quant import Quantizer, get_quantizer, hard_sign, quantize_with_surrogate, register_quantizer


@register_quantizer("plug_tri_sign")
class TriangleSign(Quantizer):
    """q(x) = sign(x); dq/dx := max(0, 1 - |x| / width) / width (a triangle of area 1)."""

    forward_is_sign = True
    param_names = ("width",)

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)

    def forward(self, x):
        w = self.width
        return quantize_with_surrogate(x, hard_sign, lambda x, grad: grad * (1 - x.abs() / w).clamp(min=0) / w)


@register_estimator("plug_signed_ste")
class SignedSTE(GradientEstimator):
    """g = sign(dL/dw) of the STE gradient (signSGD's direction)."""

    param_names = ("surrogate",)

    def __init__(self, surrogate="ste"):
        self.surrogate = surrogate
        self._surrogate = resolve_surrogate(surrogate)

    def estimate(self, objective, generator=None):
        return {name: torch.sign(g) for name, g in ste_gradient(objective, self._surrogate).items()}


class SignMLP(nn.Module):
    def __init__(self, num_classes, in_channels, hidden, act, input_size):
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self.fc1 = nn.Linear(in_channels * input_size * input_size, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = get_quantizer(act)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(x.flatten(1)))))


@register_model("plug_mlp")
def plug_mlp(num_classes=10, in_channels=3, hidden=32, act="plug_tri_sign", input_size=8):
    return SignMLP(num_classes, in_channels, hidden, act, input_size)
'''

EXTRA_CODE = '''
from lowbit.models import register_model


def register():
    """Called by the `module:function` entry point."""
    from lowbit_test_plugin import SignMLP

    register_model("plug_mlp_wide")(lambda num_classes=10, in_channels=3: SignMLP(num_classes, in_channels, 64, "ste", 8))
'''

TINY_TRAIN = [
    "model.name=plug_mlp", "data.image_size=null", "data.train_subset=128", "data.test_subset=64",
    "data.batch_size=32", "run.epochs=2", "run.tensorboard=false", "run.threads=1", "schedule.warmup_epochs=0",
    "augment.crop_padding=0",
]  # fmt: skip

TINY_PROBE = {
    "name": "plug-probe",
    "task": {"batch_size": 256, "act": "plug_tri_sign"},
    "probe": {"dims": [3], "inits": 1, "batches": 2, "layers": "all"},
    "estimators": [
        {"name": "cdg", "eps": 0.1},
        {"name": "plug_signed_ste", "surrogate": "plug_tri_sign"},
        {"name": "ste", "surrogate": "plug_tri_sign"},
    ],
    "measure": {"lr_grid": {"num": 20}, "curve_points": 5},
}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder holding the plugin package (what a user's PYTHONPATH or site-packages would)."""
    root = tmp_path_factory.mktemp("user-code")
    (root / PLUGIN).mkdir()
    (root / PLUGIN / "__init__.py").write_text(PLUGIN_CODE)
    (root / f"{PLUGIN}_extra.py").write_text(EXTRA_CODE)
    (root / "broken_plugin.py").write_text("raise RuntimeError('the plugin is broken')\n")
    return root


def _env(*paths: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (plugins.DISABLE_ENV, "LOWBIT_TEST_INTERRUPT_AT_STEP")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def lowbit(args, *paths: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The real ``lowbit`` command in a subprocess, with ``paths`` on its PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-m", "lowbit", *args], cwd=cwd, env=_env(*paths, **env), capture_output=True, text=True, timeout=300
    )


def _numbers(rows):
    """Records without what measures time (a column, or a probe's ``seconds`` metric)."""
    rows = [row for row in rows if "seconds" not in str(row.get("metric"))]
    return [{k: v for k, v in row.items() if "time" not in k and "seconds" not in k} for row in rows]


# ---------------------------------------------------------------- failures: one line, before any run directory


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--import", "no_such_module_xyz"], ["'no_such_module_xyz'", "--import", "ModuleNotFoundError"]),
        (["probe", "--import", "broken_plugin"], ["'broken_plugin'", "RuntimeError: the plugin is broken"]),
        (["analyze", "landscape", "plugins=[broken_plugin]"], ["'broken_plugin'", "plugins: of the config", "RuntimeError"]),
        (["sweep", "SPEC"], ["'no_such_module_xyz'", "plugins: of the config", "ModuleNotFoundError"]),
        (["train", "plugins=[../evil.py]"], ["'../evil.py'", "not a Python module name"]),
        (["models", "--import", "broken_plugin"], ["'broken_plugin'", "RuntimeError"]),
        (["export", "RUN", "--import", "no_such_module_xyz"], ["'no_such_module_xyz'", "ModuleNotFoundError"]),
    ],
)
def test_a_module_that_fails_to_import_is_one_line_before_any_run_directory(args, words, plugin_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"command": "probe", "plugins": ["no_such_module_xyz"], "grid": {"seed": [0, 1]}}))
    args = [str(spec) if a == "SPEC" else str(tmp_path) if a == "RUN" else a for a in args]
    runs_flag = ["--runs-dir", str(tmp_path / "runs")] if args[0] in ("train", "probe", "analyze", "sweep") else []
    assert main([*args, *runs_flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lowbit {args[0]}") and ": error: " in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "runs").exists()
    assert "broken_plugin" not in sys.modules


# the arguments each command needs to get past argparse (a run directory, a sweep spec); the rest take none
NEEDED_ARGS = {"analyze": ["landscape"], "sweep": ["SPEC"], "report": ["RUN"], "table": ["RUN"], "export": ["RUN"]}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_import_before_the_command_is_imported_first_for_every_command(command, tmp_path, monkeypatch, capsys):
    """``lowbit --import M COMMAND``: the same import, before anything of the command, as ``lowbit COMMAND --import M``."""
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "spec.yaml") if a == "SPEC" else str(tmp_path) if a == "RUN" else a for a in NEEDED_ARGS.get(command, [])]
    runs_flag = ["--runs-dir", str(tmp_path / "runs")] if command in ("train", "probe", "analyze", "sweep") else []
    assert main(["--import", "no_such_module_xyz", command, *args, *runs_flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(("lowbit analyze landscape" if command == "analyze" else f"lowbit {command}") + ": error: "), err
    assert "cannot import plugin module 'no_such_module_xyz' (--import): ModuleNotFoundError" in err, err
    assert not (tmp_path / "runs").exists()


def test_imports_before_and_after_the_command_are_merged_in_order(plugin_dir, tmp_path):
    """Both positions in one run: imported before the config is checked (its act is the plugin's), recorded
    in config.yaml's plugins and named in the reproduce line in the order given, as the subcommand form does."""
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(TINY_PROBE))  # needs plug_tri_sign to validate
    extra = f"{PLUGIN}_extra"
    done = lowbit(["--import", PLUGIN, "probe", "probe.yaml", "--import", extra, "--import", PLUGIN, "--runs-dir", "runs",
                   "--quiet"], plugin_dir, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["plugins"] == [PLUGIN, extra]
    report = (run_dir / "report.md").read_text()
    assert f"Reproduce: `lowbit probe --import {PLUGIN} --import {extra} runs/{run_dir.name}/config.yaml`" in report
    labels = {r["estimator"] for r in read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer"))}
    assert "plug_signed_ste(surrogate=plug_tri_sign)" in labels, labels


def test_a_model_of_user_code_is_unknown_without_the_import(plugin_dir, tmp_path, monkeypatch, capsys):
    """The control for the tests below: the plugin's names mean nothing until it is imported."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    assert main(["train", *TINY_TRAIN, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "unknown model 'plug_mlp'" in capsys.readouterr().err
    assert PLUGIN not in sys.modules


# ---------------------------------------------------------------- train: --import, resume, the reproduce line


def test_train_with_import_resumes_without_it_and_the_report_names_it(plugin_dir, tmp_path):
    first = lowbit(["train", "--import", PLUGIN, *TINY_TRAIN, "--runs-dir", "runs", "--quiet"], plugin_dir,
                   cwd=tmp_path, LOWBIT_TEST_INTERRUPT_AT_STEP="5")  # fmt: skip
    assert first.returncode == 130, first.stderr  # interrupted in epoch 2 (4 steps per epoch)
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["plugins"] == [PLUGIN] and config["model"]["name"] == "plug_mlp"

    resumed = lowbit(["train", "--resume", str(run_dir), "--quiet"], plugin_dir, cwd=tmp_path)  # no --import
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_records(run_dir / "metrics.csv")) == 2

    report = (run_dir / "report.md").read_text()
    line = next(l for l in report.splitlines() if "reproduce:" in l)
    command = line.split("reproduce: `")[1].split("`")[0]
    assert command == f"lowbit train --import {PLUGIN} {run_dir / 'config.yaml'}"


@pytest.mark.slow
def test_the_reproduce_line_of_a_plugin_run_makes_the_same_run(plugin_dir, tmp_path):
    first = lowbit(["train", "--import", PLUGIN, *TINY_TRAIN, "--runs-dir", "runs", "--quiet"], plugin_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    line = next(l for l in (run_dir / "report.md").read_text().splitlines() if "reproduce:" in l)
    command = shlex.split(line.split("reproduce: `")[1].split("`")[0])
    again = lowbit([*command[1:], "--runs-dir", "again", "--quiet"], plugin_dir, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (again_dir,) = (tmp_path / "again").iterdir()
    # same config and seed: the same numbers
    assert _numbers(read_records(again_dir / "metrics.csv")) == _numbers(read_records(run_dir / "metrics.csv"))


# ---------------------------------------------------------------- probe and sweep: plugins: in the config


def test_sweep_workers_import_the_plugins_before_building_their_cells(plugin_dir, tmp_path):
    """``plugins:`` in the base config plus ``--import`` on the sweep: each worker process imports both."""
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump({**TINY_PROBE, "plugins": [PLUGIN]}))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "plug", "command": "probe", "base": "probe.yaml", "grid": {"seed": [0, 1]},
                                    "workers": 1, "threads": 1}))  # fmt: skip
    extra = f"{PLUGIN}_extra"
    swept = lowbit(["sweep", str(spec), "--import", extra, "--runs-dir", "sweeps", "--quiet"], plugin_dir, cwd=tmp_path)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    with open(sweep_dir / "cells.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [c["status"] for c in cells] == ["done", "done"], cells
    assert all(c["reproduce"].startswith(f"lowbit probe --import {PLUGIN} --import {extra} probe.yaml") for c in cells)
    cell_dir = sweep_dir / cells[1]["run_dir"]
    assert yaml.safe_load((cell_dir / "config.yaml").read_text())["plugins"] == [PLUGIN, extra]
    labels = {r["estimator"] for r in read_records(cell_dir / "records.csv", text_columns=("unit", "estimator", "layer"))}
    assert {"plug_signed_ste(surrogate=plug_tri_sign)", "ste(surrogate=plug_tri_sign)"} <= labels, labels
    assert f"Reproduce: `lowbit probe --import {PLUGIN} --import {extra} {cell_dir / 'config.yaml'}`" in (cell_dir / "report.md").read_text()



@pytest.mark.slow
def test_a_probe_with_plugins_in_its_config_resumes_without_an_import(plugin_dir, tmp_path):
    config = tmp_path / "probe.yaml"
    config.write_text(yaml.safe_dump({**TINY_PROBE, "plugins": [PLUGIN]}))
    first = lowbit(["probe", str(config), "--runs-dir", "runs", "--quiet"], plugin_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = (run_dir / "records.csv").read_bytes()
    resumed = lowbit(["probe", "--resume", str(run_dir), "--quiet"], plugin_dir, cwd=tmp_path)  # config.yaml imports it
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "records.csv").read_bytes() == records  # complete: nothing recomputed


@pytest.mark.slow
def test_ray_workers_import_the_plugins_before_building_the_cell(plugin_dir, tmp_path):
    pytest.importorskip("ray")
    config = tmp_path / "probe.yaml"
    config.write_text(yaml.safe_dump(TINY_PROBE))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "plug-ray", "command": "probe", "base": "probe.yaml", "plugins": [PLUGIN],
                                    "grid": {"seed": [0, 1]}, "executor": "ray", "workers": 2, "threads": 1}))  # fmt: skip
    swept = lowbit(["sweep", str(spec), "--runs-dir", "sweeps", "--quiet"], plugin_dir, cwd=tmp_path)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    with open(sweep_dir / "cells.csv", newline="") as handle:
        assert [c["status"] for c in csv.DictReader(handle)] == ["done", "done"]


@pytest.mark.slow
def test_analyze_trains_and_pictures_a_plugin_model_and_records_the_plugin(plugin_dir, tmp_path):
    recipe = "[" + ", ".join(TINY_TRAIN + ["run.epochs=1"]) + "]"
    done = lowbit(["analyze", "weights", "--import", PLUGIN, f"train={{plug: {recipe}}}", "layers=[fc1]",
                   "--runs-dir", "runs", "--quiet"], plugin_dir, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run_dir / "train-plug" / "config.yaml").read_text())["plugins"] == [PLUGIN]
    assert f"Reproduce: `lowbit analyze weights --import {PLUGIN} runs/{run_dir.name}/config.yaml`" in (run_dir / "report.md").read_text()


# ---------------------------------------------------------------- entry points of an installed distribution


def _install_dist(site: Path, entry_points: str, name: str = "lowbit-test-plugin") -> None:
    """A real ``*.dist-info`` folder: what pip leaves in site-packages; importlib.metadata reads it."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def _install_plugin_dist(site: Path) -> Path:
    """The test plugin as an installed distribution with two entry points: a module and a ``module:function``."""
    _install_dist(site, f"""
        [lowbit.plugins]
        models = {PLUGIN}
        wide = {PLUGIN}_extra:register
    """)
    return site


def test_entry_points_register_in_the_cli_and_on_first_lookup(plugin_dir, tmp_path):
    site = _install_plugin_dist(tmp_path / "site")
    listed = lowbit(["models", "plug_mlp", "hidden=16"], plugin_dir, site, cwd=tmp_path)  # no --import
    assert listed.returncode == 0, listed.stderr
    assert "SignMLP summary" in listed.stdout and "(16,)" in listed.stdout  # hidden=16 reached the factory

    script = textwrap.dedent("""
        import os
        from lowbit.models import create_model
        try:
            create_model("plug_mlp")
        except KeyError as error:
            print("disabled:", error)
        del os.environ["LOWBIT_DISABLE_PLUGIN_AUTOLOAD"]
        print("wide:", type(create_model("plug_mlp_wide")).__name__)  # a miss loads the entry points once
        from lowbit.estimators import list_estimators
        from lowbit.quant import list_sign_quantizers
        print("names:", "plug_signed_ste" in list_estimators(), "plug_tri_sign" in list_sign_quantizers())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(plugin_dir, site, LOWBIT_DISABLE_PLUGIN_AUTOLOAD="1"),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "disabled: unknown model 'plug_mlp'" in out.stdout
    assert "wide: SignMLP" in out.stdout and "names: True True" in out.stdout


def test_a_run_records_its_entry_point_plugins_in_meta_and_the_report_names_them(plugin_dir, tmp_path):
    """No --import, no plugins: the probe's act and estimator come from entry points, which meta.yaml and the report name."""
    site = _install_plugin_dist(tmp_path / "site")
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(TINY_PROBE))
    done = lowbit(["probe", "probe.yaml", "--runs-dir", "runs", "--quiet"], plugin_dir, site, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["plugins"] == []
    points = yaml.safe_load((run_dir / "meta.yaml").read_text())["entry_point_plugins"]
    assert sorted(points, key=lambda p: p["name"]) == [
        {"name": "models", "module": PLUGIN, "distribution": "lowbit-test-plugin", "version": "0.1"},
        {"name": "wide", "module": f"{PLUGIN}_extra:register", "distribution": "lowbit-test-plugin", "version": "0.1"},
    ]
    report = (run_dir / "report.md").read_text()
    assert f"`models = {PLUGIN}` (lowbit-test-plugin 0.1)" in report, report
    assert f"`wide = {PLUGIN}_extra:register` (lowbit-test-plugin 0.1)" in report
    assert f"Reproduce: `lowbit probe runs/{run_dir.name}/config.yaml`" in report  # they load by themselves

    # a process that has looked no name up (a sweep worker whose cell names none of the plugin's) records the same
    script = "from lowbit.runs import environment_info; print(sorted(p['name'] for p in environment_info()['entry_point_plugins']))"
    fresh = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(plugin_dir, site), capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() == "['models', 'wide']"


def test_a_broken_entry_point_is_one_line_naming_it(plugin_dir, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    _install_dist(site, "[lowbit.plugins]\nbroken = broken_plugin\n", name="broken-dist")
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "entry point broken = broken_plugin of broken-dist 0.1" in err and "RuntimeError: the plugin is broken" in err
    assert plugins.DISABLE_ENV in err  # how to run anyway


# ---------------------------------------------------------------- runs made before `plugins` existed


def test_a_run_saved_without_plugins_resumes_and_a_changed_plugins_list_is_refused(tmp_path):
    from lowbit.config import from_dict, to_dict
    from lowbit.probe import ProbeConfig
    from lowbit.runs import check_resume_config
    from lowbit.sweep.commands import ProbeAdapter

    config = from_dict(ProbeConfig, TINY_PROBE | {"task": {"batch_size": 256}, "estimators": [{"name": "cdg"}]})
    older = {k: v for k, v in to_dict(config).items() if k != "plugins"}  # a config.yaml from before the key
    check_resume_config(tmp_path, config, older, "probe")  # no "plugins (unset -> [])"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))
    assert ProbeAdapter().same_config(tmp_path, config)  # a sweep cell of such a run resumes, not restarts

    with pytest.raises(ValueError, match=r"plugins \(\['my_plugin'\] -> \[\]\)"):
        check_resume_config(tmp_path, config, older | {"plugins": ["my_plugin"]}, "probe")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older | {"plugins": ["my_plugin"]}))
    assert not ProbeAdapter().same_config(tmp_path, config)
