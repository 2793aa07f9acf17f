"""Gradient quality during training: the probe's measurements every N epochs of a ``lowbit train`` run.

The notes ask to "look at initialized and pretrained models": how good the STE
of each binary layer is, and how it changes as the network trains. With a
``probe:`` section in a train config, before the first epoch and after every
``probe.every``-th epoch (and the last), for every probed layer (by default
every binary layer: a layer whose input or weight quantizer is a sign):

- ``cosine``, ``cosine_se``: the cosine between the STE gradient (the
  model's own backward, or ``probe.surrogate``) and CDG (or ``flip_cdg``,
  ``probe.reference``) of the layer's latent weight, on a uniform random
  subset of ``probe.coords`` coordinates, with its sampling standard error
  (``lowbit.estimators.subset.subset_cosine``); CDG's step is ε =
  ``probe.eps`` · mean|w| of the layer with ``probe.relative`` (default), so
  that it means the same in every layer and as the weights grow;
- ``ste_mean_norm``, ``ste_total_variance``, ``ste_snr``,
  ``ste_coord_snr_median``: the STE gradient's mean m and per-coordinate
  variance over ``probe.stats_batches`` i.i.d. mini-batches of
  ``probe.stats_batch_size`` training images, SNR = ‖m‖²/Σ s²
  (``lowbit.estimators.ste_stats``);
- ``flip_ratio``: the fraction of the layer's binary weights sign(w) that
  changed since the previous measurement (none at the first; layers with
  binary weights only). Per epoch it is also in metrics.csv (``run.flip_ratio``,
  ``lowbit.train.flips``); here it is over the probe's interval.

The loss is the training loss (``loss:``, label smoothing included) on a
fixed batch: the first ``probe.batch_size`` training images, normalised,
without augmentation, the same at every measurement; BatchNorm normalises by
the batch's statistics (as a training step does; ``use_batch_statistics`` on
a copy of the model — the model itself, the optimizer and every random
stream of the run are left untouched, so a run with a probe trains exactly as
one without). Records go to ``grad_probe.csv`` (epoch, layer, metric, value);
``report.md`` gets a table per metric and ``plots/grad_probe.png``. The probe
reuses the gradient laboratory's measurements, which live in ``lowbit.estimators``
(below both ``lowbit.probe`` and ``lowbit.train``: neither command imports the other's
runner), imported when a probe runs.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import nn

GRAD_PROBE_FILE = "grad_probe.csv"
SIGNS_FILE = "grad_probe_signs.pt"  # sign(w) of every probed layer at the last measurement (flip ratio on resume)

METRICS = {
    "cosine": "Cosine between the STE and the reference on a random coordinate subset (± sampling standard error)",
    "reference_nonzero": "Measured coordinates where the reference is non-zero (of probe.coords; 0: the cosine is undefined)",
    "ste_snr": "Signal-to-noise ratio ‖m‖²/Σs² of one mini-batch STE gradient",
    "ste_mean_norm": "Norm of the mean STE gradient ‖m‖",
    "flip_ratio": "Fraction of the layer's binary weights whose sign changed since the previous measurement",
}


@dataclass
class GradProbeConfig:
    """The ``probe:`` section of a train config (module docstring); every value with its unit and why."""

    every: int = 5  # epochs between measurements (also before epoch 1 and after the last)
    batch_size: int = 256  # images in the fixed batch the loss is measured on (first N training images)
    # "binary": every layer with binary weights or a sign input quantizer; "all": every conv/linear; or layer names
    layers: Union[str, List[str]] = "binary"
    coords: int = 64  # CDG coordinates per layer (a uniform subset, redrawn each measurement)
    eps: float = 0.1  # CDG step: eps * mean|w| of the layer with relative, else absolute
    relative: bool = True  # item: the same relative step in every layer, as the latent weights grow
    reference: Literal["cdg", "flip_cdg"] = "cdg"  # flip_cdg: the exact loss change of each sign flip
    surrogate: Optional[str] = None  # the STE measured; None: the model's own backward (what training uses)
    stats_batches: int = 8  # mini-batches for the STE mean / variance / SNR (>= 2; 0 = off)
    stats_batch_size: int = 64  # images per mini-batch (a training step's batch)

    def __post_init__(self) -> None:
        errors = []
        if self.every < 1:
            errors.append(f"probe.every must be >= 1 (epochs between measurements), got {self.every}")
        for name in ("batch_size", "coords", "stats_batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"probe.{name} must be >= 1, got {getattr(self, name)}")
        if not self.eps > 0:
            errors.append(f"probe.eps must be > 0, got {self.eps}")
        if self.stats_batches < 0 or self.stats_batches == 1:
            errors.append(f"probe.stats_batches must be 0 (off) or >= 2 (a variance needs two), got {self.stats_batches}")
        if isinstance(self.layers, str) and self.layers not in ("binary", "all"):
            self.layers = [self.layers]
        if isinstance(self.layers, list) and not self.layers:
            errors.append("probe.layers must name at least one layer (or be 'binary' or 'all')")
        if errors:
            raise ValueError("; ".join(errors))


def is_probed_layer(module: nn.Module) -> bool:
    """A layer ``layers: binary`` probes: binary weights (``lowbit.nn.is_binary_layer``: a 1-bit weight
    quantizer) or binary inputs (a sign input quantizer)."""
    from lowbit.estimators.objective import is_sign_activation
    from lowbit.nn.latent import is_binary_layer, is_quantized_layer

    return is_binary_layer(module) or (is_quantized_layer(module) and is_sign_activation(module.input_quantizer))


def probed_layers(model: nn.Module, layers: Union[str, Sequence[str]]) -> List[str]:
    """The probed layers' module names; ValueError naming the fix when there are none or a name is unknown."""
    from lowbit.estimators.layers import probe_layers, studied_weight

    if layers == "all":
        return probe_layers(model)
    if layers == "binary":
        found = [name for name, m in model.named_modules() if name and is_probed_layer(m)]
        if not found:
            raise ValueError(
                f"probe.layers: binary found no binary layer in {type(model).__name__} (no conv/linear with a sign "
                "input or weight quantizer); list layer names or set probe.layers: all"
            )
        return found
    for name in layers:
        studied_weight(model, name)  # raises with the nearest valid name
    return list(layers)


