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

Low-bit runs add (each section only when its file exists):

- **against the baseline** (``run.baseline``: another run directory, e.g. the
  float run of the same recipe): both runs in the summary table, the
  difference in final test accuracy in points, and the config keys in which
  the runs differ besides ``quant:``;
- **storage per layer** from ``storage.csv`` (``lowbit.nn.storage_table``);
- **gradient distributions** from ``grad_hist.csv``: histograms of G and E per
  layer at the first, middle and last sampled step
  (``lowbit.nn.plot_gradient_histograms``), and from ``grad_stats.csv`` the
  kurtosis and max/std ("sharp and wide") per layer;
- **entries that round to zero**, per layer, from ``grad_stats.csv``: exactly
  zero in float, to nearest, expected under stochastic rounding, and produced
  by the layer; each cell is ``mean (first -> last)``: the arithmetic mean over
  the sampled steps, then the values at the layer's first and last sampled step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from lowbit.config import get_dotted, read_yaml_or_empty
from lowbit.provenance import describe_code
from lowbit.runs import atomic_write_text, read_records, reproduce_command

PathLike = Union[str, Path]

# Files of a low-bit run (written by lowbit.train.loop)
GRAD_STATS_FILE = "grad_stats.csv"  # lowbit.nn.GradientStats records: one row per (step, layer, G|E)
GRAD_HIST_FILE = "grad_hist.csv"  # its histograms: one row per (step, layer, G|E, bin)
STORAGE_FILE = "storage.csv"  # lowbit.nn.storage_records of the quantized model, written at the start

STOP_FILE = "stopped.yaml"  # an early stop by train(on_epoch=...): epoch, epochs, step, reason

# Config keys (and sections) that do not change the numbers: left out of "differs from the baseline in",
# of the trackers' parameters and of the varied keys of a sweep table
_BOOKKEEPING_KEYS = (
    "run.name",
    "run.baseline",
    "run.threads",
    "run.tensorboard",
    "run.trackers",
    "run.log_every",
    "run.mlflow",
    "run.grad_stats_every",
    "run.summary_last_n",
    "data.data_dir",
    "data.eval_batch_size",
)


def is_bookkeeping_key(key: str) -> bool:
    """A dotted config key that names where or how a run is recorded, not what it computes."""
    return any(key == k or key.startswith(k + ".") for k in _BOOKKEEPING_KEYS)

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
    return read_yaml_or_empty(path)  # bounded, safe YAML; {} when missing


def run_summary(run_dir: PathLike, last_n: Optional[int] = None) -> Dict[str, Any]:
    """``summarize`` of a run directory, with its parameter size and config."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / "config.yaml")
    model = _read_yaml(run_dir / "model.yaml")
    n = last_n or get_dotted(config, "run.summary_last_n") or 10
    row = summarize(read_records(run_dir / "metrics.csv"), n)
    row["param_mb"] = param_size_mb(model["param_bytes"]) if "param_bytes" in model else None
    row["config"] = config
    return row


# ---------------------------------------------------------------- status and early stops


def write_stop_record(run_dir: PathLike, epoch: int, epochs: int, step: int, reason: str) -> Path:
    """``stopped.yaml``: the run was stopped early by its ``on_epoch`` callback after ``epoch`` of ``epochs``."""
    import yaml

    path = Path(run_dir) / STOP_FILE
    record = {"epoch": int(epoch), "epochs": int(epochs), "step": int(step), "reason": str(reason), "by": "on_epoch"}
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    return path


def read_stop_record(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The early stop of a run (``stopped.yaml``), or None when the on_epoch callback did not stop it."""
    record = _read_yaml(Path(run_dir) / STOP_FILE)  # {} when there is none
    return record or None


def run_status(run_dir: PathLike, epochs_done: int, config: Mapping[str, Any]) -> str:
    """``complete``, ``stopped early after k of N epochs`` (on_epoch) or ``stopped after k of N epochs``."""
    total = get_dotted(config, "run.epochs")
    if total is None or epochs_done >= total:
        return "complete"
    early = read_stop_record(run_dir)
    if early is not None and int(early.get("epoch", -1)) == epochs_done:
        return f"stopped early after {epochs_done} of {total} epochs"
    return f"stopped after {epochs_done} of {total} epochs"


