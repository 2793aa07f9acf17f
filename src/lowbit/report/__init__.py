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
