"""The probe's Markdown report and plots, drawn from ``records.csv`` alone.

Tables are means ± standard errors over inits × batches, one column per
dimension, one row per estimator, the way the research notes lay them out; one
block per swept task condition (e.g. binary vs FP activations).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import yaml

from lowbit.provenance import describe_code
from lowbit.report.tables import format_mean_se, group, markdown_table, mean_se
from lowbit.config import read_yaml_or_empty
from lowbit.runs import atomic_write_text, read_records, reproduce_command

# The x axis of the ΔL–lr curves, by measure.normalize.
LR_AXIS = {
    "global": "lr (step length along the unit-normalised direction)",
    "per_layer": "lr (step length per layer, each layer's direction unit-normalised)",
    "none": "lr (multiple of the raw estimate)",
}

EDGE_NOTE = {
    1: "↑ the best lr is the largest lr of the grid in {n} of {m} units: the best decrease there is only a lower bound",
    -1: "↓ the best lr is the smallest lr of the grid in {n} of {m} units: a smaller lr might decrease the loss more",
}

METRIC_TITLES = {
    "quick_decrease": "Loss decrease at the fixed quick-check lr",
    "best_decrease": "Best loss decrease over the lr grid",
    "best_lr": "lr of the best loss decrease",
    "cosine": "Cosine similarity with the reference",
    "step_decrease": "Loss decrease of the method's own step (displacement methods)",
    "seconds": "Seconds per estimate",
    "cosine_se": "Sampling standard error of the cosine (CDG on a random coordinate subset)",
    "coords": "Coordinates measured by CDG (of the layer's `dim`)",
    "sigma_gradient": "Loss gradient for NES's σ, summed over the coordinates (`return_sigma`; negative: a wider search lowers the smoothed loss)",
}

STATS_TITLES = {
    "ste_snr": "Signal-to-noise ratio ‖m‖² / Σᵢ sᵢ² of one mini-batch STE gradient",
    "ste_coord_snr_median": "Median per-coordinate |mᵢ| / sᵢ",
    "ste_mean_norm": "Norm of the mean gradient ‖m‖",
    "ste_total_variance": "Total variance Σᵢ sᵢ² across mini-batches",
    "ste_mean_abs": "Mean |mᵢ|",
    "ste_std": "Mean per-coordinate standard deviation sᵢ",
}


def write_probe_report(run_dir: Path) -> Path:
    """(Re)build ``report.md`` and ``plots/*.png`` of a probe run from its records."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / "records.csv", text_columns=("unit", "estimator", "layer", "probed_layer"))
    config = _read_yaml(run_dir / "config.yaml")
    meta = _read_yaml(run_dir / "meta.yaml")
    sweep_keys = list((config.get("probe") or {}).get("sweep") or {})
    (run_dir / "plots").mkdir(exist_ok=True)
    network = bool(config.get("network"))
    for r in records:  # the table columns: dims of the toy, probed layers of a network
        r["pos"] = r.get("probed_layer") if network else r.get("dim")

    colours = _colour_map(_estimator_order(config, records))
    xlabel = LR_AXIS.get((config.get("measure") or {}).get("normalize", "global"), LR_AXIS["global"])
    lines: List[str] = [f"# Gradient probe: {config.get('name', run_dir.name)}", ""]
    lines += _network_evidence(config, meta, records, run_dir) if network else _evidence(config, meta, records, run_dir)
    lines += [f"Reproduce: `{reproduce_command('probe', run_dir / 'config.yaml', config.get('plugins'))}`.", ""]
    conditions = group(records, lambda r: tuple((k, r.get(k)) for k in sweep_keys))
    differences = {c: [r for r in rows if r["metric"] == "normalized_difference"] for c, rows in conditions.items()}
    difference_plot = _plot_differences(differences, run_dir / "plots" / "normalized_difference.png", colours)
    for condition, rows in conditions.items():
        suffix = "_".join(f"{k}-{v}" for k, v in condition)
        if condition:
            lines += [f"## Condition: {', '.join(f'{k} = {v}' for k, v in condition)}", ""]
        lines += _estimator_tables(rows, config)
        plot = _plot_curves(rows, run_dir / "plots" / f"decrease_vs_lr{'_' + suffix if suffix else ''}.png", colours, xlabel)
        lines += [f"![loss decrease vs lr](plots/{plot.name})", ""] if plot else []
        if network:
            plot = _cosine_bars(
                [r for r in rows if r["metric"] == "cosine" and r["layer"] == "all"],
                lambda r: r["pos"],
                run_dir / "plots" / f"cosine_by_probed_layer{'_' + suffix if suffix else ''}.png",
                colours,
            )
            lines += [f"![cosine with the reference by layer](plots/{plot.name})", ""] if plot else []
            lines += _stats_section(rows, run_dir, suffix, colours)
        else:
            plot = _plot_vs_dim(
                rows, "best_decrease", run_dir / "plots" / f"best_decrease_vs_dim{'_' + suffix if suffix else ''}.png", colours
            )
            lines += [f"![best loss decrease vs dim](plots/{plot.name})", ""] if plot else []
        lines += _layer_cosine_table(rows)
        plot = _plot_cosine_by_layer(rows, run_dir / "plots" / f"cosine_by_layer{'_' + suffix if suffix else ''}.png", colours)
        lines += [f"![cosine by layer](plots/{plot.name})", ""] if plot else []
        lines += _trajectory_section(rows, config, run_dir / "plots" / f"trajectories{'_' + suffix if suffix else ''}.png", colours)
        lines += _normalized_difference(rows)
        if difference_plot and len(conditions) == 1:
            lines += [f"![normalised difference](plots/{difference_plot.name})", ""]
    if difference_plot and len(conditions) > 1:
        lines += [
            "## Normalised difference across conditions",
            "",
            "One panel per condition, on a common y axis (positive: the second method reaches the lower loss).",
            "",
            f"![normalised difference by condition](plots/{difference_plot.name})",
            "",
        ]
    if len(conditions) > 1:
        plot = _plot_cosine_by_condition(records, sweep_keys, run_dir / "plots" / "cosine_by_condition.png", colours)
        if plot:
            lines += ["## Cosine with the reference across conditions", "", f"![cosine by condition](plots/{plot.name})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _read_yaml(path: Path) -> Dict[str, Any]:
    return read_yaml_or_empty(path)  # bounded, safe YAML; {} when missing


def _evidence(
    config: Mapping[str, Any], meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]], run_dir: Path
) -> List[str]:
    probe = config.get("probe", {})
    task = config.get("task", {})
    units = {r["unit"] for r in records}
    expected = len(probe.get("dims", [])) * probe.get("inits", 0) * probe.get("batches", 0)
    for values in (probe.get("sweep") or {}).values():
        expected *= len(values)
    measure = config.get("measure", {})
    grid = measure.get("lr_grid", {})
    budget = config.get("budget")
    selected = probe.get("select") or {}
    if selected:  # a part of a larger grid (a sweep cell): count only the selected units
        from lowbit.probe.config import ProbeConfig
        from lowbit.probe.plan import plan_units
        from lowbit.config import from_dict

        expected = len(plan_units(from_dict(ProbeConfig, config)))
    lines = [
        f"Teacher–student toy: {task.get('depth')}-layer bias-free MLP, student activation `{task.get('act')}`, "
        f"x ~ N(0, I), MSE against the teacher, {task.get('batch_size')} samples per batch, "
        f"pretraining {task.get('pretrain_steps', 0)} steps. Layers studied: {probe.get('layers')}. "
        f"Means ± standard errors over {probe.get('inits')} inits × {probe.get('batches')} batches "
        f"({len(units)} of {expected} grid points measured"
        + (f"; this run is the part `probe.select = {selected}` of a larger grid" if selected else "") + ").",
        "",
        f"Directions are normalised `{measure.get('normalize')}`; the lr grid has {grid.get('num')} {grid.get('scale')}-spaced "
        f"points in [{grid.get('min')}, {grid.get('max')}]"
        + (f", capped at the common budget {budget.get('radius')} ({budget.get('norm')})" if budget else "")
        + f"; the quick check uses lr = {measure.get('quick_lr')}. Reference for cosines: `{measure.get('reference')}`.",
        "",
        f"Seed {config.get('seed')}; {describe_code(meta)}, torch {meta.get('torch')}, "
        f"{meta.get('machine')}; started {meta.get('started')}.",
        "",
    ]
    if len(units) < expected:
        lines += [f"> **Incomplete run**: finish it with `lowbit probe --resume {run_dir}`.", ""]
    return lines


def _estimator_order(config: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> List[str]:
    """Every estimator label in the config's order, then the compared pairs, then anything else recorded."""
    labels: List[str] = []
    try:
        from lowbit.probe.config import expand_estimators

        labels = [s.label for s in expand_estimators(config.get("estimators") or [])]
    except (ValueError, TypeError, KeyError):  # a hand-edited config: fall back to the records' order
        pass
    labels += [f"{a} vs {b}" for a, b in ((config.get("measure") or {}).get("compare") or [])]
    labels += [r["estimator"] for r in records if r.get("estimator")]
    return list(dict.fromkeys(labels))


def _colour_map(labels: Sequence[str]) -> Dict[str, Any]:
    """One colour per label, the same in every figure of the report (20 distinguishable, then repeated)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].colors
    ordered = palette[0::2] + palette[1::2]
    return {label: ordered[i % len(ordered)] for i, label in enumerate(labels)}


def _positions(rows: Sequence[Mapping[str, Any]]) -> List[Any]:
    """Column keys: dims in increasing order, layer names in the order they were probed."""
    found = list(dict.fromkeys(r["pos"] for r in rows if r.get("pos") is not None))
    return sorted(found) if all(isinstance(p, (int, float)) for p in found) else found


def _pos_label(position: Any) -> str:
    return f"dim {position}" if isinstance(position, (int, float)) else str(position)


def _table(rows: Sequence[Mapping[str, Any]], metric: str, layer: str = "all", marks: Mapping[Any, str] = {}) -> str:
    """Mean ± SE of ``metric`` per estimator (rows, in first-seen order) and position (columns).

    ``marks``: (estimator, position) -> a footnote mark appended to that cell.
    """
    dims = _positions(rows)
    selected = [r for r in rows if r["metric"] == metric and r["layer"] == layer]
    if not selected:
        return ""
    body = []
    for estimator, items in group(selected, lambda r: r["estimator"]).items():
        by_dim = group(items, lambda r: r["pos"])
        cells = [
            format_mean_se(*mean_se([r["value"] for r in by_dim.get(d, [])])[:2]) + marks.get((estimator, d), "")
            for d in dims
        ]
        body.append([f"`{estimator}`"] + cells)
    return markdown_table(["estimator"] + [_pos_label(d) for d in dims], body)


def _estimator_tables(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> List[str]:
    lines: List[str] = []
    base = group([r for r in rows if r["metric"] == "base_loss"], lambda r: r["pos"])
    if base:
        lines += [
            "Loss before the step: "
            + ", ".join(
                f"{_pos_label(d)}: {format_mean_se(*mean_se([r['value'] for r in base[d]])[:2])}"
                for d in _positions([r for v in base.values() for r in v])
            ),
            "",
        ]
    # One value per (init, batch): every probed layer records the same batch's accuracy.
    accuracy = list({(r["init"], r["batch"]): r["value"] for r in rows if r["metric"] == "batch_accuracy"}.values())
    if accuracy:
        lines += [f"Accuracy of the network on the measured batches: {format_mean_se(*mean_se(accuracy)[:2])}.", ""]
    marks, notes = _edge_marks(rows, config)
    if notes:
        lines += ["> **Best lr on an edge of the lr grid** (marked in the tables below): " + "; ".join(notes) + ".", ""]
    for metric in ("quick_decrease", "best_decrease", "best_lr", "cosine", "cosine_se", "coords", "step_decrease",
                   "sigma_gradient", "seconds"):
        table = _table(rows, metric, marks=marks if metric in ("best_decrease", "best_lr") else {})
        if table:
            title = METRIC_TITLES[metric]
            if metric == "cosine":
                title += f" (`{config.get('measure', {}).get('reference')}`)"
            lines += [f"### {title}", "", table, ""]
    return lines


def _edge_marks(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> Tuple[Dict[Any, str], List[str]]:
    """Marks for the (estimator, position) cells whose best lr sits on an edge of the lr grid, and their notes.

    With a common budget the grid stops at the radius: a best lr there means the budget binds, which
    is expected and noted as such rather than as a grid too short.
    """
    flagged = [r for r in rows if r["metric"] == "best_lr_edge"]
    if not flagged:
        return {}, []
    budget = config.get("budget") or {}
    grid = (config.get("measure") or {}).get("lr_grid") or {}
    grid = grid if isinstance(grid, Mapping) else {}
    at_budget = bool(budget) and float(budget.get("radius", math.inf)) <= float(grid.get("max", math.inf))
    marks: Dict[Any, str] = {}
    notes: List[str] = []
    for (estimator, pos), items in group(flagged, lambda r: (r["estimator"], r["pos"])).items():
        for edge in (1, -1):
            n = sum(1 for r in items if r["value"] == edge)
            if not n:
                continue
            if edge == 1 and at_budget:
                marks[(estimator, pos)] = marks.get((estimator, pos), "") + " °"
                notes.append(f"`{estimator}` at {_pos_label(pos)}: ° at the budget radius {budget.get('radius')} in {n} of {len(items)} units (the budget binds)")
                continue
            marks[(estimator, pos)] = marks.get((estimator, pos), "") + (" ↑" if edge == 1 else " ↓")
            notes.append(f"`{estimator}` at {_pos_label(pos)}: " + EDGE_NOTE[edge].format(n=n, m=len(items)))
    if any(" ↑" in m or " ↓" in m for m in marks.values()):
        notes.append("widen `measure.lr_grid` or set `measure.lr_grid: auto`, which brackets the optimum")
    return marks, notes


def _layer_cosine_table(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    selected = [r for r in rows if r["metric"] == "cosine" and r["layer"] != "all"]
    if not selected:
        return []
    layers = list(dict.fromkeys(r["layer"] for r in selected))
    body = []
    for estimator, items in group(selected, lambda r: r["estimator"]).items():
        by_layer = group(items, lambda r: r["layer"])
        body.append([f"`{estimator}`"] + [format_mean_se(*mean_se([r["value"] for r in by_layer.get(l, [])])[:2]) for l in layers])
    return ["### Cosine with the reference per layer (all dims pooled)", "", markdown_table(["estimator"] + layers, body), ""]


TRAJECTORY_TITLES = {
    "trajectory_final_loss": "Loss at the end of the budget (probe batch, the objective minimised)",
    "trajectory_final_heldout": "Loss at the end of the budget on a held-out batch",
    "trajectory_final_sample_loss": "SNES: loss at a sample of the final search distribution (vs μ above)",
    "trajectory_final_sigma": "SNES: mean σ of the final search distribution",
    "trajectory_steps": "Steps taken within the budget",
    "trajectory_seconds": "Seconds for the whole budget",
}


def _trajectory_section(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any], path: Path, colours: Mapping[str, Any]) -> List[str]:
    """Loss vs loss evaluations per method (one panel per position), and the end-of-budget tables."""
    curves = [r for r in rows if r["metric"] in ("trajectory_loss", "trajectory_heldout")]
    if not curves:
        return []
    budget = (config.get("trajectory") or {}).get("evaluations")
    lines = [
        f"### Loss curves under a budget of {budget} loss evaluations per method",
        "",
        "Each method starts from the unit's weights and steps until it has used the budget (an STE step counts "
        "one evaluation, its backward pass is extra; NES/SNES one per member; CDG 2P + 1). Solid: the probe batch "
        "being minimised; dashed: a held-out batch. Means over inits × batches.",
        "",
    ]
    plt = _pyplot()
    positions = _positions(curves)
    fig, axes = _panel_grid(plt, len(positions))
    for ax, pos in zip(axes.flat, positions):
        for (label, metric), items in group([r for r in curves if r["pos"] == pos], lambda r: (r["estimator"], r["metric"])).items():
            by_x = group(items, lambda r: r["evaluations"])
            xs = sorted(by_x)
            ys = [mean_se([r["value"] for r in by_x[x]])[0] for x in xs]
            heldout = metric == "trajectory_heldout"
            ax.plot(xs, ys, color=colours.get(label), ls="--" if heldout else "-", lw=1.0 if heldout else 1.6,
                    label=None if heldout else label)
        ax.set_yscale("log")
        ax.set_title(_pos_label(pos))
        ax.set_xlabel("loss evaluations")
        ax.set_ylabel("loss")
    _finish(plt, fig, axes, len(positions), path)
    lines += [f"![loss vs loss evaluations](plots/{path.name})", ""]
    for metric, title in TRAJECTORY_TITLES.items():
        table = _table(rows, metric)
        if table:
            lines += [f"#### {title}", "", table, ""]
    return lines


def _normalized_difference(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    selected = [r for r in rows if r["metric"] == "normalized_difference"]
    if not selected:
        return []
    return [
        "### Normalised difference (L_a − L_b) / L_a of the best losses (positive: b reaches lower loss)",
        "",
        _table(selected, "normalized_difference"),
        "",
    ]


def _plot_differences(by_condition: Mapping[Any, Sequence[Mapping[str, Any]]], path: Path, colours: Mapping[str, Any]):
    """The normalised differences vs dim, one panel per condition, a shared y axis: one figure for the run."""
    panels = [(c, rows) for c, rows in by_condition.items() if rows]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(len(panels), 2 if len(panels) == 4 else 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False, sharey=True)
    for ax, (condition, rows) in zip(axes.flat, panels):
        _errorbars(ax, rows, "normalized_difference", colours)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(", ".join(f"{k} = {v}" for k, v in condition) or "normalised difference", fontsize=9)
        ax.set_ylabel("(L_a − L_b) / L_a")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(rows: Sequence[Mapping[str, Any]], path: Path, colours: Mapping[str, Any], xlabel: str):
    curves = [r for r in rows if r["metric"] == "decrease"]
    if not curves:
        return None
    plt = _pyplot()
    dims = _positions(curves)
    fig, axes = _panel_grid(plt, len(dims))
    for ax, dim in zip(axes.flat, dims):
        top = 0.0
        for estimator, items in group([r for r in curves if r["pos"] == dim], lambda r: r["estimator"]).items():
            by_lr = group(items, lambda r: r["lr"])
            lrs = sorted(by_lr)
            means = [mean_se([r["value"] for r in by_lr[lr]])[0] for lr in lrs]
            top = max([top] + [m for m in means if math.isfinite(m)])
            ax.plot(lrs, means, label=estimator, color=colours.get(estimator))
        if top > 0:  # past the best lr the loss explodes; keep the informative part in view
            ax.set_ylim(bottom=-0.5 * top, top=1.1 * top)
        ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(_pos_label(dim))
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("loss decrease")
    _finish(plt, fig, axes, len(dims), path)
    return path


def _panel_grid(plt: Any, n: int) -> Tuple[Any, Any]:
    """A figure of ``n`` panels, three per row."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    return plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)


def _finish(plt: Any, fig: Any, axes: Any, used: int, path: Path) -> None:
    """Blank the unused panels, a legend in the first, save and close."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errorbars(ax: Any, selected: Sequence[Mapping[str, Any]], metric: str, colours: Mapping[str, Any]) -> None:
    """Mean ± SE of ``metric`` vs dim, one line per estimator, on ``ax``."""
    for estimator, items in group([r for r in selected if r["metric"] == metric], lambda r: r["estimator"]).items():
        by_dim = group(items, lambda r: r["dim"])
        dims = sorted(by_dim)
        stats = [mean_se([r["value"] for r in by_dim[d]]) for d in dims]
        ax.errorbar(dims, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats], marker="o",
                    capsize=3, label=estimator, color=colours.get(estimator))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dim")


def _plot_vs_dim(rows: Sequence[Mapping[str, Any]], metric: str, path: Path, colours: Mapping[str, Any]):
    selected = [r for r in rows if r["metric"] == metric and r["layer"] == "all"]
    if not selected:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _errorbars(ax, selected, metric, colours)
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_cosine_by_condition(records: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path, colours: Mapping[str, Any]):
    selected = [r for r in records if r["metric"] == "cosine" and r["layer"] == "all"]
    return _cosine_bars(selected, lambda r: "\n".join(f"{k}={r.get(k)}" for k in keys), path, colours)


def _plot_cosine_by_layer(rows: Sequence[Mapping[str, Any]], path: Path, colours: Mapping[str, Any]):
    selected = [r for r in rows if r["metric"] == "cosine" and r["layer"] != "all"]
    return _cosine_bars(selected, lambda r: r["layer"], path, colours)


def _cosine_bars(
    selected: Sequence[Mapping[str, Any]], category, path: Path, colours: Mapping[str, Any], ylabel: str = "cosine with reference"
):
    """Grouped bars: mean value ± SE per category (x) and estimator (bar colour).

    Long category names (conditions, layer names) are drawn one key per line, and
    each category gets the width of its longest line, so tick labels never overlap.
    """
    if not selected:
        return None
    plt = _pyplot()
    categories = list(dict.fromkeys(category(r) for r in selected))
    estimators = list(dict.fromkeys(r["estimator"] for r in selected))
    width = 0.8 / max(len(estimators), 1)
    longest = max(len(line) for c in categories for line in str(c).split("\n"))
    # ~0.075 inch per character at fontsize 8, plus a margin; the axes take ~85% of the figure.
    per_category = max(1.5, 0.075 * longest + 0.3) / 0.85
    fig, ax = plt.subplots(figsize=(min(40, max(6, per_category * len(categories))), 4.5))
    for i, estimator in enumerate(estimators):
        stats = [
            mean_se([r["value"] for r in selected if r["estimator"] == estimator and category(r) == c]) for c in categories
        ]
        errors = [0 if math.isnan(se) else se for _, se, _ in stats]
        ax.bar([j + i * width for j in range(len(categories))], [m for m, _, _ in stats], width, yerr=errors,
               label=estimator, capsize=2, color=colours.get(estimator))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _network_evidence(
    config: Mapping[str, Any], meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]], run_dir: Path
) -> List[str]:
    probe = config.get("probe", {})
    network = config.get("network", {})
    stats = config.get("stats", {}) or {}
    units = {r["unit"] for r in records}
    layers = list(dict.fromkeys(r["probed_layer"] for r in records if r.get("probed_layer")))
    measure = config.get("measure", {})
    grid = measure.get("lr_grid", {})
    swept = (probe.get("sweep") or {}).get("pretrain_epochs")
    if network.get("checkpoint"):
        origin = f"the trained weights of `{network.get('checkpoint')}`"
    elif swept:
        origin = (f"seed {config.get('seed')} + init, pretrained here for {swept} epochs "
                  f"(Adam, lr {network.get('pretrain_lr')}; 0 = at initialisation)")
    elif network.get("pretrain_epochs"):
        origin = (f"seed {config.get('seed')} + init, pretrained here for {network.get('pretrain_epochs')} epochs "
                  f"(Adam, lr {network.get('pretrain_lr')})")
    else:
        origin = f"seed {config.get('seed')} + init, at initialisation"
    size = network.get("image_size")
    lines = [
        f"Network: `{network.get('model')}` on `{network.get('dataset')}` ({network.get('split')} split, "
        f"{'resized to ' + str(size) + 'x' + str(size) if size else 'native size'}), weights: {origin}. "
        f"Loss: mean cross-entropy on fixed batches of {network.get('batch_size')} images, BatchNorm with batch statistics. "
        f"Layers probed one at a time: {', '.join(f'`{l}`' for l in layers)}. "
        f"Means ± standard errors over {probe.get('inits')} inits × {probe.get('batches')} batches; "
        f"{len(units)} units measured"
        + (f" (the part `probe.select = {probe.get('select')}` of a larger grid)" if probe.get("select") else "") + ".",
        "",
        f"Directions are normalised `{measure.get('normalize')}`; the lr grid has {grid.get('num')} {grid.get('scale')}-spaced "
        f"points in [{grid.get('min')}, {grid.get('max')}]. Reference for cosines: `{measure.get('reference')}`"
        " (on a random coordinate subset its sampling standard error is reported). A layer with no sign activation "
        "after it (e.g. the last binary conv before a float head) gets the same gradient from every surrogate.",
        "",
        f"{describe_code(meta)}, torch {meta.get('torch')}, "
        f"{meta.get('machine')}; started {meta.get('started')}."
        + (f" STE statistics: {stats.get('batches')} mini-batches of {stats.get('batch_size')}." if stats.get("batches") else ""),
        "",
    ]
    return lines


def _stats_section(rows: Sequence[Mapping[str, Any]], run_dir: Path, suffix: str, colours: Mapping[str, Any]) -> List[str]:
    """Tables and a bar plot of the STE gradient statistics over mini-batches."""
    selected = [r for r in rows if str(r["metric"]).startswith("ste_")]
    if not selected:
        return []
    lines = ["### STE gradient statistics over mini-batches", ""]
    for metric, title in STATS_TITLES.items():
        table = _table(selected, metric)
        if table:
            lines += [f"#### {title}", "", table, ""]
    plot = _cosine_bars(
        [r for r in selected if r["metric"] == "ste_snr"],
        lambda r: r["pos"],
        run_dir / "plots" / f"ste_snr{'_' + suffix if suffix else ''}.png",
        colours,
        ylabel="SNR of one mini-batch STE gradient",
    )
    if plot:
        lines += [f"![STE signal-to-noise ratio by layer](plots/{plot.name})", ""]
    return lines