# ---------------------------------------------------------------- tables over runs

_TABLE_VALUES = ("epochs", "last_n", "train_loss", "train_acc", "test_loss", "test_acc", "best_test_acc", "best_epoch",
                 "final_test_acc", "wall_seconds", "param_mb")


class SweepTable(list):
    """Rows of :func:`sweep_table` (a list of dicts) that know their label keys and how to print themselves.

    ``str(table)`` and :meth:`markdown` give the notes' Markdown table; :meth:`csv` the CSV text,
    :meth:`write` both files, :meth:`frame` a pandas DataFrame.
    """

    def __init__(self, rows: Iterable[Dict[str, Any]] = (), keys: Sequence[str] = ()):
        super().__init__(rows)
        self.keys = list(keys)

    def markdown(self) -> str:
        labels = ["run", *self.keys] + (["status"] if any(r["status"] != "complete" for r in self) else [])
        shown = [{**r, **{k: _show_value(r.get(k)) for k in self.keys}} for r in self]
        return summary_table(shown, label_columns=labels)

    def __str__(self) -> str:
        return self.markdown()

    def csv(self) -> str:
        from lowbit.report.tables import csv_text

        return csv_text([{k: _csv_value(v) for k, v in r.items()} for r in self])

    def write(self, prefix: PathLike) -> List[Path]:
        """``PREFIX.csv`` and ``PREFIX.md`` (folders made as needed); returns both paths."""
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        paths = [prefix.with_name(prefix.name + ".csv"), prefix.with_name(prefix.name + ".md")]
        atomic_write_text(paths[0], self.csv())
        atomic_write_text(paths[1], self.markdown() + "\n")
        return paths

    def frame(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (pandas is not a lowbit dependency: pip install pandas)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("SweepTable.frame() needs pandas: pip install pandas (or use the rows, a list of dicts)") from error
        return pandas.DataFrame(list(self))


def varied_keys(configs: Sequence[Mapping[str, Any]]) -> List[str]:
    """The dotted config keys whose values differ across ``configs`` (bookkeeping keys left out), in config order."""
    from lowbit.config import flatten_dotted

    flats = [flatten_dotted(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    return [k for k in keys if not is_bookkeeping_key(k) and len({repr(f.get(k, missing)) for f in flats}) > 1]


def sweep_table(run_dirs: Iterable[PathLike], keys: Optional[Sequence[str]] = None) -> SweepTable:
    """The notes' sweep table over training runs: one row per run, sorted by the label ``keys``.

    ``keys``: dotted config keys to label (and sort) the rows by; None: the keys whose values differ
    across the runs (:func:`varied_keys`). Each row: ``run`` (the directory's name), the keys, ``status``,
    the :func:`run_summary` figures (means of the last ``run.summary_last_n`` epochs, best and final test
    accuracy, wall time, size) and ``path``. Rows with equal keys keep the order of the run names.

    >>> print(sweep_table(sorted(Path("runs").glob("xnor-resnet18-*"))))  # doctest: +SKIP
    >>> sweep_table(run_dirs).write("results/xnor")   # results/xnor.csv and results/xnor.md  # doctest: +SKIP
    """
    from lowbit.report.tables import sort_key

    summaries = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / "metrics.csv").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} has no metrics.csv: not a `lowbit train` run directory, or no epoch finished yet")
        summaries.append((run_dir, run_summary(run_dir)))
    keys = list(keys) if keys is not None else varied_keys([s["config"] for _, s in summaries])
    rows = []
    for run_dir, summary in summaries:
        row: Dict[str, Any] = {"run": run_dir.name, **{k: get_dotted(summary["config"], k) for k in keys}}
        row["status"] = run_status(run_dir, summary["epochs"], summary["config"])
        row.update({k: summary.get(k) for k in _TABLE_VALUES})
        row["path"] = str(run_dir)
        rows.append(row)
    rows.sort(key=lambda r: (tuple(sort_key(r[k]) for k in keys), r["run"]))
    return SweepTable(rows, keys)


def _show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(_csv_value(value))


def _csv_value(value: Any) -> Any:
    """Lists and mappings as YAML flow text (``[0.5, 0.75]``) in a CSV cell; other values as they are."""
    if isinstance(value, (list, tuple, dict)):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return value


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
    total = get_dotted(config, "run.epochs")
    status = run_status(run_dir, row["epochs"], config)
    early = read_stop_record(run_dir) if status.startswith("stopped early") else None
    if early is not None:
        status += (f" by the epoch callback (`train(on_epoch=...)`): {early.get('reason')}; the checkpoint is kept, "
                   f"`lowbit train --resume {run_dir}` trains the remaining epochs")

    recipe = [
        ("model", get_dotted(config, "model.name")),
        ("dataset", get_dotted(config, "data.dataset")),
        ("epochs", total),
        ("batch size", get_dotted(config, "data.batch_size")),
        ("optimizer", get_dotted(config, "optim.name")),
        ("lr", get_dotted(config, "optim.lr")),
        ("weight decay", get_dotted(config, "optim.weight_decay")),
        ("schedule", get_dotted(config, "schedule.name")),
        ("loss", get_dotted(config, "loss.name")),
        ("seed", get_dotted(config, "run.seed")),
    ]
    model_cfg = get_dotted(config, "model") or {}
    extras = {k: v for k, v in model_cfg.items() if k not in ("name", "kwargs") and v not in (None, False)}
    extras.update(model_cfg.get("kwargs") or {})
    baseline = _baseline_section(run_dir, row, config)
    lowbit_sections = _lowbit_sections(run_dir, config)
    from lowbit.train.flips import flip_ratio_section

    lowbit_sections += flip_ratio_section(run_dir, records)  # binary runs: flip ratio per layer
    from lowbit.train.grad_probe import report_section  # the probe: section's records, if any

    lowbit_sections += report_section(run_dir)
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
            *baseline,
            "## Curves",
            "",
            "![loss](plots/loss.png) ![accuracy](plots/accuracy.png) ![lr](plots/lr.png)",
            "",
            *lowbit_sections,
            "## Per epoch",
            "",
            "\n".join(per_epoch),
            "",
            "## Evidence",
            "",
            f"- config: `config.yaml` (reproduce: `{reproduce_command('train', run_dir / 'config.yaml', config.get('plugins'))}`)",
            f"- code: {describe_code(meta)}; torch {meta.get('torch')}, "
            f"python {meta.get('python')}",
            f"- machine: {meta.get('machine')}, {meta.get('cpu_threads')} torch threads, CUDA: {meta.get('cuda')}",
            f"- execution: {_execution(config)}",
            f"- started: {meta.get('started')}",
            "",
        ]
    )
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path


