"""The sweep report: the notes' cross-run tables and overlay figures, built from the cells' own files.

``write_sweep_report(sweep_dir)`` (also ``lowbit report SWEEP_DIR``) writes

- ``report.md``: the evidence (command, base, grid, executor, machine), one row
  per cell (status, seconds, the reproduce line, a link to the cell's report),
  the failed cells with their errors, every ``tables:`` entry, the overlays;
- ``tables/*.csv``: each table as rows of (keys..., mean, se, n);
- ``plots/overlay_<metric>.png`` (training sweeps): every cell's per-epoch
  curve on one axis, one colour per cell, the same in every figure;
- ``merged/`` (split probes): the cells' records put together in the single
  run's unit order, with the unsplit config, and the probe report over them.

A table cell is the mean ± standard error over the cells (seeds) that share
its row and column, with n; a place whose cells did not finish says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from lowbit.config import get_dotted
from lowbit.provenance import describe_code
from lowbit.report.tables import csv_text, format_mean_se, markdown_table, mean_se, sort_key
from lowbit.runs import DirectoryLock, atomic_write_text, read_records
from lowbit.sweep.spec import PROBE_AXES, SweepSpec, TableSpec
from lowbit.sweep.state import CELLS_FILE, DONE, FAILED, CellState, read_cells, read_summary, read_sweep_file

PathLike = Union[str, Path]
VALUE_ALIASES = {"val_acc": "test_acc", "val_loss": "test_loss", "accuracy": "test_acc"}
SUMMARY_VALUES = ("wall_seconds", "param_mb", "best_test_acc", "best_epoch", "final_test_acc", "epochs")


@dataclass
class CellResult:
    """A cell as the report sees it: its row of cells.csv, its run directory and resolved config."""

    state: CellState
    run_dir: Path
    config: Dict[str, Any]

    @property
    def done(self) -> bool:
        return self.state.status == DONE

    def key(self, name: str) -> Any:
        """The cell's value of a varied key, ``seed``, or any dotted config key."""
        values = self.state.values
        if name in values:
            return values[name]
        return get_dotted(self.config, name)


def write_sweep_report(sweep_dir: PathLike, locked: bool = False) -> Path:
    """(Re)build the report of a sweep directory; refuses while another process holds the sweep."""
    sweep_dir = Path(sweep_dir)
    lock = None if locked else DirectoryLock(sweep_dir, "sweep").acquire()
    try:
        return _write(sweep_dir)
    finally:
        if lock is not None:
            lock.release()


def _write(sweep_dir: Path) -> Path:
    spec, base_file, _, threads = read_sweep_file(sweep_dir)
    states = read_cells(sweep_dir)
    cells = [CellResult(s, sweep_dir / s.run_dir, _read_yaml(sweep_dir / s.run_dir / "config.yaml")) for s in states]
    summary = read_summary(sweep_dir)
    meta = _read_yaml(sweep_dir / "meta.yaml")
    (sweep_dir / "plots").mkdir(exist_ok=True)
    command = spec.command_name

    lines = [f"# Sweep: {spec.name}", ""]
    lines += _evidence(spec, base_file, threads, cells, summary, meta, sweep_dir)
    lines += _cells_section(spec, cells)
    lines += _failures(cells, sweep_dir)
    for index, table in enumerate(spec.tables):
        lines += _table_section(spec, table, index, cells, sweep_dir)
    if command == "train":
        lines += _runs_table(spec, cells)
        lines += _overlays(spec, cells, sweep_dir)
    if command == "probe" and spec.split:
        lines += _merged_probe(spec, cells, sweep_dir)
    path = sweep_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# ---- evidence and cells


