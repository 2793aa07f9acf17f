"""The flip ratio of binary layers (Larq's ``FlipRatio``): how many latent weights change sign per step.

For a binary layer l with n_l latent weights and an epoch of S optimizer steps,

    flip_ratio/l = (1 / S) sum_{s=1..S} #{i : sign(W_i after step s) != sign(W_i before step s)} / n_l

the mean over the epoch's steps of the share of weights whose sign flipped
(sign(0) = +1, the binary layers' convention). ``flip_ratio`` without a layer
is the same over all binary weights together (weighted by layer size). A high
ratio late in training means the binary weights never settle; a ratio of 0 from
the start, frozen ("starved") weights. Larq's metric skips the first step of
each epoch; this one counts every step.

:class:`FlipRatio` keeps the signs after the last step and integer counts, so a
run interrupted mid-epoch resumes with the same numbers (its state goes in the
checkpoint). :func:`flip_ratio_section` draws ``plots/flip_ratio.png`` for the
report from ``metrics.csv`` alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

PREFIX = "flip_ratio"


class FlipRatio:
    """Counts sign flips of every binary layer's latent weights; call :meth:`update` after each optimizer step."""

    def __init__(self, model: nn.Module, allow_empty: bool = False) -> None:
        self.model = model
        self.layers: List[Tuple[str, nn.Module]] = []
        self._signs: List[torch.Tensor] = []
        self._flips: List[torch.Tensor] = []
        self.steps = 0
        self.track_new_layers()
        if not self.layers and not allow_empty:
            raise ValueError("the model has no binary layer whose flip ratio could be tracked (run.flip_ratio)")

    def track_new_layers(self) -> List[str]:
        """Count the layers that became binary since the last call too (Real-to-Binary's stage 2); their names.

        Call it between epochs (after :meth:`epoch_columns`), so that every layer's ratio has
        the same number of steps: a new layer's signs are taken now, its count starts at 0.
        """
        from lowbit.nn import binary_layers

        known = {id(layer) for _, layer in self.layers}
        new = [(name, layer) for name, layer in binary_layers(self.model) if id(layer) not in known]
        for name, layer in new:
            self.layers.append((name, layer))
            self._signs.append(layer.weight.detach() >= 0)
            self._flips.append(torch.zeros((), dtype=torch.int64, device=layer.weight.device))
        return [name for name, _ in new]

    def _current_signs(self) -> List[torch.Tensor]:
        return [layer.weight.detach() >= 0 for _, layer in self.layers]  # sign(0) = +1

    @torch.no_grad()
    def update(self) -> None:
        """Count the flips since the previous call (or since construction / ``load_state_dict``)."""
        signs = self._current_signs()
        for i, (before, after) in enumerate(zip(self._signs, signs)):
            self._flips[i] += (before != after).sum()  # on the weights' device: no sync per step
        self._signs = signs
        self.steps += 1

    def epoch_columns(self) -> Dict[str, float]:
        """``{"flip_ratio": ..., "flip_ratio/<layer>": ...}`` for the steps since the last call; then resets."""
        if self.steps == 0 or not self.layers:
            self.steps = 0
            return {}
        counts = [int(f) for f in self._flips]
        sizes = [layer.weight.numel() for _, layer in self.layers]
        columns = {PREFIX: sum(counts) / (sum(sizes) * self.steps)}
        for (name, _), count, size in zip(self.layers, counts, sizes):
            columns[f"{PREFIX}/{name}"] = count / (size * self.steps)
        self._flips = [torch.zeros_like(f) for f in self._flips]
        self.steps = 0
        return columns

    def state_dict(self) -> Dict[str, Any]:
        """The running counts of the unfinished epoch (plain ints)."""
        return {"steps": self.steps, "flips": {name: int(f) for (name, _), f in zip(self.layers, self._flips)}}

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        """Restore the counts and take the current weights' signs as "before the next step" (call after loading them)."""
        self._signs = self._current_signs()
        if not state:
            return
        flips = state["flips"]
        if set(flips) != {name for name, _ in self.layers}:
            raise ValueError(f"flip-ratio state is for layers {sorted(flips)}, the model has {[n for n, _ in self.layers]}")
        self._flips = [torch.tensor(int(flips[name]), device=f.device) for (name, _), f in zip(self.layers, self._flips)]
        self.steps = int(state["steps"])


