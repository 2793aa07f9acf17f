"""``report.md`` and plots of an analysis run, rebuilt from its records alone.

Each analysis writes flat CSV records (and ``summary.yaml``: timings and facts
about the source model); the functions here read them back, reduce them
(bands per step, tables of means ± standard errors) and write the plots and
the Markdown section. :func:`write_analysis_report` picks the sections from
the files present, so ``lowbit report RUN_DIR`` can rebuild any analysis run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import yaml

from lowbit.analysis import plots
from lowbit.analysis.attribution import ATTRIBUTION_FILE
from lowbit.analysis.bn_experiment import FINAL_FILE, LR_BAND_FILE, PROBES_FILE, TRAIN_FILE
from lowbit.analysis.landscape_experiment import INTERPOLATION_FILE, LANDSCAPE_FILE
from lowbit.analysis.weights import WEIGHTS_FILE
from lowbit.provenance import describe_code
from lowbit.report.tables import format_mean_se, format_number, group, markdown_table, mean_se
from lowbit.config import read_yaml_or_empty
from lowbit.runs import atomic_write_text, read_records

__all__ = [
    "SUMMARY_FILE",
    "bn_sections",
    "attribution_sections",
    "is_analysis_run",
    "landscape_sections",
    "weights_sections",
    "write_analysis_report",
]

SUMMARY_FILE = "summary.yaml"
_SECTION_FILES = {
    "bn-smoothness": PROBES_FILE,
    "landscape": LANDSCAPE_FILE,
    "attribution": ATTRIBUTION_FILE,
    "weights": WEIGHTS_FILE,
}


def _read_yaml(path: Path) -> Dict[str, Any]:
    return read_yaml_or_empty(path)  # bounded, safe YAML; {} when missing


def is_analysis_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the records of a ``lowbit analyze`` subcommand."""
    return any((Path(run_dir) / f).exists() for f in _SECTION_FILES.values())


