"""lowbit.allocator: glibc keeps freed memory, so repeated large tensors stop faulting pages in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lowbit.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")

FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from lowbit import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    counts = []
    for _ in range(60):  # 64 MiB written and freed, like an activation each step
        before = faults()
        torch.empty(16 << 20).fill_(1.0)
        counts.append(faults() - before)
    print(*counts)
    """
)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def test_kept_memory_is_reused_without_page_faults():
    default = _run("-c", FAULTS, "default")
    kept = _run("-c", FAULTS, "keep")
    assert default.returncode == 0 and kept.returncode == 0, default.stderr + kept.stderr
    pages = (64 << 20) // 4096  # per block
    default_counts, kept_counts = ([int(c) for c in done.stdout.split()] for done in (default, kept))
    assert min(default_counts[-10:]) > pages // 2  # glibc maps fresh pages for every block and unmaps them
    # kept: once the heap has grown to hold the block (a few blocks, depending on what else was allocated),
    # the same memory serves every later one
    assert sum(kept_counts[-10:]) < pages // 20, kept_counts


TRAIN = (
    "import sys; from lowbit.cli import main; from lowbit.allocator import current_policy; "
    "code = main(['train', 'digits', 'run.epochs=1', 'data.train_subset=64', 'data.test_subset=32', "
    "'run.tensorboard=false', '--quiet', '--runs-dir', sys.argv[1]]); print(code, current_policy())"
)


def test_the_command_applies_the_policy_unless_told_not_to_and_meta_yaml_records_it(tmp_path):
    import yaml

    for env, printed, recorded in (({}, "keep", "keep"), ({"LOWBIT_MALLOC": "default"}, "None", "default")):
        done = _run("-c", TRAIN, str(tmp_path / recorded), **env)
        assert done.stdout.split()[-2:] == ["0", printed], done.stderr
        (run_dir,) = (tmp_path / recorded).iterdir()
        assert yaml.safe_load((run_dir / "meta.yaml").read_text())["malloc"] == recorded  # CPU times depend on it
    bad = _run("-m", "lowbit", "models", LOWBIT_MALLOC="sometimes")
    assert bad.returncode == 2 and "LOWBIT_MALLOC must be one of keep, default, got 'sometimes'" in bad.stderr
