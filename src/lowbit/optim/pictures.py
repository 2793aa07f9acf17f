"""Weight pictures: a layer's weights as one grey image, to compare optimizers.

The notes (section 3.1) draw LeNet's ``conv3`` trained with DessiLBI and
with SGD side by side: black is zero, so a DessiLBI layer shows mostly black
rows (filters that never entered the support) where the SGD layer is grey
everywhere. :func:`weight_picture` lays a weight out as a 2-D array;
:func:`plot_weight_pictures` draws several next to each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch

__all__ = ["plot_weight_pictures", "weight_picture"]


def weight_picture(weight: torch.Tensor, pad: int = 0) -> np.ndarray:
    """A 2-D float array of ``weight``: rows are output filters/units, columns inputs.

    * conv weight (out, in, kh, kw): an out × in grid of kh × kw tiles, shape
      (out·kh + pad·(out−1), in·kw + pad·(in−1)); tile (o, i) is
      ``weight[o, i]``; ``pad`` NaN rows/columns separate the tiles;
    * linear weight (out, in): as is;
    * 1-D (n,): one row (1, n); other dims: (out, rest) flattened.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    w = weight.detach().to("cpu", torch.float64).numpy()
    if w.ndim == 0:
        return w.reshape(1, 1)
    if w.ndim == 1:
        return w.reshape(1, -1)
    if w.ndim != 4:
        return w.reshape(w.shape[0], -1)
    out, inp, kh, kw = w.shape
    if pad == 0:
        return w.transpose(0, 2, 1, 3).reshape(out * kh, inp * kw)  # (out, kh, in, kw) -> grid
    picture = np.full((out * kh + pad * (out - 1), inp * kw + pad * (inp - 1)), np.nan)
    for o in range(out):
        for i in range(inp):
            r, c = o * (kh + pad), i * (kw + pad)
            picture[r : r + kh, c : c + kw] = w[o, i]
    return picture


def plot_weight_pictures(
    weights: Mapping[str, torch.Tensor],
    path: Union[str, Path],
    *,
    absolute: bool = True,
    shared_scale: bool = True,
    pad: int = 0,
    title: str = "",
) -> Path:
    """Draw ``{label: weight}`` side by side (one panel each) and save to ``path`` (PNG, PDF, ... by suffix).

    ``absolute``: show |W| in grey, black = 0 (the notes' pictures); else a
    diverging map centred at 0. ``shared_scale``: one colour scale for all
    panels (fair comparison) instead of one per panel. Uses matplotlib's
    Agg canvas through ``matplotlib.figure.Figure``, not pyplot, so no global
    backend is changed. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not weights:
        raise ValueError("weights must hold at least one {label: weight}, got {}")
    pictures = {label: weight_picture(w, pad) for label, w in weights.items()}
    if absolute:
        pictures = {k: np.abs(v) for k, v in pictures.items()}
    limit = max(float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 0.0 for v in pictures.values()) or 1.0
    fig = Figure(figsize=(4.0 * len(pictures), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(pictures), squeeze=False)[0]
    for ax, (label, picture) in zip(axes, pictures.items()):
        own = (float(np.nanmax(np.abs(picture))) if np.isfinite(picture).any() else 0.0) or 1.0
        vmax = limit if shared_scale else own
        if absolute:
            image = ax.imshow(picture, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="auto")
        else:
            image = ax.imshow(picture, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
        zero = float(np.mean(picture[np.isfinite(picture)] == 0)) if np.isfinite(picture).any() else float("nan")
        ax.set_title(f"{label}\n{picture.shape[0]}×{picture.shape[1]}, {100 * zero:.1f}% zero")
        ax.set_xlabel("inputs")
        ax.set_ylabel("filters / units")
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
