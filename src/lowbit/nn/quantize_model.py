"""Low-bit training of a whole model: convert, configure from a dict, measure gradients, count storage.

- :func:`quantize_model` replaces a float model's ``nn.Conv2d`` / ``nn.Linear``
  by :class:`QuantConv2d` / :class:`QuantLinear` with k-bit W, A, G, E (8-8-8-8
  by default), in place, sharing the original weight and bias Parameters;
  BatchNorm and everything else stay float (the 2020 notes: "BN的mean/var保持浮点").
- :func:`apply_quant_config` does the same from a config's ``quant:`` section.
- :class:`GradientStats` records, per layer, the distribution of G and E over
  training (histograms; the "sharp and wide" shape that motivates clipping
  and stochastic rounding) and how many entries round to zero, as flat records;
  :func:`plot_gradient_histograms` draws them.
- :func:`storage_records` / :func:`storage_table`: bits stored per layer and
  the saving against float32.

See docs/lowbit-training.md for the method, its references and measured figures.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lowbit.nn.binary import QuantizedWeightLayer
from lowbit.nn.convert import layer_like, replace_layers
from lowbit.nn.quantized import QuantConv2d, QuantLinear
from lowbit.nn.spec import FLOAT_BITS, quantizer_bits
from lowbit.quant import DEFAULT_CLIP_FRACTIONS, GradientQuantizer, cosine_distance, step_for_range
from lowbit.registry import nearest

# --- conversion ----------------------------------------------------------------------


def quantize_model(
    model: nn.Module,
    w_bits: Optional[int] = 8,
    a_bits: Optional[int] = 8,
    g_bits: Optional[int] = 8,
    e_bits: Optional[int] = 8,
    *,
    scale: str = "maxabs",
    g_rounding: str = "stochastic",
    e_rounding: str = "nearest",
    g_clip: str = "none",
    e_clip: str = "none",
    stochastic_weights: bool = False,
    clip_fractions: Sequence[float] = DEFAULT_CLIP_FRACTIONS,
    clip_interval: int = 1,
    generator: Optional[torch.Generator] = None,
    keep_first_last: bool = False,
) -> nn.Module:
    """Replace the model's ``nn.Conv2d`` / ``nn.Linear`` by k-bit W/A/G/E layers, in place; returns ``model``.

    Bits: an integer >= 2, or None (or >= 32) to leave that tensor float; the
    default is 8-8-8-8 with stochastic rounding of G (WAGE's choice; "2-8-8-8"
    is WAGE's own setting). ``scale``, ``g_rounding``, ``e_rounding``,
    ``g_clip``, ``e_clip``, ``clip_fractions``, ``clip_interval`` and ``generator`` are the
    options of :class:`QuantLinear` (one set for the whole model). With
    ``keep_first_last`` the first and last Conv2d/Linear (registration order)
    stay float, as is common for binary networks; 8-bit training does not need
    it (default False).

    Only modules whose type is exactly ``nn.Conv2d`` / ``nn.Linear`` are
    converted; already quantized layers are left as they are (but count for
    first/last); BatchNorm, pooling and activations are not touched, so their
    parameters, statistics and arithmetic stay float32. Each new layer shares
    the old one's weight and bias Parameter objects, so an optimizer built
    before the call keeps working. All options are validated before any layer
    is replaced; errors name every bad option at once.
    """
    options = _layer_options(
        dict(
            w_bits=w_bits,
            a_bits=a_bits,
            g_bits=g_bits,
            e_bits=e_bits,
            scale=scale,
            g_rounding=g_rounding,
            e_rounding=e_rounding,
            g_clip=g_clip,
            e_clip=e_clip,
            stochastic_weights=stochastic_weights,
            clip_fractions=clip_fractions,
            clip_interval=clip_interval,
            generator=generator,
        )
    )
    if not isinstance(keep_first_last, bool):
        raise ValueError(f"keep_first_last must be a bool, got {keep_first_last!r}")
    # Built on the meta device: the conversion allocates nothing and draws nothing from the
    # global RNG, so a float and a quantized run with the same seed see the same data order.
    return replace_layers(
        model, lambda layer: layer_like(layer, QuantConv2d, QuantLinear, device="meta", **options), keep_first_last
    )


# Keys of a config's ``quant:`` section -> quantize_model keywords.
QUANT_CONFIG_KEYS = (
    "w_bits",
    "a_bits",
    "g_bits",
    "e_bits",
    "scale",
    "g_rounding",
    "e_rounding",
    "g_clip",
    "e_clip",
    "keep_first_last",
    "stochastic_weights",
    "clip_fractions",
    "clip_interval",
)


def apply_quant_config(model: nn.Module, quant: Optional[Mapping[str, Any]]) -> nn.Module:
    """Convert ``model`` in place as a config's ``quant:`` section says; returns it.

    ``quant`` maps any of :data:`QUANT_CONFIG_KEYS` to a value (missing keys take
    :func:`quantize_model`'s defaults: 8-8-8-8, max-abs scale, stochastic G,
    nearest E, no clipping); None or an empty mapping leaves the model float.
    Unknown keys raise ValueError naming the nearest valid key, together with
    any invalid value. Call it after the model is built and before the
    optimizer (either order works: Parameters are shared).
    """
    if not quant:
        return model
    if not isinstance(quant, Mapping):
        raise ValueError(f"quant must be a mapping of {', '.join(QUANT_CONFIG_KEYS)}, got {quant!r}")
    errors = []
    for key in quant:
        if key not in QUANT_CONFIG_KEYS:
            hint = nearest(str(key), QUANT_CONFIG_KEYS)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            errors.append(f"unknown quant key {key!r}{suggestion}; valid keys: {', '.join(QUANT_CONFIG_KEYS)}")
    options = {key: value for key, value in quant.items() if key in QUANT_CONFIG_KEYS}
    one_bit = [key for key in ("w_bits", "a_bits") if options.get(key) == 1 and not isinstance(options[key], bool)]
    if one_bit:  # the usual first try at a binary network from a config
        errors.append(
            f"{', '.join(f'quant.{k}=1' for k in one_bit)}: 1-bit weights or activations are binary layers, which "
            "quant: (k-bit W/A/G/E training, bits >= 2) does not build; use the binarize: section instead, e.g. "
            "binarize: {input_quantizer: ste_sign, weight_quantizer: xnor_weight} (docs/training.md)"
        )
        options = {k: v for k, v in options.items() if k not in one_bit}
    if not isinstance(options.get("keep_first_last", False), bool):
        errors.append(f"keep_first_last must be a bool, got {options['keep_first_last']!r}")
    if isinstance(options.get("clip_fractions"), list):
        options["clip_fractions"] = tuple(options["clip_fractions"])
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(quantize_model).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name != "keep_first_last"
    }
    try:  # the values with quantize_model's defaults filled in, reported with the unknown keys
        _layer_options({**defaults, **{k: v for k, v in options.items() if k != "keep_first_last"}})
    except (ValueError, TypeError) as error:
        errors.append(str(error))
    if errors:
        raise ValueError("invalid quant config: " + "; ".join(errors))
    return quantize_model(model, **options)


def _layer_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """quantize_model's keywords as layer keywords (the same names), validated together by building a layer on meta."""
    options = dict(options)
    QuantLinear(1, 1, device="meta", **options)  # raises ValueError naming every bad option
    return options


# --- storage -------------------------------------------------------------------------


def storage_records(model: nn.Module) -> List[Dict[str, Any]]:
    """Bits stored per layer and the saving against float32: one flat record per parameterised module.

    A quantized layer's weight is stored at its weight quantizer's bits
    (``quantizer_bits``); biases, BatchNorm and every other parameter at 32. A
    Parameter shared by two modules is counted once. Fields: ``layer``, ``kind``,
    ``params``, ``w_bits``, ``a_bits``, ``g_bits``, ``e_bits`` (None for
    non-quantized modules; 32 = float), ``storage_bits``, ``fp32_bits``,
    ``saving`` (1 - storage / fp32) and ``compression`` (fp32 / storage); the
    last record is the ``(total)``. Latent float weights kept for training
    (Banner et al.) are not counted: this is the deployed model.
    """
    records: List[Dict[str, Any]] = []
    seen: set = set()
    total_bits = total_params = 0
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not own:
            continue
        quantized = isinstance(module, QuantizedWeightLayer)
        weight_bits = quantizer_bits(module.weight_quantizer) if quantized else FLOAT_BITS
        bits = params = 0
        for param_name, param in own:
            seen.add(id(param))
            bits += param.numel() * (weight_bits if param_name == "weight" else FLOAT_BITS)
            params += param.numel()
        record = {
            "layer": name or "(model)",
            "kind": type(module).__name__,
            "params": params,
            "w_bits": weight_bits if quantized or isinstance(module, (nn.Conv2d, nn.Linear)) else None,
            "a_bits": quantizer_bits(module.input_quantizer) if quantized else None,
            "g_bits": _backward_bits(module, "grad_quantizer"),
            "e_bits": _backward_bits(module, "error_quantizer"),
        }
        records.append({**record, **_saving(bits, params)})
        total_bits += bits
        total_params += params
    total = {"layer": "(total)", "kind": "", "params": total_params}
    total.update({key: None for key in ("w_bits", "a_bits", "g_bits", "e_bits")})
    records.append({**total, **_saving(total_bits, total_params)})
    return records


def _backward_bits(module: nn.Module, attribute: str) -> Optional[int]:
    if not isinstance(module, QuantizedWeightLayer):
        return None
    quantizer = getattr(module, attribute, None)
    return quantizer.bits if isinstance(quantizer, GradientQuantizer) else FLOAT_BITS


def _saving(bits: int, params: int) -> Dict[str, Any]:
    fp32 = params * FLOAT_BITS
    return {
        "storage_bits": bits,
        "fp32_bits": fp32,
        "saving": 1.0 - bits / fp32 if fp32 else 0.0,
        "compression": fp32 / bits if bits else float("nan"),
    }


def storage_table(model_or_records: Union[nn.Module, Sequence[Mapping[str, Any]]]) -> str:
    """A Markdown table of :func:`storage_records` (sizes in bytes = bits / 8)."""
    records = storage_records(model_or_records) if isinstance(model_or_records, nn.Module) else model_or_records

    def bits(value: Optional[int]) -> str:
        return "" if value is None else str(value)

    lines = [
        "| layer | kind | params | W/A/G/E bits | storage (B) | float32 (B) | saving | compression |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in records:
        precision = "/".join(bits(r[k]) for k in ("w_bits", "a_bits", "g_bits", "e_bits")).strip("/")
        lines.append(
            f"| {r['layer']} | {r['kind']} | {r['params']:,} | {precision} | {r['storage_bits'] / 8:,.0f} "
            f"| {r['fp32_bits'] / 8:,.0f} | {100 * r['saving']:.1f}% | {r['compression']:.2f}x |"
        )
    return "\n".join(lines)


# --- gradient statistics -------------------------------------------------------------

KINDS = ("G", "E")  # G = dL/dW (weight gradient), E = dL/dy (error at the layer's output)


class GradientStats:
    """Per-layer distributions of G and E over training, and how many entries round to zero.

    >>> stats = GradientStats(model, every=10).attach()
    >>> for step, (x, y) in enumerate(batches):
    ...     stats.step = step
    ...     loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
    >>> stats.detach(); write_csv(stats.records); write_csv(stats.histograms)

    Every Conv2d/Linear is observed. In a layer that quantizes G (E), the
    observer of its :class:`~lowbit.quant.GradientQuantizer` sees the float
    gradient, the step actually used (after any clipping) and the quantized
    result; in a float layer (or one with g_bits/e_bits None) a tensor hook sees
    the float gradient, and the fractions are computed for a *reference* grid
    (``reference_bits``, ``reference_scale``, max-abs range): "what would
    8 bits do to this float gradient".

    One record per observed tensor on every ``every``-th backward pass of each
    (layer, kind), fields: ``step`` (``self.step`` if the loop sets it, else the
    pass count), ``layer``, ``kind`` (G | E), ``quantized`` (does the layer
    quantize this tensor), ``bits``, ``scale``, ``rounding``, ``numel``,
    ``max_abs``, ``std``, ``kurtosis`` (E[(g - mean)^4] / var^2; 3 for a
    Gaussian: "sharp" = large), ``crest`` (max|g| / std: "wide" = large),
    ``grid_step``, ``range`` (max|g| or the clip value), ``frac_exact_zero``
    (g == 0 already in float, e.g. behind a ReLU), ``frac_zero_nearest``
    (|g| < step/2: rounds to 0 to nearest), ``frac_zero_stochastic`` (the
    expected fraction of zeros under stochastic rounding, mean(max(0, 1 - |g| /
    step))), ``frac_zero_quantized`` (zeros actually produced, quantized layers
    only), ``cos_distance`` (1 - cos(g, q(g)) of the actual quantization,
    quantized layers only).

    Histograms (``self.histograms``): for the same passes, counts of g / max|g|
    in ``bins`` equal bins over [-1, 1], one record per bin (``step``,
    ``layer``, ``kind``, ``bin``, ``lo``, ``hi``, ``count``); on that axis the
    8-bit max-abs grid has a step of 1/127.
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 1,
        bins: int = 64,
        kinds: Sequence[str] = KINDS,
        reference_bits: int = 8,
        reference_scale: str = "maxabs",
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        bad_kinds = [k for k in kinds if k not in KINDS]
        if bad_kinds or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)!r}")
        step_for_range(torch.ones(()), reference_bits, reference_scale)  # validates both
        self.model = model
        self.every = every
        self.bins = bins
        self.kinds = tuple(kinds)
        self.reference_bits = reference_bits
        self.reference_scale = reference_scale
        self.step: Optional[int] = None
        # mixed-precision loss scaling multiplies every gradient of the backward pass by this (a power of 2);
        # the records divide it out (exactly), so they describe the true gradients
        self.loss_scale: float = 1.0
        self.records: List[Dict[str, Any]] = []
        self.histograms: List[Dict[str, Any]] = []
        self._calls: Dict[Tuple[str, str], int] = {}
        self._handles: List[Any] = []
        self._observed: List[GradientQuantizer] = []
        self.layer_names: List[str] = []  # the observed layers in registration order (set by attach)

    # -- attaching ----------------------------------------------------------------------

    def attach(self) -> "GradientStats":
        """Start observing every Conv2d/Linear of the model; returns self."""
        self.detach()
        self.layer_names = []
        for name, module in self.model.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            self.layer_names.append(name)
            for kind in self.kinds:
                quantizer = getattr(module, "grad_quantizer" if kind == "G" else "error_quantizer", None)
                if isinstance(quantizer, GradientQuantizer):
                    quantizer.observer = self._quantized_observer(name, kind)
                    self._observed.append(quantizer)
                elif kind == "G":
                    self._handles.append(module.weight.register_hook(self._float_hook(name, "G")))
                else:
                    self._handles.append(module.register_forward_hook(self._output_hook(name)))
        return self

    def detach(self) -> None:
        """Stop observing (records are kept)."""
        for handle in self._handles:
            handle.remove()
        for quantizer in self._observed:
            quantizer.observer = None
        self._handles, self._observed = [], []

    def __enter__(self) -> "GradientStats":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def _due(self, layer: str, kind: str) -> Optional[int]:
        """The pass index if this pass of (layer, kind) is recorded, else None."""
        calls = self._calls.get((layer, kind), 0)
        self._calls[(layer, kind)] = calls + 1
        return calls if calls % self.every == 0 else None

    def _quantized_observer(self, layer: str, kind: str) -> Callable[..., None]:
        def observe(quantizer: GradientQuantizer, grad, quantized, step, r) -> None:
            call = self._due(layer, kind)
            if call is not None:
                grid = (quantizer.bits, quantizer.scale, quantizer.rounding)
                self._record(layer, kind, call, grad, step, r, *grid, quantized)

        return observe

    def _float_hook(self, layer: str, kind: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            call = self._due(layer, kind)
            if call is not None:
                r = grad.detach().abs().amax().float()
                step = step_for_range(r, self.reference_bits, self.reference_scale)
                self._record(layer, kind, call, grad, step, r, self.reference_bits, self.reference_scale, "float", None)

        return hook

    def _output_hook(self, layer: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._float_hook(layer, "E"))

        return hook

    # -- measuring ----------------------------------------------------------------------

    @torch.no_grad()
    def _record(self, layer, kind, call, grad, step, r, bits, scale, rounding, quantized) -> None:
        if self.loss_scale != 1.0:  # every quantity below is in gradient units: all of them scaled back
            grad, step, r = grad / self.loss_scale, step / self.loss_scale, r / self.loss_scale
            quantized = None if quantized is None else quantized / self.loss_scale
        g = grad.detach().reshape(-1).double()  # (numel,)
        step64 = step.double()
        y = g.abs() / step64  # |g| in grid steps
        mean, std = g.mean(), g.std(unbiased=False)
        kurtosis = ((g - mean) ** 4).mean() / std**4 if std > 0 else torch.tensor(float("nan"))
        max_abs = g.abs().max()
        record = {
            "step": self.step if self.step is not None else call,
            "layer": layer,
            "kind": kind,
            "quantized": quantized is not None,
            "bits": bits,
            "scale": scale,
            "rounding": rounding,
            "numel": g.numel(),
            "max_abs": float(max_abs),
            "std": float(std),
            "kurtosis": float(kurtosis),
            "crest": float(max_abs / std) if std > 0 else float("nan"),
            "grid_step": float(step64),
            "range": float(r),
            "frac_exact_zero": float((g == 0).double().mean()),
            "frac_zero_nearest": float((y < 0.5).double().mean()),
            "frac_zero_stochastic": float((1.0 - y).clamp_min(0.0).mean()),
            "frac_zero_quantized": None if quantized is None else float((quantized == 0).double().mean()),
            "cos_distance": None if quantized is None else float(cosine_distance(grad, quantized)),
        }
        self.records.append(record)
        scale_to_unit = max_abs if max_abs > 0 else torch.ones((), dtype=torch.float64, device=g.device)
        # histc on the CPU: its CUDA kernel is refused under torch.use_deterministic_algorithms
        counts = torch.histc((g / scale_to_unit).cpu(), bins=self.bins, min=-1.0, max=1.0)
        edges = torch.linspace(-1.0, 1.0, self.bins + 1, dtype=torch.float64)
        for i, count in enumerate(counts.tolist()):
            self.histograms.append(
                {
                    "step": record["step"],
                    "layer": layer,
                    "kind": kind,
                    "bin": i,
                    "lo": float(edges[i]),
                    "hi": float(edges[i + 1]),
                    "count": int(count),
                }
            )


def plot_gradient_histograms(
    histograms: Union[GradientStats, Sequence[Mapping[str, Any]]],
    path: Union[str, Path],
    kind: str = "G",
    snapshots: int = 3,
    layers: Optional[Sequence[str]] = None,
) -> Path:
    """One panel per layer: the histogram of g / max|g| (log count) at up to ``snapshots`` steps.

    The steps shown are the first, the last and evenly spaced ones between
    among those recorded for each layer. Panels follow ``layers`` if given,
    else the model's registration order (from a ``GradientStats``) or the
    order of first appearance in the records (the backward order). Writes a
    PNG with matplotlib's Agg backend and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = histograms.histograms if isinstance(histograms, GradientStats) else histograms
    rows = [r for r in rows if r["kind"] == kind]
    if not rows:
        raise ValueError(f"no {kind!r} histogram records to plot")
    present = list(dict.fromkeys(r["layer"] for r in rows))
    if layers is None and isinstance(histograms, GradientStats):
        layers = histograms.layer_names
    requested = layers
    layers = present if requested is None else [name for name in requested if name in present]
    if not layers:
        raise ValueError(f"none of the layers {list(requested or [])!r} has {kind!r} histogram records")
    columns = min(3, len(layers))
    nrows = math.ceil(len(layers) / columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(4.2 * columns, 3.2 * nrows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        mine = [r for r in rows if r["layer"] == layer]
        steps = sorted({r["step"] for r in mine})
        picks = sorted({steps[round(i * (len(steps) - 1) / max(1, snapshots - 1))] for i in range(snapshots)})
        for step in picks:
            bins = sorted((r for r in mine if r["step"] == step), key=lambda r: r["bin"])
            total = sum(r["count"] for r in bins) or 1
            centres = [(r["lo"] + r["hi"]) / 2 for r in bins]
            ax.step(centres, [r["count"] / total for r in bins], where="mid", label=f"step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{layer} ({kind})", fontsize=9)
        ax.set_xlabel(f"{kind} / max|{kind}|")
        ax.set_ylabel("fraction of entries")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layers) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "KINDS",
    "QUANT_CONFIG_KEYS",
    "GradientStats",
    "apply_quant_config",
    "plot_gradient_histograms",
    "quantize_model",
    "storage_records",
    "storage_table",
]
