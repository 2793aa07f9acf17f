"""``lowbit report RUN_DIR``: rebuild a run's report.md and plots from its records."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory of `lowbit probe`, `train` or `analyze`, or a sweep directory of `lowbit sweep`")


def run(args: argparse.Namespace) -> int:
    from lowbit.report import write_report
    from lowbit.runs import lock_run_dir
    from lowbit.sweep import is_sweep_dir, write_sweep_report

    # the command layer dispatches: a sweep report sits above the run reports it draws on
    if is_sweep_dir(args.run_dir):
        path = write_sweep_report(args.run_dir)  # holds the sweep's lock
    else:
        if not (Path(args.run_dir) / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{args.run_dir!r} is not a lowbit run directory (no config.yaml); give one, e.g. runs/NAME-TIME"
            )
        with lock_run_dir(args.run_dir):  # refuses while the run's own process still writes it
            path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0