def _evidence(spec: SweepSpec, base_file: Optional[str], threads: int, cells: Sequence[CellResult],
              summary: Mapping[str, Any], meta: Mapping[str, Any], sweep_dir: Path) -> List[str]:
    counts = {status: sum(c.state.status == status for c in cells) for status in ("done", "failed", "queued", "running")}
    grid = ", ".join(f"`{k}` ∈ {v}" for k, v in spec.grid.items())
    zips = "; ".join("together " + ", ".join(f"`{k}` ∈ {v}" for k, v in g.items()) for g in spec.zip)
    parts = [p for p in (grid, zips, f"seeds {spec.seeds}" if spec.seeds else "", f"split along {spec.split}" if spec.split else "") if p]
    seconds = sum(c.state.seconds for c in cells)
    lines = [
        f"`lowbit {spec.command}` over {len(cells)} cells: {'; '.join(parts) or 'one cell'}. "
        f"Base config: `{base_file or 'the built-in default'}`"
        + (f", with {', '.join(f'`{o}`' for o in spec.overrides)}" if isinstance(spec.overrides, list) and spec.overrides else "")
        + ".",
        "",
        f"Status: {counts['done']} done, {counts['failed']} failed, {counts['queued'] + counts['running']} not finished. "
        f"Executor `{summary.get('executor', spec.executor)}` with {summary.get('workers', '?')} cell(s) at a time, "
        f"{threads} torch thread(s) per cell; {seconds:.1f} s of cell time in all.",
        "",
        f"{describe_code(meta)}, torch {meta.get('torch')}, {meta.get('machine')}; "
        f"started {meta.get('started')}. Every cell is its own run directory under `cells/`; its `config.yaml` "
        f"reproduces it (`lowbit {spec.command} cells/<cell>/config.yaml`), as does the command in `{CELLS_FILE}`.",
        "",
    ]
    if counts["queued"] + counts["running"]:
        lines += [f"> **Unfinished sweep**: run the rest with `lowbit sweep --resume {sweep_dir}`.", ""]
    return lines


def _cells_section(spec: SweepSpec, cells: Sequence[CellResult]) -> List[str]:
    keys = list(dict.fromkeys(k for c in cells for k in c.state.values))
    rows = []
    for c in cells:
        report = c.run_dir / "report.md"
        link = f"[report]({c.state.run_dir}/report.md)" if report.is_file() else "–"
        rows.append([c.state.cell, *[_show(c.state.values.get(k)) for k in keys], c.state.status, f"{c.state.seconds:.1f}", link])
    return ["## Cells", "", markdown_table(["cell", *keys, "status", "seconds", "report"], rows), ""]


def _failures(cells: Sequence[CellResult], sweep_dir: Path) -> List[str]:
    failed = [c for c in cells if c.state.status == FAILED]
    if not failed:
        return []
    lines = ["## Failed cells", ""]
    for c in failed:
        lines.append(f"- **{c.state.cell}** ({c.state.label}): {c.state.error} — log: `{c.state.run_dir}/cell.log`")
    return lines + [""]


# ---- tables


def _table_section(spec: SweepSpec, table: TableSpec, index: int, cells: Sequence[CellResult], sweep_dir: Path) -> List[str]:
    value = VALUE_ALIASES.get(table.value, table.value)
    how = table.reduce if spec.command_name == "train" else "mean over units" if spec.command_name == "probe" else "value"
    title = table.title or f"{table.value} ({how}) by {', '.join(table.rows)}" + (f" × {', '.join(table.cols)}" if table.cols else "")
    observations, missing = _observations(spec, table, value, cells)
    split_axes = set(PROBE_AXES.values()) | set(spec.split)
    others = [k for k in dict.fromkeys(k for c in cells for k in c.state.values)
              if k not in table.rows and k not in table.cols and k != "seed" and k not in split_axes]
    lines = [f"## {title}", ""]
    if not observations and not missing:
        return lines + [f"No cell has a value `{table.value}`.", ""]
    csv_rows: List[Dict[str, Any]] = []
    groups = _groups(cells, others)
    for group_values, members in groups:
        if group_values:
            lines += [f"### {', '.join(f'{k} = {_show(v)}' for k, v in group_values.items())}", ""]
        ids = {c.state.cell for c in members}
        obs = [o for o in observations if o["cell"] in ids]
        miss = [m for m in missing if m["cell"] in ids]
        lines += [_render_table(table, obs, miss, csv_rows, group_values), ""]
    name = f"table{index + 1}.csv"
    _write_csv(sweep_dir / "tables" / name, csv_rows)
    return lines + [f"As CSV: `tables/{name}`.", ""]


