"""The wheel and the sdist as a pip user gets them: built, installed into fresh virtual environments,
and run by config name from a directory that is not this repository.

The environments see the already installed dependencies (``--system-site-packages``: torch is
gigabytes) but get lowbit itself only from the built archive (``--no-deps --no-index``), and every
check first asserts that ``import lowbit`` resolves inside the new environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BUILTIN = sorted(p.name for p in (REPO / "src" / "lowbit" / "configs").glob("*.yaml"))


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _run(cmd, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of this checkout, built the way `python -m build` does (the wheel from the sdist)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=out)
    return out


def _venv(root: Path, archive: Path) -> Path:
    """A fresh virtual environment with lowbit installed from ``archive`` alone; returns its bin folder."""
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root], cwd=root.parent)
    bin_dir = root / ("Scripts" if os.name == "nt" else "bin")
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", archive], cwd=root.parent)
    where = _run([bin_dir / "python", "-c", "import lowbit; print(lowbit.__file__)"], cwd=root.parent).stdout.strip()
    assert Path(where).resolve().is_relative_to(root.resolve()), f"lowbit imported from {where}, not from the new environment"
    return bin_dir


def test_sdist_and_wheel_hold_every_builtin_config(dist):
    (sdist,) = dist.glob("lowbit-*.tar.gz")
    (wheel,) = dist.glob("lowbit-*.whl")
    with tarfile.open(sdist) as archive:
        in_sdist = sorted(Path(n).name for n in archive.getnames() if "/src/lowbit/configs/" in n and n.endswith(".yaml"))
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = sorted(Path(n).name for n in archive.namelist() if n.startswith("lowbit/configs/") and n.endswith(".yaml"))
        assert "lowbit/deploy/csrc/xnor.cpp" in archive.namelist()  # the C++ sources compiled at first use
        assert "lowbit/quant/csrc/sign.cpp" in archive.namelist()
    assert len(BUILTIN) > 50
    assert in_sdist == BUILTIN
    assert in_wheel == BUILTIN


def test_wheel_runs_configs_by_name_in_a_users_project(dist, tmp_path):
    """A user's git repository with the venv inside it (the case that recorded the user's commit as lowbit's)."""
    project = tmp_path / "my-project"
    project.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    _run(["git", "init", "-q"], cwd=project)
    (project / "notes.txt").write_text("my experiments\n")
    (project / ".gitignore").write_text(".venv/\nruns/\n")
    _run(git + ["add", "."], cwd=project)
    _run(git + ["commit", "-q", "-m", "start"], cwd=project)
    user_commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=project).stdout.strip()
    (wheel,) = dist.glob("lowbit-*.whl")
    bin_dir = _venv(project / ".venv", wheel)

    listing = _run([bin_dir / "lowbit", "configs"], cwd=project).stdout
    for name in ("train-digits-xnor", "probe-quick-check", "analyze-bn-digits", "sweep-toy-protocol"):
        assert name in listing
    path = Path(_run([bin_dir / "lowbit", "configs", "digits", "--path"], cwd=project).stdout.strip())
    assert path.name == "train-digits.yaml" and path.resolve().is_relative_to((project / ".venv").resolve())

    # the wheel's C++ source builds (or loads from the cache) and its fused sign kernels run
    check = "from lowbit.quant import fused_available; import lowbit.quant.fused as f; print(fused_available(), f.SOURCE)"
    available, source = _run([bin_dir / "python", "-c", check], cwd=project).stdout.split()
    assert available == "True" and Path(source).resolve().is_relative_to((project / ".venv").resolve())
    _run([bin_dir / "lowbit", "train", "digits", "run.epochs=1", "run.name=by-name", "--quiet"], cwd=project)
    (run_dir,) = (project / "runs").glob("by-name-*")
    assert (run_dir / "report.md").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "lenet5" and config["run"]["epochs"] == 1
    meta = yaml.safe_load((run_dir / "meta.yaml").read_text())
    assert meta["lowbit"] == _installed_version()
    assert meta["lowbit_commit"] is None  # a wheel records no commit; the user's repository is not lowbit's
    assert Path(meta["workdir_repo"]).resolve() == project.resolve()
    assert meta["workdir_commit"] == user_commit


def test_sdist_installs_with_its_configs(dist, tmp_path):
    (sdist,) = dist.glob("lowbit-*.tar.gz")
    bin_dir = _venv(tmp_path / "venv", sdist)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    text = _run([bin_dir / "lowbit", "configs", "quick-check"], cwd=elsewhere).stdout
    assert text == (REPO / "src" / "lowbit" / "configs" / "probe-quick-check.yaml").read_text()
    listing = _run([bin_dir / "lowbit", "configs", "probe"], cwd=elsewhere).stdout.splitlines()
    assert sum(line.startswith("  probe-") for line in listing) == sum(n.startswith("probe-") for n in BUILTIN)


def _installed_version() -> str:
    import lowbit

    return lowbit.__version__