PRECISION_WORDS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}  # run.precision in the report


def _execution(config: Mapping[str, Any]) -> str:
    """Where and how the steps ran: ``run.device``, ``run.precision``, ``run.compile`` (with config.yaml's values)."""
    from lowbit.train.compiler import describe_compile

    precision = get_dotted(config, "run.precision", "fp32")
    return (f"run.device {get_dotted(config, 'run.device', 'cpu')}, {PRECISION_WORDS.get(precision, precision)}, "
            f"{describe_compile(get_dotted(config, 'run.compile'), get_dotted(config, 'run.compile_backend'))}")


# ---------------------------------------------------------------- against a baseline run


def precision_label(quant: Optional[Mapping[str, Any]]) -> str:
    """W-A-G-E bits of a config's ``quant:`` section, e.g. ``8-8-8-8, G stochastic``; ``float32`` without one.

    Missing keys take ``lowbit.nn.quantize_model``'s defaults; a float tensor is ``f``.
    """
    if not quant:
        return "float32"
    import inspect

    from lowbit.nn import quantize_model

    defaults = {k: p.default for k, p in inspect.signature(quantize_model).parameters.items()}
    bits = [quant.get(k, defaults[k]) for k in ("w_bits", "a_bits", "g_bits", "e_bits")]
    label = "-".join("f" if b is None or b >= 32 else str(b) for b in bits)
    if bits[2] is None or bits[2] >= 32:
        return label
    return f"{label}, G {quant.get('g_rounding', defaults['g_rounding'])}"


def config_differences(config: Mapping[str, Any], baseline: Mapping[str, Any]) -> List[str]:
    """The dotted keys (besides ``quant`` and bookkeeping such as ``run.name``) whose values differ."""
    from lowbit.config import flatten_dotted

    a, b = flatten_dotted(config), flatten_dotted(baseline)
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if k != "quant" and not k.startswith("quant.") and not is_bookkeeping_key(k) and a.get(k) != b.get(k)
    ]