def _groups(cells: Sequence[CellResult], others: Sequence[str]) -> List[Tuple[Dict[str, Any], List[CellResult]]]:
    groups: Dict[str, Tuple[Dict[str, Any], List[CellResult]]] = {}
    for c in cells:
        values = {k: c.key(k) for k in others}
        groups.setdefault(repr(values), (values, []))[1].append(c)
    return list(groups.values())


def _observations(spec: SweepSpec, table: TableSpec, value: str, cells: Sequence[CellResult]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(one dict per measured value: its row/col keys, value, cell), (one per cell without a value)."""
    names = table.rows + table.cols
    observations, missing = [], []
    for c in cells:
        values: List[Tuple[Dict[str, Any], float]] = []
        if c.done:
            values = _cell_values(spec.command_name, c, value, table, names)
        if values:
            observations += [{"keys": keys, "value": v, "cell": c.state.cell} for keys, v in values]
        else:
            missing.append({"keys": {n: c.key(n) for n in names}, "cell": c.state.cell,
                            "why": c.state.status if not c.done else "no value"})
    return observations, missing


def _cell_values(command: str, c: CellResult, value: str, table: TableSpec, names: Sequence[str]) -> List[Tuple[Dict[str, Any], float]]:
    if command == "train":
        v = train_value(c.run_dir, value, table)
        return [] if v is None else [({n: c.key(n) for n in names}, v)]
    if command == "probe":
        path = c.run_dir / "records.csv"
        if not path.is_file():
            return []
        rows = read_records(path, text_columns=("unit", "estimator", "layer", "probed_layer"))
        out = []
        for r in rows:
            if r.get("metric") != value or r.get("value") is None:
                continue
            if "layer" not in names and r.get("layer") not in (None, "all"):
                continue  # per-layer cosines only when asked for by layer
            out.append(({n: (r[n] if n in r else c.key(n)) for n in names}, float(r["value"])))
        return out
    summary = _read_yaml(c.run_dir / "summary.yaml")
    v = get_dotted(summary, value)
    return [({n: c.key(n) for n in names}, float(v))] if isinstance(v, (int, float)) else []


def train_value(run_dir: Path, value: str, table: TableSpec) -> Optional[float]:
    """One number of a training run: a metrics.csv column reduced over epochs, or a summary figure."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    records = read_records(path)
    if not records:
        return None
    if value in SUMMARY_VALUES:
        from lowbit.train.summary import run_summary

        v = run_summary(run_dir).get(value)
        return None if v is None else float(v)
    series = [float(r[value]) for r in records if r.get(value) is not None]
    if not series:
        return None
    return reduce_series(series, table.reduce, value)


def reduce_series(series: Sequence[float], how: str, name: str = "") -> float:
    """``last``, ``first``, ``mean``, ``min``, ``max``, ``best`` (min for losses, else max) or ``lastN``."""
    if how.startswith("last") and how != "last":
        n = int(how[4:])
        tail = series[-n:]
        return sum(tail) / len(tail)
    if how == "best":
        how = "min" if "loss" in name else "max"
    return {"last": series[-1], "first": series[0], "mean": sum(series) / len(series), "min": min(series), "max": max(series)}[how]


def _render_table(table: TableSpec, obs: List[Dict[str, Any]], miss: List[Dict[str, Any]], csv_rows: List[Dict[str, Any]],
                  group_values: Mapping[str, Any]) -> str:
    row_keys = _sorted_unique([tuple(o["keys"][k] for k in table.rows) for o in obs + miss])
    col_keys = _sorted_unique([tuple(o["keys"][k] for k in table.cols) for o in obs + miss]) if table.cols else [()]
    cells: Dict[Tuple, List[float]] = {}
    for o in obs:
        cells.setdefault((tuple(o["keys"][k] for k in table.rows), tuple(o["keys"][k] for k in table.cols)), []).append(o["value"])
    why: Dict[Tuple, List[str]] = {}
    for m in miss:
        why.setdefault((tuple(m["keys"][k] for k in table.rows), tuple(m["keys"][k] for k in table.cols)), []).append(m["why"])
    header = [" / ".join(table.rows) + (f" \\ {' / '.join(table.cols)}" if table.cols else "")]
    header += [", ".join(_show(v) for v in col) for col in col_keys] if table.cols else [table.value]
    rows = []
    for r in row_keys:
        line = [", ".join(_show(v) for v in r)]
        for col in col_keys:
            values = cells.get((r, col), [])
            mean, se, n = mean_se(values)
            lacking = why.get((r, col), [])
            text = f"{format_mean_se(mean, se)} (n={n})" if n else "–"
            if lacking:
                text += f" [{len(lacking)} {'/'.join(sorted(set(lacking)))}]"
            line.append(text)
            if n or lacking:
                csv_rows.append({**dict(group_values), **dict(zip(table.rows, r)), **dict(zip(table.cols, col)),
                                 "mean": mean, "se": se, "n": n, "missing": len(lacking)})
        rows.append(line)
    return markdown_table(header, rows)


def _sorted_unique(keys: Sequence[Tuple]) -> List[Tuple]:
    return sorted(dict.fromkeys(keys), key=lambda key: tuple(sort_key(v) for v in key))


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, csv_text(rows))


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


