"""The analyses' figures (matplotlib, Agg canvas; pyplot's global state is never touched).

Each function takes plain arrays already reduced from the records and writes
one PNG; the reduction from records lives in :mod:`lowbit.analysis.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "plot_attributions",
    "plot_bands",
    "plot_contour",
    "plot_interpolation",
    "plot_surface",
    "plot_training_curves",
]

PathLike = Union[str, Path]
COLORS = {"no BN": "tab:blue", "BN": "tab:red"}
_FALLBACK = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown"]


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _color(label: str, i: int) -> str:
    return COLORS.get(label, _FALLBACK[i % len(_FALLBACK)])


Band = Tuple[Sequence[float], Sequence[float], Sequence[float]]  # (steps, low, high)


def plot_bands(
    panels: Sequence[Tuple[str, str, Mapping[str, Band]]],
    path: PathLike,
    *,
    log_y: Sequence[bool] = (),
    title: str = "",
) -> Path:
    """One panel per ``(title, y label, {model label: (steps, low, high)})``; min–max bands per step.

    Santurkar et al.'s Figure 4 style: ``fill_between(low, high)`` per model,
    with the band's edges drawn thin; a band whose low equals its high (e.g. β,
    a single max per step) is drawn as a line.
    """
    fig, axes = _figure(5.0 * len(panels), 3.8, ncols=len(panels))
    for j, (ax, (panel_title, ylabel, bands)) in enumerate(zip(axes[0], panels)):
        for i, (label, (steps, low, high)) in enumerate(bands.items()):
            steps, low, high = (np.asarray(v, dtype=float) for v in (steps, low, high))
            color = _color(label, i)
            if np.allclose(low, high, equal_nan=True):
                ax.plot(steps, high, color=color, lw=1.2, label=label)
            else:
                ax.fill_between(steps, low, high, color=color, alpha=0.35, lw=0, label=label)
                ax.plot(steps, low, color=color, lw=0.6)
                ax.plot(steps, high, color=color, lw=0.6)
        if j < len(log_y) and log_y[j]:
            ax.set_yscale("log")
        ax.set_title(panel_title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_training_curves(
    curves: Mapping[str, Tuple[Sequence[float], Sequence[float]]], path: PathLike, *, ylabel: str = "training loss", title: str = ""
) -> Path:
    """{label: (steps, values)} as lines (raw, thin) with a 10-step moving average (thick)."""
    fig, axes = _figure(6.0, 3.8)
    ax = axes[0][0]
    for i, (label, (steps, values)) in enumerate(curves.items()):
        steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
        color = _color(label, i)
        ax.plot(steps, values, color=color, lw=0.5, alpha=0.5)
        if len(values) >= 10:
            smooth = np.convolve(values, np.ones(10) / 10, mode="valid")  # (n - 9,)
            ax.plot(steps[9:], smooth, color=color, lw=1.5, label=f"{label} (10-step mean)")
        else:
            ax.plot(steps, values, color=color, lw=1.5, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _log_levels(z: np.ndarray, n: int) -> np.ndarray:
    finite = z[np.isfinite(z) & (z > 0)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo * (1 + 1e-9):
        hi = lo * 1.01 + 1e-12
    return np.geomspace(lo, hi, n)


def plot_contour(
    xs: Sequence[float],
    ys: Sequence[float],
    z: np.ndarray,
    path: PathLike,
    *,
    log_scale: bool = True,
    max_value: Optional[float] = None,
    levels: int = 30,
    title: str = "",
    label: str = "loss",
) -> Path:
    """Filled contours plus contour lines of z (R_y, R_x) over the (α, β) grid; ★ marks the centre (0, 0)."""
    from matplotlib.colors import LogNorm

    z = np.asarray(z, dtype=float)
    if max_value is not None:
        z = np.minimum(z, max_value)
    fig, axes = _figure(5.6, 4.6)
    ax = axes[0][0]
    log_scale = log_scale and np.nanmin(z) > 0
    if log_scale:
        lv = _log_levels(z, levels)
        filled = ax.contourf(xs, ys, z, levels=lv, norm=LogNorm(vmin=lv[0], vmax=lv[-1]), cmap="viridis")
        ax.contour(xs, ys, z, levels=lv[::3], colors="white", linewidths=0.5, alpha=0.7)
        ticks = lv[:: max(1, len(lv) // 6)]
    else:
        filled = ax.contourf(xs, ys, z, levels=levels, cmap="viridis")
        ax.contour(xs, ys, z, levels=max(2, levels // 3), colors="white", linewidths=0.5, alpha=0.7)
        ticks = None
    bar = fig.colorbar(filled, ax=ax, ticks=ticks, format="%.3g", label=label + (" (log scale)" if log_scale else ""))
    bar.minorticks_off()
    ax.plot([0], [0], marker="*", color="red", markersize=12, label="trained weights")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_surface(
    xs: Sequence[float],
    ys: Sequence[float],
    z: np.ndarray,
    path: PathLike,
    *,
    log_scale: bool = True,
    max_value: Optional[float] = None,
    title: str = "",
    label: str = "loss",
) -> Path:
    """A 3-D surface of z (R_y, R_x) over (α, β) (``mpl_toolkits.mplot3d``); height log10(z) if ``log_scale``."""
    z = np.asarray(z, dtype=float)
    if max_value is not None:
        z = np.minimum(z, max_value)
    height = np.log10(np.maximum(z, 1e-12)) if log_scale else z
    fig, axes = _figure(6.4, 5.2, subplot_kw={"projection": "3d"})
    ax = axes[0][0]
    xx, yy = np.meshgrid(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))  # (R_y, R_x) each
    ax.plot_surface(xx, yy, height, cmap="viridis", linewidth=0, antialiased=True, rcount=200, ccount=200)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel(f"log10 {label}" if log_scale else label)
    ax.view_init(elev=35, azim=-60)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_interpolation(
    curves: Mapping[str, Tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: PathLike,
    *,
    title: str = "",
    start_label: str = "start",
    end_label: str = "end",
) -> Path:
    """{split: (t, loss, accuracy)}: loss (log, left) and accuracy (right) along θ(t) = (1−t)·start + t·end."""
    fig, axes = _figure(10.0, 3.8, ncols=2)
    loss_ax, acc_ax = axes[0]
    for i, (label, (t, loss, acc)) in enumerate(curves.items()):
        color = _FALLBACK[i % len(_FALLBACK)]
        loss_ax.plot(t, loss, color=color, marker=".", label=label)
        acc_ax.plot(t, acc, color=color, marker=".", label=label)
    for ax in (loss_ax, acc_ax):
        for x, name in ((0.0, start_label), (1.0, end_label)):
            ax.axvline(x, color="gray", ls="--", lw=0.8)
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_attributions(
    originals: np.ndarray,
    heatmaps: Mapping[str, np.ndarray],
    row_titles: Sequence[str],
    path: PathLike,
    *,
    title: str = "",
    clip_percentile: float = 99.0,
) -> Path:
    """One row per image: the original (uint8, (N, C, H, W)) then each method's heatmap (N, H, W).

    Heatmaps are non-negative (|attribution| reduced over channels), each
    scaled to its own ``clip_percentile`` percentile (captum's visualisation
    clips the top 1% too), dark = no attribution.
    """
    originals = np.asarray(originals)
    n = originals.shape[0]
    cols = 1 + len(heatmaps)
    fig, axes = _figure(2.3 * cols, 2.3 * n + 0.3, ncols=cols, nrows=n)
    for r in range(n):
        image = originals[r].transpose(1, 2, 0)  # (H, W, C)
        ax = axes[r][0]
        if image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image.astype(np.uint8), interpolation="nearest")
        ax.set_title(row_titles[r] if r < len(row_titles) else "", fontsize=8)
        for c, (method, maps) in enumerate(heatmaps.items(), start=1):
            heat = np.asarray(maps[r], dtype=float)
            vmax = float(np.percentile(heat, clip_percentile)) if np.isfinite(heat).any() else 1.0
            axes[r][c].imshow(heat, cmap="inferno", vmin=0.0, vmax=vmax if vmax > 0 else 1.0, interpolation="nearest")
            if r == 0:
                axes[r][c].set_title(method.replace("_", " "), fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)
