"""The summary of a training run: the notes' table, curves and ``report.md``.

The table follows the XNOR-ResNet-18 notes (2021-04-30, "数据采集方法：后 10
epoch 算术平均"): training loss, training accuracy and validation accuracy
are each the arithmetic mean over the last ``n`` epochs (``run.summary_last_n``,
default 10; all epochs if the run has fewer)::

    mean_last_n(x) = (1 / n) * sum_{e = E - n + 1}^{E} x_e

next to the best validation accuracy (and its epoch), the wall time (sum of
the epochs' seconds: training plus evaluation, without start-up) and the
parameter size in MB (float32 bytes / 2**20, as the CIFAR-10 notes' "参数体积").
"Validation" is the test split, as in the notes.

Everything is rebuilt from ``metrics.csv``, ``config.yaml``, ``model.yaml``
and ``meta.yaml`` alone, so ``lowbit report RUN_DIR`` can redo it any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

from lowbit.runs import atomic_write_text, read_records

PathLike = Union[str, Path]

# the notes' table: (column title, summary key, format)
TABLE_COLUMNS = (
    ("Training Loss", "train_loss", "loss"),
    ("Training Accuracy", "train_acc", "acc"),
    ("Validation Accuracy", "test_acc", "acc"),
    ("Best Validation Accuracy (epoch)", "best", "best"),
    ("Wall Time (s)", "wall_seconds", "seconds"),
    ("Params (MB)", "param_mb", "mb"),
)


def summarize(records: Sequence[Mapping[str, Any]], last_n: int = 10) -> Dict[str, Any]:
    """Means over the last ``last_n`` epochs (all if fewer), best test accuracy, wall time.

    ``records``: metrics.csv rows with ``epoch, train_loss, train_acc, test_loss, test_acc, seconds``.
    """
    if not records:
        raise ValueError("no epochs recorded yet: nothing to summarize")
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    n = min(last_n, len(records))
    tail = records[-n:]

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in tail) / n

    best = max(records, key=lambda r: (float(r["test_acc"]), -int(r["epoch"])))  # earliest epoch on ties
    return {
        "epochs": int(records[-1]["epoch"]),
        "last_n": n,
        "train_loss": mean("train_loss"),
        "train_acc": mean("train_acc"),
        "test_loss": mean("test_loss"),
        "test_acc": mean("test_acc"),
        "best_test_acc": float(best["test_acc"]),
        "best_epoch": int(best["epoch"]),
        "final_test_acc": float(records[-1]["test_acc"]),
        "wall_seconds": sum(float(r.get("seconds") or 0.0) for r in records),
    }


def param_size_mb(param_bytes: float) -> float:
    """Bytes -> MB as in the notes (2**20 bytes; ResNet-18: 11.17M float32 parameters = 42.6 MB)."""
    return param_bytes / 2**20


def _fmt(value: Any, kind: str, row: Mapping[str, Any]) -> str:
    if kind == "best":
        return f"{row['best_test_acc']:.4f} ({row['best_epoch']})"
    if value is None:
        return "n/a"
    if kind == "loss":
        return f"{value:.4g}"  # 4 significant digits, as the notes' 0.04267
    if kind == "acc":
        return f"{value:.4f}"
    if kind == "seconds":
        return f"{value:.1f}"
    if kind == "mb":
        return f"{value:.3g}"
    return str(value)


def summary_table(rows: Sequence[Mapping[str, Any]], label_columns: Sequence[str] = ()) -> str:
    """A Markdown table, one row per summary (``summarize`` output plus ``param_mb`` and the label keys)."""
    titles = list(label_columns) + [t for t, _, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(":---:" for _ in titles) + "|"]
    for row in rows:
        cells = [str(row.get(c, "")) for c in label_columns]
        cells += [_fmt(row.get(key), kind, row) for _, key, kind in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def run_summary(run_dir: PathLike, last_n: Optional[int] = None) -> Dict[str, Any]:
    """``summarize`` of a run directory, with its parameter size and config."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / "config.yaml")
    model = _read_yaml(run_dir / "model.yaml")
    n = last_n or _get(config, "run.summary_last_n") or 10
    row = summarize(read_records(run_dir / "metrics.csv"), n)
    row["param_mb"] = param_size_mb(model["param_bytes"]) if "param_bytes" in model else None
    row["config"] = config
    return row


