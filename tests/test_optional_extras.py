"""Commands start without the optional extras they do not need; the ones that need an extra name it.

scikit-learn (with scipy) is the ``digits`` extra. Its absence is real here: each check runs the
``lowbit`` command in a fresh interpreter in which ``import sklearn`` and ``import scipy`` fail
(``sys.modules[name] = None`` is how Python marks a module as unimportable).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = ("sklearn", "scipy")
LAUNCH = (
    "import sys\n"
    "for name in {blocked!r}: sys.modules[name] = None\n"
    "from lowbit.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {blocked!r} and sys.modules[m] is not None)\n"
    "assert not leaked, leaked\n"
    "sys.exit(code)\n"
)


def lowbit_without_digits_extra(args, cwd: Path) -> subprocess.CompletedProcess:
    code = LAUNCH.format(blocked=BLOCKED)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "probe.dims=[2]", "probe.inits=1", "probe.batches=1", "task.batch_size=64", "task.pretrain_steps=2",
         "measure.lr_grid.num=5", "--quiet"],
        ["models"],
        ["configs", "train"],
        ["train", "--help"],
    ],
    ids=["probe", "models", "configs", "train-help"],
)
def test_commands_that_need_no_digits_run_without_scikit_learn(args, tmp_path):
    out = lowbit_without_digits_extra(args, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_digits_without_scikit_learn_names_the_extra_before_any_run_directory(tmp_path):
    out = lowbit_without_digits_extra(["train", "digits", "run.epochs=1", "--quiet"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    message = out.stderr.strip().splitlines()[-1]
    assert "scikit-learn" in message and '".[digits]"' in message
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
