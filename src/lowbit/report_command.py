"""``lowbit report RUN_DIR``: rebuild a run's report.md and plots from its records.

A command module above every command: it picks the writer of the run's kind
(probe, train, analysis, or a sweep directory).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory of `lowbit probe`, `train` or `analyze`, or a sweep directory of `lowbit sweep`")


def run(args: argparse.Namespace) -> int:
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


def write_report(run_dir):
    """Rebuild the report of any run directory: probe, training or analysis run."""
    from lowbit.analysis import is_analysis_run, write_analysis_report
    from lowbit.probe.report import write_probe_report

    run_dir = Path(run_dir)

    if is_analysis_run(run_dir):
        writer = write_analysis_report
    elif (run_dir / "records.csv").exists():
        writer = write_probe_report
    elif (run_dir / "metrics.csv").exists():
        from lowbit.train import write_train_report as writer
    else:
        writer = None
    if writer is not None:
        try:
            return writer(run_dir)
        except (TypeError, KeyError, IndexError, ZeroDivisionError, ValueError) as error:
            if isinstance(error, ValueError) and str(run_dir) in str(error):
                raise  # already names the run and the file
            detail = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ValueError(
                f"cannot build the report of {str(run_dir)!r} from its files ({type(error).__name__}: {detail}); "
                "its records or YAML files are corrupt or were edited: restore them or run it again"
            ) from error
    raise FileNotFoundError(
        f"{str(run_dir)!r} is not a lowbit run directory: it has neither records.csv (probe), "
        "metrics.csv (train) nor analysis records"
    )


__all__ = ["add_arguments", "run", "write_report"]
