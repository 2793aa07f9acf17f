"""Reports: Markdown tables and plots drawn from a run directory's records."""

from lowbit.report.probe_report import write_probe_report
from lowbit.report.tables import markdown_table, mean_se

__all__ = ["write_probe_report", "markdown_table", "mean_se", "write_report"]


def write_report(run_dir):
    """Rebuild the report of any run directory: probe, training or analysis run."""
    from pathlib import Path

    run_dir = Path(run_dir)
    from lowbit.analysis import is_analysis_run, write_analysis_report

    if is_analysis_run(run_dir):
        return write_analysis_report(run_dir)
    if (run_dir / "records.csv").exists():
        return write_probe_report(run_dir)
    if (run_dir / "metrics.csv").exists():
        from lowbit.train import write_train_report

        return write_train_report(run_dir)
    raise FileNotFoundError(
        f"{str(run_dir)!r} is not a lowbit run directory: it has neither records.csv (probe), "
        "metrics.csv (train) nor analysis records"
    )
