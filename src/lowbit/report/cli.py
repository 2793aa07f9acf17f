"""``lowbit report RUN_DIR``: rebuild a run's report.md and plots from its records."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `lowbit probe` or `lowbit train`")


def run(args: argparse.Namespace) -> int:
    from lowbit.report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0
