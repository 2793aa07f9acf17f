"""``lowbit report RUN_DIR``: rebuild a run's report.md and plots from its records."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory of `lowbit probe`, `train` or `analyze`, or a sweep directory of `lowbit sweep`")


def run(args: argparse.Namespace) -> int:
    from lowbit.report import write_report
    from lowbit.sweep import is_sweep_dir, write_sweep_report

    # the command layer dispatches: a sweep report sits above the run reports it draws on
    path = write_sweep_report(args.run_dir) if is_sweep_dir(args.run_dir) else write_report(args.run_dir)
    print(f"wrote {path}")
    return 0
