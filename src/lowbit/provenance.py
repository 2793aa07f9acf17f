"""Where a result's code came from: lowbit's own version and commit, and the user's repository.

Two commits go into every ``meta.yaml``, kept apart because they answer
different questions:

- ``lowbit_commit``: the commit of the lowbit that ran. For a source checkout
  (``pip install -e .``) it is the checkout's ``HEAD`` (``-dirty`` with
  uncommitted changes), asked of git only when lowbit's own files are tracked
  in that repository, so a virtual environment that sits inside another
  project's repository is not mistaken for lowbit's. For an install from a
  git URL (``pip install git+https://...@REV``) it is the commit pip recorded
  (PEP 610 ``direct_url.json``). A wheel from an index has none: its
  ``lowbit`` version says which release it is.
- ``workdir_repo`` / ``workdir_commit``: the git repository of the working
  directory, if any: the user's own code and configs (plugins, edited recipes).

Beside them, ``entry_point_plugins``: the ``lowbit.plugins`` entry points of
installed distributions that were loaded (name, module, distribution,
version; :func:`lowbit.plugins.entry_point_plugins`). Unlike ``--import`` and
``plugins:`` they are in no config, since they load wherever their
distribution is installed; the report's code line names them so that a reader
knows which to install.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from lowbit.plugins import entry_point_plugins

GIT_TIMEOUT_S = 5
PACKAGE_DIR = Path(__file__).resolve().parent


def code_provenance(workdir: Optional[Path] = None) -> Dict[str, Any]:
    """``{lowbit_commit, workdir_repo, workdir_commit, entry_point_plugins}`` for meta.yaml (None where there is none)."""
    workdir = Path.cwd() if workdir is None else Path(workdir)
    repo = _git(workdir, "rev-parse", "--show-toplevel")
    return {
        "lowbit_commit": lowbit_commit(),
        "workdir_repo": repo,
        "workdir_commit": _head_commit(workdir) if repo else None,
        "entry_point_plugins": entry_point_plugins(),
    }


def lowbit_commit() -> Optional[str]:
    """The commit of the installed lowbit (see the module docstring), or None if it cannot be known."""
    if _git(PACKAGE_DIR, "ls-files", "--error-unmatch", "__init__.py") is not None:
        return _head_commit(PACKAGE_DIR)
    return _installed_vcs_commit()


def meta_lowbit_commit(meta: Dict[str, Any]) -> Optional[str]:
    """lowbit's commit as a run's meta.yaml records it (older runs call it ``git_commit``)."""
    return meta.get("lowbit_commit", meta.get("git_commit"))


def _head_commit(folder: Path) -> Optional[str]:
    head = _git(folder, "rev-parse", "--short", "HEAD")
    if head is None:
        return None
    changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if changes else "")


def _installed_vcs_commit() -> Optional[str]:
    from importlib import metadata

    try:
        text = metadata.distribution("lowbit").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        commit = json.loads(text or "{}").get("vcs_info", {}).get("commit_id")
    except (ValueError, AttributeError):
        return None
    return commit[:7] if isinstance(commit, str) and commit else None


def _git(folder: Path, *args: str) -> Optional[str]:
    """git's output in ``folder`` (stripped), or None when git is missing, fails or ``folder`` is no repository."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def describe_code(meta: Dict[str, Any]) -> str:
    """The code line of a report: ``lowbit 0.1.0 (commit 0a0b5c6), working directory /x/proj at 1a2b3c4``.

    Loaded entry-point plugins follow: ``, entry-point plugins `my_models = my_pkg.models` (my-pkg 1.2)``.
    """
    commit = meta_lowbit_commit(meta)
    text = f"lowbit {meta.get('lowbit', '?')}" + (f" (commit {commit})" if commit else "")
    repo = meta.get("workdir_repo")
    if repo and meta.get("workdir_commit") and meta.get("workdir_commit") != commit:
        text += f", working directory {repo} at {meta.get('workdir_commit')}"
    points = [_describe_entry_point(p) for p in meta.get("entry_point_plugins") or () if isinstance(p, dict)]
    if points:
        text += ", entry-point plugins " + ", ".join(points)
    return text


def _describe_entry_point(point: Dict[str, Any]) -> str:
    """```name = module` (distribution version)``, from a meta.yaml entry."""
    dist = " ".join(str(point[k]) for k in ("distribution", "version") if point.get(k))
    return f"`{point.get('name', '?')} = {point.get('module', '?')}`" + (f" ({dist})" if dist else "")
