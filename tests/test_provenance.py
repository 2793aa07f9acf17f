"""meta.yaml's commits: lowbit's own (from its install) and the working directory's, kept apart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lowbit import provenance
from lowbit.provenance import code_provenance, describe_code, meta_lowbit_commit

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _is_checkout() -> bool:
    return subprocess.run(["git", "ls-files", "--error-unmatch", "src/lowbit/__init__.py"], cwd=REPO, capture_output=True).returncode == 0


def test_lowbit_commit_is_this_checkouts_head_seen_from_anywhere(tmp_path):
    facts = code_provenance(tmp_path)  # tmp_path: no repository
    if _is_checkout():
        head = _git("rev-parse", "--short", "HEAD", cwd=REPO)
        assert facts["lowbit_commit"].split("-")[0] == head
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=REPO))
        assert facts["lowbit_commit"].endswith("-dirty") == dirty
    assert facts["workdir_repo"] is None and facts["workdir_commit"] is None


def test_the_working_directorys_repository_is_recorded_separately(tmp_path):
    _git("init", "-q", cwd=tmp_path)
    (tmp_path / "a.txt").write_text("1\n")
    subprocess.run(GIT + ["add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["commit", "-q", "-m", "one"], cwd=tmp_path, check=True)
    head = _git("rev-parse", "--short", "HEAD", cwd=tmp_path)
    facts = code_provenance(tmp_path / ".")
    assert Path(facts["workdir_repo"]).resolve() == tmp_path.resolve()
    assert facts["workdir_commit"] == head
    (tmp_path / "a.txt").write_text("2\n")
    assert code_provenance(tmp_path)["workdir_commit"] == head + "-dirty"
    (tmp_path / "a.txt").write_text("1\n")
    (tmp_path / "untracked.txt").write_text("x\n")  # untracked files do not make a commit dirty
    assert code_provenance(tmp_path)["workdir_commit"] == head


def test_a_package_inside_a_foreign_repository_is_not_given_its_commit(tmp_path, monkeypatch):
    """A venv inside the user's project: site-packages/lowbit lies in their work tree but is not tracked there."""
    _git("init", "-q", cwd=tmp_path)
    (tmp_path / "a.txt").write_text("1\n")
    subprocess.run(GIT + ["add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["commit", "-q", "-m", "one"], cwd=tmp_path, check=True)
    package = tmp_path / ".venv" / "site-packages" / "lowbit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    monkeypatch.setattr(provenance, "_installed_vcs_commit", lambda: None)
    assert provenance.lowbit_commit() is None


def test_a_vcs_install_reports_the_commit_pip_recorded(tmp_path, monkeypatch):
    """PEP 610: ``pip install git+URL@REV`` writes direct_url.json with the resolved commit."""
    from importlib import metadata

    dist_info = tmp_path / "lowbit-9.9.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lowbit\nVersion: 9.9\n")
    commit = "0123456789abcdef0123456789abcdef01234567"
    (dist_info / "direct_url.json").write_text(json.dumps({"url": "https://x/lowbit.git", "vcs_info": {"vcs": "git", "commit_id": commit}}))
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(dist_info))
    assert provenance._installed_vcs_commit() == commit[:7]
    (dist_info / "direct_url.json").write_text(json.dumps({"url": "file:///x", "dir_info": {}}))
    assert provenance._installed_vcs_commit() is None


def test_reports_name_both_commits_and_read_old_runs():
    assert meta_lowbit_commit({"git_commit": "abc1234"}) == "abc1234"  # meta.yaml of runs before the split
    meta = {"lowbit": "0.1.0", "lowbit_commit": "abc1234", "workdir_repo": "/home/u/proj", "workdir_commit": "def5678"}
    assert describe_code(meta) == "lowbit 0.1.0 (commit abc1234), working directory /home/u/proj at def5678"
    meta.update(workdir_commit="abc1234")  # working in lowbit's own checkout: said once
    assert describe_code(meta) == "lowbit 0.1.0 (commit abc1234)"
    assert describe_code({"lowbit": "0.1.0", "lowbit_commit": None}) == "lowbit 0.1.0"


def test_the_code_line_names_the_entry_point_plugins_a_run_loaded():
    meta = {"lowbit": "0.1.0", "lowbit_commit": "abc1234", "entry_point_plugins": [
        {"name": "models", "module": "my_pkg.models", "distribution": "my-pkg", "version": "1.2"},
        {"name": "more", "module": "my_pkg.extra:register", "distribution": None, "version": None},  # no dist metadata
    ]}  # fmt: skip
    assert describe_code(meta) == (
        "lowbit 0.1.0 (commit abc1234), entry-point plugins `models = my_pkg.models` (my-pkg 1.2), `more = my_pkg.extra:register`"
    )
    assert describe_code({**meta, "entry_point_plugins": []}) == "lowbit 0.1.0 (commit abc1234)"  # none loaded, or turned off