# ---- training sweeps


def _runs_table(spec: SweepSpec, cells: Sequence[CellResult]) -> List[str]:
    """The notes' summary table (last-N means), one row per finished cell."""
    from lowbit.train.summary import run_summary, summary_table

    keys = list(dict.fromkeys(k for c in cells for k in c.state.values))
    rows = []
    for c in cells:
        if not (c.run_dir / "metrics.csv").is_file():
            continue
        try:
            row = run_summary(c.run_dir)
        except (ValueError, FileNotFoundError):
            continue
        rows.append({"cell": c.state.cell, **{k: _show(c.state.values.get(k)) for k in keys}, **row})
    if not rows:
        return []
    return ["## Runs (means over the last epochs, as in the notes)", "", summary_table(rows, label_columns=["cell", *keys]), ""]


def _overlays(spec: SweepSpec, cells: Sequence[CellResult], sweep_dir: Path) -> List[str]:
    """One figure per curve metric, every cell on one axis, the same colour per cell in every figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for c in cells:
        path = c.run_dir / "metrics.csv"
        if path.is_file():
            records = read_records(path)
            if records:
                series[c.state.cell] = (c, records)
    if not series:
        return []
    colours = plt.get_cmap("tab20" if len(cells) > 10 else "tab10")
    lines = ["## Curves of every cell", ""]
    for metric in spec.curves:
        metric = VALUE_ALIASES.get(metric, metric)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        drawn = 0
        for index, c in enumerate(cells):
            if c.state.cell not in series:
                continue
            records = series[c.state.cell][1]
            xs = [r["epoch"] for r in records if r.get(metric) is not None]
            ys = [r[metric] for r in records if r.get(metric) is not None]
            if not xs:
                continue
            ax.plot(xs, ys, color=colours(index % colours.N), linestyle="-" if c.done else ":", marker="." if len(xs) < 30 else None,
                    label=f"{c.state.cell}: {c.state.label}" + ("" if c.done else f" ({c.state.status})"))
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if "loss" in metric or metric == "lr":
            positive = all(y > 0 for line in ax.get_lines() for y in line.get_ydata())
            if positive:
                ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if drawn > 8 else 8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        path = sweep_dir / "plots" / f"overlay_{metric}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        lines += [f"![{metric} of every cell](plots/{path.name})", ""]
    return lines


# ---- probe sweeps split along the probe's axes


def _merged_probe(spec: SweepSpec, cells: Sequence[CellResult], sweep_dir: Path) -> List[str]:
    from lowbit.sweep.merge import merge_probe_cells

    lines = ["## The probe over all cells", ""]
    for merged_dir, parts, total in merge_probe_cells(spec, cells, sweep_dir):
        note = "" if parts == total else f" ({parts} of {total} cells finished so far)"
        lines.append(f"- [{merged_dir.relative_to(sweep_dir)}/report.md]({merged_dir.relative_to(sweep_dir)}/report.md): "
                     f"the records of {parts} cells in the single run's order{note}")
    return lines + [""]
