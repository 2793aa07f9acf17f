"""The fuzz suite of issue #14: a few hundred generated bad configs and hostile files, one fixed seed
(half of each kind in the default run, the other half under `pytest -m slow`).

Every case (``tests/fuzz_cases.py``) runs as a real lowbit process forked from
this one (``tests/faults.py``), in its own sandbox folder as working directory,
with its address space capped. Each must either be rejected with an error
that names the key or the file at fault (exit 2; a diverged training run,
exit 1, is a clean stop too) before any run directory is made, or run
correctly (exit 0, a report written) —
never a traceback or an "internal error", never the payload of a hostile file
(a marker file), never a file outside the sandbox, never memory beyond a bound.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from faults import run_lowbit  # noqa: E402
from fuzz_cases import MARKER, TRAIN_BASE, all_cases  # noqa: E402

SEED = 14
MEMORY_BOUND_MB = 600  # peak resident memory a case may add to the forked process
ADDRESS_SPACE = 3 << 30  # bytes a case may map beyond what it inherits: runaway allocations fail here
TAKES_RUNS_DIR = {"train", "probe", "analyze", "sweep"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny trained run (its checkpoint feeds the landscape and init_from cases); it also warms this process."""
    from lowbit.cli import main

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    folder = tmp_path_factory.mktemp("fuzz-source")
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        assert main(["train", "--quiet", *TRAIN_BASE, "--runs-dir", str(folder)]) == 0
        main(["analyze", "landscape", "--quiet", f"source.checkpoint={next(folder.iterdir())}", "grid.resolution=3",
              "eval.num_images=16", "interpolation.points=3", "--runs-dir", str(folder / "warm")])
    (run,) = [p for p in folder.iterdir() if p.name != "warm"]
    return run / "checkpoints" / "last.pt"


def judge(case, result, sandbox: Path, baseline_mb: float) -> str:
    """'' if the outcome is acceptable, else what went wrong."""
    err = result.err
    if "Traceback" in err or "internal error" in err:
        return "traceback or internal error:\n" + err[-1500:]
    if (sandbox / MARKER).exists():
        return "the hostile file's payload ran"
    if result.peak_rss_mb - baseline_mb > MEMORY_BOUND_MB:
        return f"peak memory {result.peak_rss_mb - baseline_mb:.0f} MB above the process it forked from"
    if result.rc == 0:
        if not case.may_run:
            return "exit 0 for an input that must be refused"
        command = case.argv[0]
        if command in ("train", "probe", "analyze") and not list((sandbox / "runs").rglob("report.md")):
            return "exit 0 but no report"
        return ""
    if result.rc == 1 and "training diverged" in err:
        return ""
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if ": error: " in line and line.startswith("lowbit")]
    if result.rc != 2 or len(starts) != 1:
        return f"exit {result.rc} without one error line:\n" + err[-1500:]
    message = "\n".join(lines[starts[0]:])
    if any(not line.startswith("  - ") for line in lines[starts[0] + 1:]):
        return "an error of more than one line (other than a list of problems):\n" + message[-1500:]
    if not any(name.lower() in message.lower() for name in case.names):
        return f"the error names none of {case.names}:\n{message[-800:]}"
    return ""


def run_case(case, sandbox: Path, baseline_mb: float):
    """Run one case in ``sandbox`` (made here, its files written first); ``(result, problem or '')``."""
    sandbox.mkdir()
    for name, content in case.files.items():
        (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
        (sandbox / name).write_bytes(content)
    argv = [a.replace("{sandbox}", str(sandbox)) for a in case.argv]
    if argv[0] in TAKES_RUNS_DIR:
        argv += ["--runs-dir", str(sandbox / "runs")]
    result = run_lowbit(argv, cwd=sandbox, memory_limit=ADDRESS_SPACE, timeout=60)
    problem = judge(case, result, sandbox, baseline_mb)
    written = {p for p in sandbox.rglob("*") if p.is_file()} - {sandbox / n for n in case.files}
    allowed = sandbox / ("run" if argv[0] == "report" else "runs")  # a report writes into the run it reports
    strays = [p for p in written if allowed not in p.parents and ".lock" != p.name]
    if strays and not problem:
        problem = f"files written outside the runs directory: {[str(p.relative_to(sandbox)) for p in strays][:5]}"
    runs = sandbox / "runs"
    if result.rc == 2 and runs.is_dir() and any(runs.iterdir()) and not problem:
        problem = "refused only after its run directory was made (every check must come first)"
    return result, problem


def _snapshot(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


def half_of_each_kind(cases: list, half: int) -> list:
    """Every other case of each kind, from the first (``half`` 0) or the second (1): two halves that cover every kind."""
    seen: dict = {}
    chosen = []
    for case in cases:
        position = seen[case.kind] = seen.get(case.kind, -1) + 1
        if position % 2 == half:
            chosen.append(case)
    return chosen


# the default run takes one half (~40 s of the suite's 10 minutes), `pytest -m slow` the other
@pytest.mark.parametrize("half", [0, pytest.param(1, marks=pytest.mark.slow)], ids=["first-half", "second-half"])
def test_fuzz_every_case_is_refused_cleanly_or_runs(tmp_path, checkpoint, half):
    every = all_cases(SEED, str(checkpoint))
    assert len(every) >= 300
    cases = half_of_each_kind(every, half)
    assert {c.kind for c in cases} == {c.kind for c in every}
    outside = [tmp_path.parent, tmp_path.parent.parent, Path("/tmp")]
    before = {folder: _snapshot(folder) for folder in outside}
    passwd = os.stat("/etc/passwd").st_mtime_ns
    baseline = run_lowbit(["report", str(tmp_path / "no-such-run")]).peak_rss_mb  # a child that reads nothing
    failures = []
    start = time.perf_counter()
    for i, case in enumerate(cases):
        _, problem = run_case(case, tmp_path / f"case{i:03d}", baseline)
        if problem:
            failures.append(f"[{case.kind}] {case.label}: {problem}")
    seconds = time.perf_counter() - start
    for folder, names in before.items():
        new = _snapshot(folder) - names
        escaped = [n for n in new if n.startswith(("escaped", MARKER))]
        assert not escaped, f"written outside every sandbox: {folder}/{escaped}"
    assert os.stat("/etc/passwd").st_mtime_ns == passwd
    assert not failures, f"{len(failures)} of {len(cases)} cases failed ({seconds:.0f} s):\n" + "\n".join(failures[:40])