def flip_ratio_for(model: nn.Module, enabled: Optional[bool], binary_later: bool = False) -> Optional[FlipRatio]:
    """A :class:`FlipRatio` when ``enabled`` (``run.flip_ratio``), or when None and the model has binary layers.

    ``binary_later``: layers become binary during the run (distillation's stage 2), so the
    counter starts even while the model has none yet (it tracks them from then on).
    """
    from lowbit.nn import binary_layers

    if enabled is False or (enabled is None and not binary_layers(model) and not binary_later):
        return None
    return FlipRatio(model, allow_empty=binary_later)


def flip_columns(record: Mapping[str, Any]) -> List[str]:
    """The flip-ratio columns of a metrics record, overall first."""
    return [k for k in record if k == PREFIX or k.startswith(PREFIX + "/")]


def _tracked(records: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """The records of epochs with a flip ratio (a distilled run's stage 1 may have no binary weights yet)."""
    return [r for r in records if r.get(PREFIX) not in (None, "")]


def _all_flip_columns(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """The flip-ratio columns of any of ``records``, overall first, then layers in order of appearance."""
    keys: Dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(flip_columns(record)))
    return sorted(keys, key=lambda k: k != PREFIX)


def plot_flip_ratio(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Flip ratio per binary layer (thin) and overall (thick) against the epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = _tracked(records)
    keys = _all_flip_columns(records)

    def series(key: str) -> Tuple[List[int], List[float]]:
        present = [r for r in records if r.get(key) not in (None, "")]
        return [int(r["epoch"]) for r in present], [float(r[key]) for r in present]

    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    layers = [k for k in keys if k != PREFIX]
    for i, key in enumerate(layers):
        ax.plot(*series(key), color=cmap(i / max(len(layers) - 1, 1)), lw=0.9, alpha=0.8, label=key[len(PREFIX) + 1 :])
    if PREFIX in keys:
        ax.plot(*series(PREFIX), color="black", lw=2.2, label="all binary weights")
    if all(value > 0 for k in keys for value in series(k)[1]):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("flipped weights per step (share)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(layers) > 8 else 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def flip_ratio_section(run_dir: Path, records: Sequence[Mapping[str, Any]]) -> List[str]:
    """The report's "Flip ratio" section (a plot and a table of first / last epoch), or [] without flip columns."""
    tracked = _tracked(records)
    if not tracked:
        return []
    plot_flip_ratio(tracked, Path(run_dir) / "plots" / "flip_ratio.png")
    keys = _all_flip_columns(tracked)
    first, last = tracked[0], tracked[-1]

    def pct(x: Any) -> str:
        value = float("nan") if x in (None, "") else float(x)
        return "n/a" if math.isnan(value) else f"{100 * value:.3g}%"

    first_epoch = int(first["epoch"]) if first.get("epoch") not in (None, "") else 1
    rows = [
        f"| layer | epoch {first_epoch} | last epoch |",
        "|---|---:|---:|",
        *(f"| {k[len(PREFIX) + 1:] or 'all binary weights'} | {pct(first.get(k))} | {pct(last.get(k))} |" for k in keys),
    ]
    return [
        "## Flip ratio",
        "",
        "Per binary layer, the mean over each epoch's optimizer steps of the share of latent weights whose sign "
        "changed at a step (Larq's FlipRatio; `flip_ratio/<layer>` in metrics.csv):",
        "",
        "![flip ratio](plots/flip_ratio.png)",
        "",
        "\n".join(rows),
        "",
    ]


__all__ = ["FlipRatio", "flip_columns", "flip_ratio_for", "flip_ratio_section", "plot_flip_ratio"]