class GradProbe:
    """The measurements of one run: built (layers checked) before anything is written, ``begin`` once the
    run directory exists, ``after_epoch`` at each epoch's end."""

    def __init__(self, config: GradProbeConfig, setup: Any, seed: int) -> None:
        from lowbit.data import normalize
        from lowbit.estimators.layers import studied_weight

        self.config, self.setup, self.seed = config, setup, seed
        self.run_dir: Optional[Path] = None
        self.layers = probed_layers(setup.model, config.layers)
        self.weights = {layer: studied_weight(setup.model, layer) for layer in self.layers}
        n = min(config.batch_size, setup.train_images.shape[0])
        self.batch = (normalize(setup.train_images[:n], setup.mean, setup.std), setup.train_labels[:n])
        self.signs: Optional[Dict[str, torch.Tensor]] = None
        self.signs_epoch: Optional[int] = None

    def begin(self, run_dir: Path, start_epoch: int, resumed: bool = False) -> None:
        """Measure at initialisation (a fresh run) or pick up after ``start_epoch`` completed epochs (``resumed``)."""
        self.run_dir = Path(run_dir)
        if not resumed:
            (self.run_dir / GRAD_PROBE_FILE).unlink(missing_ok=True)
            (self.run_dir / SIGNS_FILE).unlink(missing_ok=True)
            self.measure(0)
        else:
            self._resume(start_epoch)

    def after_epoch(self, epoch: int) -> None:
        """Measure after ``epoch`` (1-based) if it is a probe epoch."""
        total = self.setup.config.run.epochs
        if epoch % self.config.every == 0 or epoch == total:
            self.measure(epoch)

    def _resume(self, start_epoch: int) -> None:
        from lowbit.runs import RecordWriter, read_records

        path = self.run_dir / GRAD_PROBE_FILE
        if path.is_file():  # rows after the checkpoint (a stop between a measurement and its checkpoint) go
            rows = read_records(path, text_columns=("layer",))
            kept = [r for r in rows if int(r["epoch"]) <= start_epoch]
            if len(kept) != len(rows):
                path.unlink()
                RecordWriter(path).write_many(kept)
        saved = self.run_dir / SIGNS_FILE
        if saved.is_file():
            state = torch.load(saved, weights_only=True)
            if int(state["epoch"]) <= start_epoch:
                self.signs, self.signs_epoch = state["signs"], int(state["epoch"])

    @torch.no_grad()
    def _current_signs(self) -> Dict[str, torch.Tensor]:
        """sign(w) >= 0 of the probed layers whose weights are binary (the flip ratio is theirs only)."""
        from lowbit.nn import is_binary_layer

        params, modules = dict(self.setup.model.named_parameters()), dict(self.setup.model.named_modules())
        return {layer: params[name].detach().ge(0).cpu() for layer, name in self.weights.items()
                if is_binary_layer(modules.get(layer, nn.Identity()))}

    def measure(self, epoch: int) -> None:
        """Every measurement of the module docstring at the model's current weights; appends to grad_probe.csv."""
        from lowbit.runs import RecordWriter, atomic_torch_save

        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # the run's random streams stay untouched
            rows = self._records(epoch)
        signs = self._current_signs()
        if self.signs is not None:
            for layer, now in signs.items():
                if layer not in self.signs:
                    continue
                rows.append({"epoch": epoch, "layer": layer, "metric": "flip_ratio",
                             "value": float((now != self.signs[layer]).double().mean())})
        self.signs, self.signs_epoch = signs, epoch
        rows.append({"epoch": epoch, "layer": "all", "metric": "seconds", "value": time.perf_counter() - started})
        RecordWriter(self.run_dir / GRAD_PROBE_FILE).write_many(rows)
        atomic_torch_save({"epoch": epoch, "signs": signs}, self.run_dir / SIGNS_FILE)

    def _records(self, epoch: int) -> List[Dict[str, Any]]:
        from lowbit.estimators import GraphObjective, ModuleObjective, get_estimator, use_batch_statistics
        from lowbit.estimators.ste_stats import minibatches, ste_statistics_records
        from lowbit.estimators.subset import subset_cosine

        c = self.config
        model = use_batch_statistics(copy.deepcopy(self.setup.model)).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        loss_fn = self.setup.loss_fn
        rows: List[Dict[str, Any]] = []
        ste = get_estimator("ste", surrogate=c.surrogate)
        # The STE of every probed layer from one backward pass on the fixed batch.
        everything = ModuleObjective(model, self.batch, loss_fn=loss_fn, params=list(self.weights.values()))
        ste_all = ste.estimate(everything)
        for index, (layer, name) in enumerate(self.weights.items()):
            objective = GraphObjective(model, self.batch, loss_fn=loss_fn, params=[name])
            if c.reference == "cdg":
                reference = get_estimator("cdg", eps=c.eps, relative=c.relative, coords=c.coords)
            else:
                reference = get_estimator("flip_cdg", coords=c.coords)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + index)
            r = reference.estimate(objective, generator)
            g = {name: ste_all[name]}
            value, se = subset_cosine(r, g, reference.last_subset) if reference.last_subset is not None else (_cos(r, g), 0.0)
            measured = reference.last_subset
            nonzero = sum(int((r[k].ne(0) & (measured[k] if measured is not None else True)).sum()) for k in r)
            rows += [
                {"epoch": epoch, "layer": layer, "metric": "cosine", "value": value},
                {"epoch": epoch, "layer": layer, "metric": "cosine_se", "value": se},
                {"epoch": epoch, "layer": layer, "metric": "coords", "value": min(c.coords, objective.numel())},
                {"epoch": epoch, "layer": layer, "metric": "reference_nonzero", "value": nonzero},
            ]
        if c.stats_batches:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + 7919)
            images, labels = self.setup_images()
            batches = minibatches(images, labels, c.stats_batches, min(c.stats_batch_size, len(labels)), generator)
            stats = ste_statistics_records(model, batches, self.weights, {"ste": ste.resolved_surrogate}, loss_fn=loss_fn)
            rows += [{"epoch": epoch, "layer": r["probed_layer"], "metric": r["metric"], "value": r["value"]} for r in stats]
        return rows

    def setup_images(self):
        from lowbit.data import normalize

        return normalize(self.setup.train_images, self.setup.mean, self.setup.std), self.setup.train_labels