def _baseline_section(run_dir: Path, row: Mapping[str, Any], config: Mapping[str, Any]) -> List[str]:
    """``## Against the baseline``: this run and ``run.baseline`` in one summary table, and the difference."""
    name = get_dotted(config, "run.baseline")
    if not name:
        return []
    lines = ["## Against the baseline", ""]
    path = Path(name)
    if not (path / "metrics.csv").is_file():
        why = "it has no metrics.csv (no epoch finished yet)" if path.is_dir() else "the directory is gone"
        where = "" if path.is_absolute() else f" (relative to {str(Path.cwd())!r})"
        return lines + [f"Baseline `{name}`{where}: not shown, {why}. Rebuild with `lowbit report {run_dir}`.", ""]
    base = run_summary(path)
    base_config = base["config"]
    this_label, base_label = precision_label(get_dotted(config, "quant")), precision_label(get_dotted(base_config, "quant"))
    rows = [
        {**row, "run": f"this run `{run_dir.name}`", "W-A-G-E": this_label},
        {**base, "run": f"baseline `{path.name}`", "W-A-G-E": base_label},
    ]
    delta = 100 * (row["final_test_acc"] - base["final_test_acc"])
    delta_mean = 100 * (row["test_acc"] - base["test_acc"])
    total = get_dotted(base_config, "run.epochs")
    done = total is None or base["epochs"] >= total
    base_status = "complete" if done else f"stopped after {base['epochs']} of {total} epochs"
    differences = config_differences(config, base_config)
    if differences:
        listed = ", ".join(f"`{k}` ({get_dotted(base_config, k)!r} -> {get_dotted(config, k)!r})" for k in differences)
        same = f"Besides `quant:`, the configs differ in {listed}: the difference is not only the quantization."
    else:
        same = "Besides `quant:` the configs are the same (seed, data, model, optimizer, schedule, epochs)."
    lines += [
        summary_table(rows, label_columns=["run", "W-A-G-E"]),
        "",
        f"Final test accuracy {row['final_test_acc']:.4f} against {base['final_test_acc']:.4f} for the baseline: "
        f"**{delta:+.2f} points** (last epoch of each run; {delta_mean:+.2f} points in the mean of the last "
        f"{row['last_n']} / {base['last_n']} epochs). One run each: a difference within the seed-to-seed spread "
        "is not an effect of the quantization (repeat with other `run.seed` values; docs/lowbit-training.md).",
        "",
        f"{same} Baseline: `{name}` ({base_status}).",
        "",
    ]
    return lines


# ---------------------------------------------------------------- low-bit runs: storage and gradients

_TEXT_COLUMNS = ("layer", "kind", "scale", "rounding")  # kept as text (a layer may be named "0" or "1.10")


def read_stats(path: PathLike) -> List[Dict[str, Any]]:
    """Rows of ``grad_stats.csv`` / ``grad_hist.csv`` / ``storage.csv``: numbers parsed, names kept as text."""
    return read_records(path, text_columns=_TEXT_COLUMNS)


def _layer_order(records: Sequence[Mapping[str, Any]], storage: Sequence[Mapping[str, Any]]) -> List[str]:
    """Layers in the model's order: storage.csv's (registration order), else the reverse of the
    backward order in which the statistics were recorded."""
    present = list(dict.fromkeys(str(r["layer"]) for r in records))
    if storage:
        ordered = [str(r["layer"]) for r in storage if str(r["layer"]) in present]
        return ordered + [name for name in present if name not in ordered]
    return present[::-1]


def stats_over_training(
    records: Sequence[Mapping[str, Any]], kind: str, key: str
) -> Dict[str, Dict[str, Optional[float]]]:
    """Per layer: ``mean`` of ``key`` over the sampled steps, its value at the ``first`` and ``last`` of them.

    ``records``: grad_stats.csv rows; rows of other kinds or with ``key`` blank are skipped.
    """
    by_layer: Dict[str, List[Mapping[str, Any]]] = {}
    for r in records:
        if r["kind"] == kind and r.get(key) is not None:
            by_layer.setdefault(str(r["layer"]), []).append(r)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for layer, rows in by_layer.items():
        rows = sorted(rows, key=lambda r: int(r["step"]))
        values = [float(r[key]) for r in rows]
        out[layer] = {"mean": sum(values) / len(values), "first": values[0], "last": values[-1], "n": len(values)}
    return out


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 25th ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pct(x: Optional[float]) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: Optional[float]) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _sci(x: Optional[float]) -> str:
    return "—" if x is None or x != x else f"{x:.1e}"