def sweep_table(run_dirs: Iterable[PathLike], keys: Sequence[str] = ("model.width", "optim.weight_decay")) -> str:
    """The notes' sweep table: one row per run, labelled by config ``keys`` (dotted).

    >>> print(sweep_table(sorted(Path("runs").glob("xnor-resnet18-*"))))  # doctest: +SKIP
    """
    rows = []
    for run_dir in run_dirs:
        row = run_summary(run_dir)
        for key in keys:
            row[key] = _get(row["config"], key)
        rows.append(row)
    return summary_table(rows, label_columns=list(keys))


def plot_curves(records: Sequence[Mapping[str, Any]], plots_dir: PathLike) -> List[Path]:
    """``loss.png``, ``accuracy.png`` and ``lr.png`` against the epoch (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) for r in records]
    written = []
    for name, keys, ylabel in (
        ("loss", ("train_loss", "test_loss"), "loss"),
        ("accuracy", ("train_acc", "test_acc"), "accuracy"),
        ("lr", ("lr",), "learning rate (end of epoch)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key in keys:
            ax.plot(epochs, [float(r[key]) for r in records], marker="o" if len(epochs) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if name == "loss" and all(float(r[k]) > 0 for r in records for k in keys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = plots_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_train_report(run_dir: PathLike) -> Path:
    """(Re)build ``report.md`` and ``plots/`` of a training run from its files; return the report path."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / "metrics.csv")
    row = run_summary(run_dir)
    config, meta = row["config"], _read_yaml(run_dir / "meta.yaml")
    plot_curves(records, run_dir / "plots")
    total = _get(config, "run.epochs")
    status = "complete" if total is None or row["epochs"] >= total else f"stopped after {row['epochs']} of {total} epochs"

    recipe = [
        ("model", _get(config, "model.name")),
        ("dataset", _get(config, "data.dataset")),
        ("epochs", total),
        ("batch size", _get(config, "data.batch_size")),
        ("optimizer", _get(config, "optim.name")),
        ("lr", _get(config, "optim.lr")),
        ("weight decay", _get(config, "optim.weight_decay")),
        ("schedule", _get(config, "schedule.name")),
        ("loss", _get(config, "loss.name")),
        ("seed", _get(config, "run.seed")),
    ]
    model_cfg = _get(config, "model") or {}
    extras = {k: v for k, v in model_cfg.items() if k not in ("name", "kwargs") and v not in (None, False)}
    extras.update(model_cfg.get("kwargs") or {})
    per_epoch = ["| epoch | lr | train loss | train acc | test loss | test acc | seconds |", "|" + "---:|" * 7]
    for r in records:
        per_epoch.append(
            f"| {r['epoch']} | {float(r['lr']):.4g} | {float(r['train_loss']):.4g} | {float(r['train_acc']):.4f} "
            f"| {float(r['test_loss']):.4g} | {float(r['test_acc']):.4f} | {float(r['seconds']):.1f} |"
        )
    text = "\n".join(
        [
            f"# Training run `{run_dir.name}`",
            "",
            f"Status: {status}.",
            "",
            ", ".join(f"{k}: {v}" for k, v in recipe if v is not None)
            + (f"; model options: {extras}" if extras else ""),
            "",
            f"## Summary (mean of the last {row['last_n']} epochs)",
            "",
            summary_table([row]),
            "",
            f"Final validation accuracy {row['final_test_acc']:.4f}; validation = the test split.",
            "",
            "## Curves",
            "",
            "![loss](plots/loss.png) ![accuracy](plots/accuracy.png) ![lr](plots/lr.png)",
            "",
            "## Per epoch",
            "",
            "\n".join(per_epoch),
            "",
            "## Evidence",
            "",
            f"- config: `config.yaml` (reproduce: `lowbit train {run_dir / 'config.yaml'}`)",
            f"- git commit: {meta.get('git_commit')}; lowbit {meta.get('lowbit')}, torch {meta.get('torch')}, "
            f"python {meta.get('python')}",
            f"- machine: {meta.get('machine')}, {meta.get('cpu_threads')} torch threads, CUDA: {meta.get('cuda')}",
            f"- started: {meta.get('started')}",
            "",
        ]
    )
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path


__all__ = [
    "param_size_mb",
    "plot_curves",
    "run_summary",
    "summarize",
    "summary_table",
    "sweep_table",
    "write_train_report",
]
