"""Report building blocks: Markdown tables and number formats shared by every command's report writer.

Each command writes its own report (``lowbit.probe.report``, ``lowbit.train.summary``,
``lowbit.analysis.report``, ``lowbit.sweep.report``); ``lowbit report RUN_DIR``
(:mod:`lowbit.report_command`) dispatches to them.
"""

from lowbit.report.tables import markdown_table, mean_se

__all__ = ["markdown_table", "mean_se"]