def _cos(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    x = torch.cat([v.reshape(-1).double() for v in a.values()])
    y = torch.cat([v.reshape(-1).double() for v in b.values()])
    d = float(x.norm() * y.norm())
    return float(x @ y) / d if d > 0 else math.nan


# --- the report -----------------------------------------------------------------------------


def report_section(run_dir: Path) -> List[str]:
    """The train report's "Gradient quality during training" section (nothing without grad_probe.csv)."""
    from lowbit.report.tables import format_number, markdown_table
    from lowbit.runs import read_records

    path = Path(run_dir) / GRAD_PROBE_FILE
    if not path.is_file():
        return []
    rows = read_records(path, text_columns=("layer",))
    if not rows:
        return []
    epochs = sorted({int(r["epoch"]) for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows if r["layer"] != "all"))
    value = {(r["metric"], r["layer"], int(r["epoch"])): r["value"] for r in rows}
    lines = [
        "## Gradient quality during training",
        "",
        "Per probed layer, at initialisation (epoch 0) and every few epochs, on a fixed batch of training images "
        "(lowbit.train.grad_probe): the STE's cosine with CDG on a random coordinate subset (± its sampling error), "
        "the STE's signal-to-noise ratio over mini-batches, and the fraction of binary weights that flipped since the "
        "previous measurement. A cosine is '–' where the reference is zero on every measured coordinate (no "
        "coordinate within the CDG step of a sign change): raise probe.coords or probe.eps.",
        "",
    ]
    plot = _plot(rows, layers, epochs, Path(run_dir) / "plots" / "grad_probe.png")
    if plot:
        lines += [f"![gradient quality during training](plots/{plot.name})", ""]
    for metric, title in METRICS.items():
        if not any(k[0] == metric for k in value):
            continue
        shown = [e for e in epochs if any((metric, l, e) in value for l in layers)]
        body = []
        for layer in layers:
            cells = []
            for e in shown:
                v = value.get((metric, layer, e))
                se = value.get(("cosine_se", layer, e)) if metric == "cosine" else None
                shown_se = se is not None and math.isfinite(se) and se > 0
                cells.append("–" if v is None or not math.isfinite(v) else format_number(v) + (f" ± {format_number(se, 2)}" if shown_se else ""))
            body.append([f"`{layer}`"] + cells)
        lines += [f"### {title}", "", markdown_table(["layer"] + [f"epoch {e}" for e in shown], body), ""]
    seconds = [r["value"] for r in rows if r["metric"] == "seconds"]
    if seconds:
        lines += [f"Each measurement took {sum(seconds) / len(seconds):.1f} s on average ({len(seconds)} measurements).", ""]
    return lines


def _plot(rows: Sequence[Mapping[str, Any]], layers: Sequence[str], epochs: Sequence[int], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [m for m in ("cosine", "ste_snr", "flip_ratio") if any(r["metric"] == m for r in rows)]
    if not panels:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, metric in zip(axes.flat, panels):
        for i, layer in enumerate(layers):
            points = sorted((int(r["epoch"]), r["value"]) for r in rows if r["metric"] == metric and r["layer"] == layer)
            if not points:
                continue
            xs, ys = zip(*points)
            colour = colours(i / max(1, len(layers) - 1))
            if metric == "cosine":
                se = {int(r["epoch"]): r["value"] for r in rows if r["metric"] == "cosine_se" and r["layer"] == layer}
                ax.errorbar(xs, ys, yerr=[se.get(x, 0.0) or 0.0 for x in xs], color=colour, marker="o", ms=3, capsize=2, label=layer)
            else:
                ax.plot(xs, ys, color=colour, marker="o", ms=3, label=layer)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"cosine": "cos(STE, CDG)", "ste_snr": "STE SNR", "flip_ratio": "flip ratio"}[metric])
        if metric == "cosine":
            ax.axhline(0, color="grey", lw=0.5)
        if metric == "ste_snr" and all(r["value"] > 0 for r in rows if r["metric"] == metric):
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=6, ncol=2 if len(layers) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["GRAD_PROBE_FILE", "GradProbe", "GradProbeConfig", "is_probed_layer", "probed_layers", "report_section"]