def write_analysis_report(run_dir: Path) -> Path:
    """(Re)build ``run_dir/report.md`` and ``plots/`` from the analysis records found there."""
    run_dir = Path(run_dir)
    if not is_analysis_run(run_dir):
        raise FileNotFoundError(
            f"{str(run_dir)!r} holds no analysis records (expected one of {', '.join(_SECTION_FILES.values())})"
        )
    config = _read_yaml(run_dir / "config.yaml")
    meta = _read_yaml(run_dir / "meta.yaml")
    summary = _read_yaml(run_dir / SUMMARY_FILE)
    (run_dir / "plots").mkdir(exist_ok=True)
    lines = [f"# Analysis: {config.get('name', run_dir.name)}", ""]
    lines += _evidence(meta, summary)
    if (run_dir / PROBES_FILE).exists():
        lines += bn_sections(run_dir, config, summary)
    if (run_dir / LANDSCAPE_FILE).exists():
        lines += landscape_sections(run_dir, config, summary)
    if (run_dir / ATTRIBUTION_FILE).exists():
        lines += attribution_sections(run_dir, config, summary)
    if (run_dir / WEIGHTS_FILE).exists():
        lines += weights_sections(run_dir, config, summary)
    lines += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _evidence(meta: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    parts = [
        f"{describe_code(meta)}, torch {meta.get('torch', '?')}",
        f"machine: {meta.get('machine', '?')}, {meta.get('cpu_threads', '?')} threads",
        f"started {meta.get('started', '?')}",
    ]
    if summary.get("seconds_total") is not None:
        parts.append(f"wall time {summary['seconds_total']:.0f} s")
    return ["*" + "; ".join(parts) + ".*", ""]


def _nanmin(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else math.nan


def _nanmax(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else math.nan


# --------------------------------------------------------------------------- bn-smoothness


def _probe_bands(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, List[float]]]:
    """{model: {step, loss_lo, loss_hi, diff_lo, diff_hi, beta}} reduced over the step sizes."""
    out: Dict[str, Dict[str, List[float]]] = {}
    for model, model_rows in group(rows, lambda r: r["model"]).items():
        cols: Dict[str, List[float]] = {k: [] for k in ("step", "loss_lo", "loss_hi", "diff_lo", "diff_hi", "beta", "rel_hi")}
        for step, rs in sorted(group(model_rows, lambda r: r["step"]).items()):
            cols["step"].append(step)
            cols["loss_lo"].append(_nanmin([r["loss"] for r in rs]))
            cols["loss_hi"].append(_nanmax([r["loss"] for r in rs]))
            cols["diff_lo"].append(_nanmin([r["grad_diff"] for r in rs]))
            cols["diff_hi"].append(_nanmax([r["grad_diff"] for r in rs]))
            cols["beta"].append(_nanmax([r["ratio"] for r in rs]))
            cols["rel_hi"].append(_nanmax([r["grad_diff"] / r["grad_norm"] if r["grad_norm"] else math.nan for r in rs]))
        out[str(model)] = cols
    return out


def bn_sections(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    """The BatchNorm smoothness section: probe bands, training curves, the lr band."""
    probes = read_records(run_dir / PROBES_FILE)
    train = read_records(run_dir / TRAIN_FILE) if (run_dir / TRAIN_FILE).exists() else []
    final = {r["model"]: r for r in read_records(run_dir / FINAL_FILE)} if (run_dir / FINAL_FILE).exists() else {}
    bands = _probe_bands(probes)
    t, p, d, m = (config.get(k, {}) for k in ("train", "probe", "data", "model"))
    etas = sorted({float(r["eta_mult"]) for r in probes})
    lines = [
        "## BatchNorm and the smoothness of the loss (Santurkar et al. 2018)",
        "",
        f"{m.get('name')} (width x{m.get('width_mult')}) with and without BatchNorm, same seed ({config.get('seed')}) and batches, "
        f"{t.get('optimizer')} lr {t.get('lr')} (momentum {t.get('momentum')}), {t.get('steps')} steps of {d.get('batch_size')} "
        f"{d.get('dataset')} images ({d.get('image_size')}x{d.get('image_size')}). Every {p.get('every')} steps, on that step's batch, "
        f"in train mode with the running statistics left untouched: L(w − ηg), ‖∇L(w − ηg) − ∇L(w)‖ and "
        f"β = max_η ‖∇L(w − ηg) − ∇L(w)‖ / ‖ηg‖ (distance actually moved) for η/lr ∈ {{{', '.join(f'{e:.3g}' for e in etas)}}}.",
        "",
    ]
    path = plots.plot_bands(
        [
            ("(a) loss landscape", "L(w − ηg)", {k: (b["step"], b["loss_lo"], b["loss_hi"]) for k, b in bands.items()}),
            ("(b) gradient predictiveness", "‖∇L(w − ηg) − ∇L(w)‖", {k: (b["step"], b["diff_lo"], b["diff_hi"]) for k, b in bands.items()}),
            ("(c) effective β-smoothness", "max ‖Δ∇L‖ / ‖Δw‖", {k: (b["step"], b["beta"], b["beta"]) for k, b in bands.items()}),
        ],
        run_dir / "plots" / "bn_probes.png",
        log_y=(True, True, True),
        title="Variation along the gradient direction, per training step (band: min–max over η)",
    )
    lines += [f"![probe bands](plots/{path.name})", ""]

    header = [
        "model", "test acc", "final train loss", "loss band width", "max ‖Δ∇L‖", "max ‖Δ∇L‖ / ‖∇L‖", "β mean", "β max",
        "diverged at", "seconds",
    ]  # fmt: skip
    rows = []
    for model, b in bands.items():
        width = [hi - lo for lo, hi in zip(b["loss_lo"], b["loss_hi"]) if math.isfinite(hi - lo)]
        beta = [v for v in b["beta"] if math.isfinite(v)]
        tr = [r["loss"] for r in train if r["model"] == model]
        f = final.get(model, {})
        rows.append(
            [
                model,
                format_number(f.get("test_acc", math.nan)),
                format_number(float(np.mean(tr[-10:])) if tr else math.nan),
                format_mean_se(*mean_se(width)[:2]),
                format_mean_se(*mean_se([v for v in b["diff_hi"] if math.isfinite(v)])[:2]),
                format_mean_se(*mean_se([v for v in b["rel_hi"] if math.isfinite(v)])[:2]),
                format_mean_se(*mean_se(beta)[:2]),
                format_number(max(beta) if beta else math.nan),
                "–" if f.get("diverged_step") is None else str(f.get("diverged_step")),
                format_number(f.get("seconds", math.nan)),
            ]
        )
    lines += [
        f"Means ± standard errors over the {len(next(iter(bands.values()))['step']) if bands else 0} probed steps of the "
        "per-step band width (max − min of L over η), the largest gradient change, the same relative to ‖∇L(w)‖ "
        "(scale-free) and β; final train loss: mean of the last 10 steps; test accuracy on the full test split; "
        "seconds: training plus probes.",
        "",
        markdown_table(header, rows),
        "",
    ]
    if "no BN" in bands and "BN" in bands:
        ratio = _ratio_of_means(bands["no BN"]["beta"], bands["BN"]["beta"])
        lines += [f"Mean β without BN / with BN: **{format_number(ratio)}** (> 1: BatchNorm makes the loss smoother along the gradient).", ""]
    if train:
        curves = {model: ([r["step"] for r in rs], [r["loss"] for r in rs]) for model, rs in group(train, lambda r: r["model"]).items()}
        path = plots.plot_training_curves(curves, run_dir / "plots" / "bn_training.png", title="training loss of the probed runs")
        lines += [f"![training loss](plots/{path.name})", ""]
    if (run_dir / LR_BAND_FILE).exists():
        lines += _lr_band_section(run_dir, config)
    return lines


def _ratio_of_means(a: Sequence[float], b: Sequence[float]) -> float:
    a = [v for v in a if math.isfinite(v)]
    b = [v for v in b if math.isfinite(v)]
    if not a or not b or np.mean(b) == 0:
        return math.nan
    return float(np.mean(a) / np.mean(b))


def _lr_band_section(run_dir: Path, config: Mapping[str, Any]) -> List[str]:
    rows = read_records(run_dir / LR_BAND_FILE)
    if not rows:
        return []
    b = config.get("lr_band", {})
    lrs = sorted({float(r["lr"]) for r in rows}, reverse=True)
    loss_bands, change_bands, table = {}, {}, []
    for model, model_rows in group(rows, lambda r: r["model"]).items():
        by_step = sorted(group(model_rows, lambda r: r["step"]).items())
        steps = [s for s, _ in by_step]
        lo = [_nanmin([r["loss"] for r in rs]) for _, rs in by_step]
        hi = [_nanmax([r["loss"] for r in rs]) for _, rs in by_step]
        loss_bands[model] = (steps, lo, hi)
        change_bands[model] = (
            steps,
            [_nanmin([r["grad_change"] for r in rs]) for _, rs in by_step],
            [_nanmax([r["grad_change"] for r in rs]) for _, rs in by_step],
        )
        finals = []
        for lr in lrs:
            losses = [r["loss"] for r in model_rows if float(r["lr"]) == lr]
            finite = [v for v in losses[-10:] if v is not None and math.isfinite(v)]
            finals.append(format_number(float(np.mean(finite))) if finite and len(finite) == len(losses[-10:]) else "diverged")
        widths = [h - l for l, h in zip(lo, hi) if math.isfinite(h - l)]
        table.append([model, format_mean_se(*mean_se(widths)[:2])] + finals)
    path = plots.plot_bands(
        [
            ("training loss across learning rates", "training loss", loss_bands),
            ("‖g_t − g_{t−1}‖ across learning rates", "gradient change between steps", change_bands),
        ],
        run_dir / "plots" / "bn_lr_band.png",
        log_y=(False, True),
        title=f"band: min–max over lr ∈ {{{', '.join(format_number(v) for v in lrs)}}} ({b.get('optimizer')})",
    )
    return [
        "### Loss band across learning rates (the notes' variant)",
        "",
        f"Each model trained separately with {b.get('optimizer')} at lr ∈ {{{', '.join(format_number(v) for v in lrs)}}} "
        f"for {b.get('steps')} steps (same init and batches); the band is the min–max training loss over the lrs at each step. "
        "The right panel is the notes' consecutive-step gradient change ‖g_t − g_{t−1}‖, which also contains batch-to-batch noise.",
        "",
        f"![lr band](plots/{path.name})",
        "",
        markdown_table(["model", "band width (mean ± se over steps)"] + [f"final loss lr={format_number(v)}" for v in lrs], table),
        "",
    ]


# --------------------------------------------------------------------------- landscape


def landscape_sections(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    """The 2-D landscape (contour + surface) and the 1-D interpolation."""
    rows = read_records(run_dir / LANDSCAPE_FILE)
    g, dcfg, e = config.get("grid", {}), config.get("directions", {}), config.get("eval", {})
    res = int(max(r["i"] for r in rows)) + 1
    xs = np.array(sorted({float(r["alpha"]) for r in rows}))
    ys = np.array(sorted({float(r["beta"]) for r in rows}))
    loss = np.full((len(ys), len(xs)), np.nan)  # (R_y, R_x)
    acc = np.full_like(loss, np.nan)
    for r in rows:
        loss[int(r["j"]), int(r["i"])] = r["loss"]
        acc[int(r["j"]), int(r["i"])] = r["acc"]
    log_scale = bool(config.get("log_scale", True)) and np.nanmin(loss) > 0
    max_loss = config.get("max_loss")
    src = summary.get("source", {})
    title = f"{src.get('model', '?')} on {src.get('dataset', '?')} ({e.get('split')} loss)"
    contour = plots.plot_contour(xs, ys, loss, run_dir / "plots" / "landscape_contour.png", log_scale=log_scale, max_value=max_loss, title=title)
    surface = plots.plot_surface(xs, ys, loss, run_dir / "plots" / "landscape_surface.png", log_scale=log_scale, max_value=max_loss, title=title)
    acc_plot = plots.plot_contour(
        xs, ys, acc, run_dir / "plots" / "landscape_accuracy.png", log_scale=False, title=title.replace("loss", "accuracy"), label="accuracy"
    )
    ci, cj = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
    centre = float(loss[cj, ci])
    lines = [
        "## 2-D loss landscape (Li et al. 2018)",
        "",
        f"Model: `{src.get('model')}` ({src.get('num_params', 0):,} parameters) from `{src.get('checkpoint')}`. "
        f"f(α, β) = L(θ + αδ + βη) on the first {summary.get('num_images')} {e.get('split')} images, {res}×{res} grid over "
        f"α ∈ {g.get('x_range')}, β ∈ {g.get('y_range')}; directions: Gaussian (seed {dcfg.get('seed')}), "
        f"{dcfg.get('norm')}-normalised, 1-D parameters (biases, BN): {dcfg.get('one_d')}; BatchNorm statistics: {e.get('bn')}. "
        f"‖θ‖ = {format_number(summary.get('theta_norm', math.nan))}, ‖δ‖ = {format_number(summary.get('d1_norm', math.nan))}, "
        f"‖η‖ = {format_number(summary.get('d2_norm', math.nan))}, cos(δ, η) = {format_number(summary.get('cos_d1_d2', math.nan))}. "
        f"{summary.get('num_points')} points in {format_number(summary.get('seconds_grid', math.nan))} s.",
        "",
        f"![contour](plots/{contour.name}) ![surface](plots/{surface.name})",
        "",
        f"![accuracy](plots/{acc_plot.name})",
        "",
        markdown_table(
            ["loss at θ", "acc at θ", "min loss", "max loss", "median loss", "grid share with loss < L(θ) + 0.1"],
            [
                [
                    format_number(centre),
                    format_number(float(acc[cj, ci])),
                    format_number(float(np.nanmin(loss))),
                    format_number(float(np.nanmax(loss))),
                    format_number(float(np.nanmedian(loss))),
                    format_number(float(np.nanmean(loss < centre + 0.1))),
                ]
            ],
        ),
        "",
    ]
    if (run_dir / INTERPOLATION_FILE).exists():
        lines += _interpolation_section(run_dir, config, summary)
    return lines


def _interpolation_section(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    rows = read_records(run_dir / INTERPOLATION_FILE)
    if not rows:
        return []
    start, end = rows[0]["start"], rows[0]["end"]
    curves, table = {}, []
    for split, rs in group(rows, lambda r: r["split"]).items():
        rs = sorted(rs, key=lambda r: r["t"])
        t = [r["t"] for r in rs]
        curves[split] = (t, [r["loss"] for r in rs], [r["acc"] for r in rs])
        inside = [r for r in rs if 0.0 <= r["t"] <= 1.0]
        at = {r["t"]: r for r in inside}
        losses = [r["loss"] for r in inside]
        monotone = all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))
        barrier = max(losses) - max(at.get(0.0, inside[0])["loss"], at.get(1.0, inside[-1])["loss"])
        table.append(
            [
                split,
                format_number(at.get(0.0, inside[0])["loss"]),
                format_number(at.get(1.0, inside[-1])["loss"]),
                format_number(at.get(1.0, inside[-1])["acc"]),
                format_number(max(0.0, barrier)),
                "yes" if monotone else "no",
            ]
        )
    path = plots.plot_interpolation(
        curves, run_dir / "plots" / "interpolation.png", title=f"θ(t) = (1−t)·{start} + t·{end}", start_label=start, end_label=end
    )
    return [
        "### 1-D interpolation (Goodfellow et al. 2015)",
        "",
        f"θ(t) = (1 − t)·θ_{start} + t·θ_{end}, {len(rows) // max(1, len(curves))} values of t per split; "
        f"‖θ_{end} − θ_{start}‖ = {format_number(summary.get('distance_start_end', math.nan))}. "
        "\"init\" is the run's initial weights, rebuilt from its seed. Barrier: the highest loss on 0 ≤ t ≤ 1 above the higher end.",
        "",
        f"![interpolation](plots/{path.name})",
        "",
        markdown_table(["split", f"loss at {start} (t=0)", f"loss at {end} (t=1)", "acc at t=1", "barrier", "monotone on [0, 1]"], table),
        "",
    ]


# --------------------------------------------------------------------------- attribution


def attribution_sections(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    """The attribution figure (from ``attribution.pt``) and the per-image table."""
    import torch

    rows = read_records(run_dir / ATTRIBUTION_FILE)
    src = summary.get("source", {})
    lines = [
        "## Attributions (captum)",
        "",
        f"Model `{src.get('model')}` from `{src.get('checkpoint')}`; {config.get('split')} images {config.get('indices')}; "
        f"the explained class: the {config.get('target')} one. Heatmaps: max over channels of |attribution|, each clipped at its 99th "
        f"percentile. Integrated gradients: {config.get('ig_steps')} steps from a {config.get('ig_baseline')} baseline; "
        "its delta is the completeness gap Σ IG − (S_c(x) − S_c(x')).",
        "",
    ]
    pt = run_dir / "attribution.pt"
    if pt.exists():
        saved = torch.load(pt, map_location="cpu", weights_only=True)
        by_index = {(r["index"]): r for r in rows}
        titles = [
            f"#{i}: label {by_index[i]['label']}, pred {by_index[i]['pred']} ({by_index[i]['prob_target']:.2f})" for i in saved["indices"]
        ]
        path = plots.plot_attributions(
            saved["originals"].numpy(), {m: h.numpy() for m, h in saved["heatmaps"].items()}, titles, run_dir / "plots" / "attributions.png"
        )
        lines += [f"![attributions](plots/{path.name})", ""]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table = []
    for index, rs in group(rows, lambda r: r["index"]).items():
        first = rs[0]
        by_method = {r["method"]: r for r in rs}
        cells = [str(index), str(first["label"]), str(first["pred"]), format_number(first["prob_target"])]
        cells += [format_number(by_method[m]["top10_share"]) if m in by_method else "–" for m in methods]
        ig = by_method.get("integrated_gradients")
        cells.append(format_number(ig["ig_delta"]) if ig and ig.get("ig_delta") is not None else "–")
        table.append(cells)
    lines += [
        "Share of the total |attribution| held by the top 10% of input values (1.0 = concentrated, 0.1 = uniform):",
        "",
        markdown_table(["image", "label", "pred", "p(target)"] + [f"top-10% share: {m}" for m in methods] + ["IG delta"], table),
        "",
    ]
    return lines


# --------------------------------------------------------------------------- weights


def weights_sections(run_dir: Path, config: Mapping[str, Any], summary: Mapping[str, Any]) -> List[str]:
    """Weight pictures and the numbers behind them."""
    rows = read_records(run_dir / WEIGHTS_FILE)
    lines = [
        "## Weight pictures",
        "",
        "Rows are filters (output units), columns inputs; a conv weight (out, in, kh, kw) is an out × in grid of kh × kw tiles "
        f"({'|W|, black = 0' if config.get('absolute', True) else 'W, diverging colours'}; "
        f"{'one colour scale for all models' if config.get('shared_scale', True) else 'one colour scale per model'}). "
        "Drawn by `lowbit.optim.plot_weight_pictures`.",
        "",
    ]
    for layer, rs in group(rows, lambda r: r["layer"]).items():
        safe = str(layer).replace(".", "_").replace("/", "_")
        lines += [f"### {layer}", "", f"![weights {layer}](plots/weights_{safe}.png)", ""]
        lines += [
            markdown_table(
                ["model", "optimizer", "lr", "test acc", "shape", "zero weights", "zero filters", "‖W‖", "mean \\|w\\|"],
                [
                    [
                        r["label"], r["optimizer"], format_number(r["lr"]), format_number(r["test_acc"]), r["shape"],
                        format_number(r["frac_zero"]), format_number(r["frac_zero_filters"]), format_number(r["l2"]),
                        format_number(r["mean_abs"]),
                    ]
                    for r in rs
                ],  # fmt: skip
            ),
            "",
        ]
    return lines