def _over_training(summary: Optional[Mapping[str, Optional[float]]], fmt: Callable[[Optional[float]], str]) -> str:
    """``mean (first -> last)`` of one ``stats_over_training`` entry."""
    if not summary:
        return "—"
    return f"{fmt(summary['mean'])} ({fmt(summary['first'])} → {fmt(summary['last'])})"


def _mean_of_layers(summaries: Sequence[Optional[Mapping[str, Optional[float]]]]) -> Optional[Dict[str, float]]:
    present = [s for s in summaries if s]
    if not present:
        return None
    return {part: sum(float(s[part]) for s in present) / len(present) for part in ("mean", "first", "last")}


def _grid_label(rows: Sequence[Mapping[str, Any]]) -> str:
    r = rows[0]
    if not r.get("quantized"):
        return f"float (ref. {r['bits']}-bit {r['scale']})"
    return f"{r['bits']}-bit {r['scale']}, {r['rounding']}"


def zero_fraction_table(records: Sequence[Mapping[str, Any]], kind: str, layers: Sequence[str]) -> str:
    """Markdown: per layer, the fraction of ``kind`` entries that are / round to zero, ``mean (first -> last)``."""
    columns = (
        ("exactly 0 in float", "frac_exact_zero", _pct),
        ("→ 0 to nearest", "frac_zero_nearest", _pct),
        ("→ 0 stochastic (expected)", "frac_zero_stochastic", _pct),
        ("0 after the layer's quantization", "frac_zero_quantized", _pct),
        (f"1 − cos({kind}, q({kind}))", "cos_distance", _sci),
    )
    summaries = {key: stats_over_training(records, kind, key) for _, key, _ in columns}
    header = ["layer", f"{kind} grid"] + [title for title, _, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(columns)]
    shown = [layer for layer in layers if layer in summaries["frac_zero_nearest"]]
    for layer in shown:
        rows = [r for r in records if str(r["layer"]) == layer and r["kind"] == kind]
        cells = [layer, _grid_label(rows)] + [_over_training(summaries[key].get(layer), fmt) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if len(shown) > 1:
        cells = ["(mean of layers)", ""] + [
            _over_training(_mean_of_layers([summaries[key].get(layer) for layer in shown]), fmt)
            for _, key, fmt in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shape_table(records: Sequence[Mapping[str, Any]], layers: Sequence[str], kinds: Sequence[str]) -> str:
    """Markdown: kurtosis and max/std ("sharp and wide") per layer and tensor, ``mean (first -> last)``."""
    kurtosis = {kind: stats_over_training(records, kind, "kurtosis") for kind in kinds}
    crest = {kind: stats_over_training(records, kind, "crest") for kind in kinds}
    lines = ["| layer | tensor | kurtosis | max/std |", "|---|---|---:|---:|"]
    for layer in layers:
        for kind in kinds:
            if layer in kurtosis[kind]:
                k, c = _over_training(kurtosis[kind][layer], _num), _over_training(crest[kind].get(layer), _num)
                lines.append(f"| {layer} | {kind} | {k} | {c} |")
    return "\n".join(lines)


def _lowbit_sections(run_dir: Path, config: Mapping[str, Any]) -> List[str]:
    """The storage table, gradient histograms, "sharp and wide" and round-to-zero tables (files permitting)."""
    storage_path, stats_path, hist_path = (run_dir / n for n in (STORAGE_FILE, GRAD_STATS_FILE, GRAD_HIST_FILE))
    storage = read_stats(storage_path) if storage_path.is_file() else []
    records = read_stats(stats_path) if stats_path.is_file() else []
    if not storage and not records:
        return []
    quant = get_dotted(config, "quant")
    lines = ["## Low-bit training" if quant else "## Gradient statistics", ""]
    if quant:
        section = ", ".join(f"{k}: {v}" for k, v in quant.items())
        lines += [f"W-A-G-E: {precision_label(quant)} (`quant:` {{{section}}}; docs/lowbit-training.md).", ""]
    if storage:
        from lowbit.nn import storage_table

        lines += [
            "### Storage per layer",
            "",
            storage_table(storage),
            "",
            "The deployed model: weights at their W bits, biases and BatchNorm at 32 bits; saving and compression "
            "against float32. During training the latent float32 weights are kept as well (the saving there is in "
            "the low-bit A, G and E tensors).",
            "",
        ]
    if not records:
        return lines
    layers = _layer_order(records, storage)
    kinds = [k for k in ("G", "E") if any(r["kind"] == k for r in records)]
    steps = sorted({int(r["step"]) for r in records})
    every = get_dotted(config, "run.grad_stats_every")
    if every is None:  # unset: the default of a run with quant:
        from lowbit.train.config import DEFAULT_GRAD_STATS_EVERY

        every = DEFAULT_GRAD_STATS_EVERY
    lines += [
        "### Gradient distributions over training",
        "",
        f"`lowbit.nn.GradientStats` sampled G (dL/dW) and E (dL/dy at the layer's output) of every Conv2d/Linear "
        f"on every {'' if every == 1 else _ordinal(every) + ' '}optimizer step (`run.grad_stats_every`): "
        f"{len(steps)} samples, steps {steps[0]} to "
        f"{steps[-1]} (files `{GRAD_STATS_FILE}`, `{GRAD_HIST_FILE}`). Statistics are of the float gradient before "
        "quantization. Histograms of g / max|g| at the first, middle and last sampled step, fraction of entries "
        "on a log scale (on this axis the 8-bit max-abs grid step is 1/127):",
        "",
    ]
    if hist_path.is_file():
        from lowbit.nn import plot_gradient_histograms

        hist = read_stats(hist_path)
        for kind in kinds:
            if any(h["kind"] == kind for h in hist):
                name = f"grad_hist_{kind}.png"
                plot_gradient_histograms(hist, run_dir / "plots" / name, kind=kind, layers=layers)
                lines += [f"![{kind} histograms per layer](plots/{name})", ""]
    lines += [
        "\"Sharp and wide\" (Zhu et al. 2020): kurtosis E[(g − mean)⁴] / var² is 3 for a Gaussian and large when "
        "most entries sit near 0 (sharp); max|g| / std is large when a few entries lie far out (wide), and a "
        "max-abs grid is set by those few. Each cell: mean over the sampled steps (first → last sampled step).",
        "",
        shape_table(records, layers, kinds),
        "",
    ]
    explained = False
    for kind in kinds:
        what = "the weight gradient G = dL/dW" if kind == "G" else "the error E = dL/dy at each layer's output"
        if not explained:
            text = (
                f"Fraction of the entries of {what}, per layer: already 0 in float (e.g. behind a ReLU); that "
                "round to 0 to nearest on the layer's grid (|g| < step/2); expected to become 0 under stochastic "
                "rounding (mean of max(0, 1 − |g|/step)); actually 0 after the layer's own quantization (the "
                "rounding in the grid column; — for float layers, whose fractions are for a reference 8-bit "
                "max-abs grid); and 1 − cos between the tensor and its quantization. The nearest and stochastic "
                "columns are computed on the same float tensors, so they compare the two roundings on this run's "
                "gradients. Each cell: mean over the sampled steps (first → last sampled step)."
            )
            explained = True
        else:
            text = f"The same for {what}:"
        table = zero_fraction_table(records, kind, layers)
        lines += [f"### Entries of {kind} that round to zero", "", text, "", table, ""]
    return lines


__all__ = [
    "GRAD_HIST_FILE",
    "GRAD_STATS_FILE",
    "STOP_FILE",
    "STORAGE_FILE",
    "SweepTable",
    "config_differences",
    "is_bookkeeping_key",
    "param_size_mb",
    "precision_label",
    "read_stats",
    "read_stop_record",
    "run_status",
    "shape_table",
    "stats_over_training",
    "zero_fraction_table",
    "plot_curves",
    "run_summary",
    "summarize",
    "summary_table",
    "sweep_table",
    "varied_keys",
    "write_stop_record",
    "write_train_report",
]
