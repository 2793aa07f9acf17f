"""A Larq-style model summary: parameters, memory and MACs by precision.

``summary(model, input_shape)`` runs one forward pass on a zero input of shape
``(1, *input_shape)`` (eval mode, no grad; every module's train/eval flag is
restored afterwards) with forward hooks that record each layer's output shape
and multiply-accumulates, and returns a :class:`ModelSummary`.

Rows are the modules that hold parameters directly (Conv, Linear, BatchNorm,
...) plus every quantized layer (any module with ``input_quantizer`` and
``weight_quantizer`` attributes, e.g. :class:`lowbit.nn.BinaryConv2d`), whose
quantizers' own parameters, if any, are counted with it. Rows are ordered by
first call in the forward pass (never-called layers last).

Precision accounting (Larq's conventions):

- A layer's *weight* is stored at the precision of its weight quantizer
  (``xnor_weight`` -> 1 bit, ``uniform_weight(bits)`` -> bits, none -> 32; see
  :func:`lowbit.nn.quantizer_bits`); biases, BatchNorm and every other
  parameter at 32 bits. Memory = sum(count x bits) / 8 bytes. The per-channel
  scales of ``xnor_weight`` are computed from the latent weights and are not
  counted (a deployed model would store one float per output channel).
- A layer's *input* precision is that of its input quantizer (none -> 32): a
  float layer that happens to follow a sign activation is still counted as
  32-bit input.
- MACs of a Conv/Linear call = output elements x (in_channels / groups) x kernel
  area (Linear: output elements x in_features), for one example. They are
  counted at precision max(weight bits, input bits): binary x binary -> 1-bit
  MACs (XNOR-popcount), 8-bit x 8-bit -> 8-bit MACs, binary weights on float
  inputs -> 32-bit MACs. Pooling, BatchNorm and activations count no MACs.
- Units: memory per layer in kB, totals in MB, with 1 kB = 1024 bytes and 1 MB =
  2^20 bytes (Larq's kB; the notes' "MB" of a model file). Buffers (BatchNorm
  running statistics) are not parameters and are not counted in ``params`` or
  ``memory_bytes``.

Larq's figures, beside lowbit's own (docs/models.md compares them model by
model). Keras stores a BatchNorm layer's moving mean and variance as
*non-trainable weights*, and Larq's ``lq.models.summary`` and larq-zoo's
documentation count them; PyTorch keeps them as buffers. Every BatchNorm module
is therefore a row here, whether or not it has affine parameters, and:

- ``non_trainable_params``: BatchNorm running mean + variance (2 per channel)
  plus parameters with ``requires_grad=False`` -- Keras's "Non-trainable params".
- ``params_with_statistics`` = ``params`` + BatchNorm statistics -- Keras's
  ``count_params()``, Larq's "Total params" and larq-zoo's "Parameters".
- ``fused_params_by_bits`` / ``fused_memory_bytes``: the per-layer counts of
  Larq's summary table and its "Model size", where a BatchNorm layer counts
  exactly 2 x 32-bit values per channel whatever its affine flags (at inference
  it is one scale and one offset per channel: Larq pops gamma and beta, fused
  into the moving variance and mean).
- ``memory_with_statistics_bytes`` = ``memory_bytes`` + 4 bytes per BatchNorm
  statistic -- larq-zoo's docstring "Memory" column (every Keras weight at its
  stored precision).

MACs follow the same rules in both (Larq counts Conv, Dense and depthwise
Conv, at the larger of the input and weight precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from lowbit.nn import FLOAT_BITS, quantizer_bits

BYTES_PER_KB = 1024
BYTES_PER_MB = 1024**2


def bits_to_bytes(params_by_bits: Dict[int, int]) -> float:
    return sum(count * bits for bits, count in params_by_bits.items()) / 8


def _add(into: Dict[int, int], key: int, value: int) -> None:
    into[key] = into.get(key, 0) + value


class _SizeAndMacs:
    """Derived totals shared by a layer row and the whole-model summary."""

    params: int
    params_by_bits: Dict[int, int]
    macs_by_bits: Dict[int, int]

    @property
    def memory_bytes(self) -> float:
        """Memory of the parameters at their stored precisions, in bytes."""
        return bits_to_bytes(self.params_by_bits)

    @property
    def fp32_mb(self) -> float:
        """Memory of the parameters if all were float32, in MB (2^20 bytes)."""
        return self.params * 4 / BYTES_PER_MB

    @property
    def macs(self) -> int:
        return sum(self.macs_by_bits.values())

    @property
    def fused_memory_bytes(self) -> float:
        """Memory with every BatchNorm as 2 x 32-bit values per channel (Larq's "Model size"), bytes."""
        return bits_to_bytes(self.fused_params_by_bits)

    @property
    def memory_with_statistics_bytes(self) -> float:
        """Memory of the parameters plus the BatchNorm statistics at 32 bits (larq-zoo's "Memory"), bytes."""
        return self.memory_bytes + self.bn_statistics * FLOAT_BITS / 8


@dataclass
class LayerSummary(_SizeAndMacs):
    """One row: a parameterised or quantized layer."""

    name: str
    kind: str  # class name
    output_shape: Optional[Tuple[int, ...]]  # of one example (batch dim dropped); None if never called
    params: int
    params_by_bits: Dict[int, int]  # bits -> number of parameters stored at that precision
    weight_bits: Optional[int] = None  # Conv/Linear only
    input_bits: Optional[int] = None  # Conv/Linear only
    macs_by_bits: Dict[int, int] = field(default_factory=dict)  # MAC precision -> MACs per example
    bn_channels: Optional[int] = None  # BatchNorm rows: num_features

    @property
    def bn_statistics(self) -> int:
        """BatchNorm running mean + variance (Keras's non-trainable weights): 2 per channel; 0 for other rows."""
        return 2 * self.bn_channels if self.bn_channels else 0

    @property
    def fused_params_by_bits(self) -> Dict[int, int]:
        """Larq's per-layer count: a BatchNorm is 2 x 32-bit values per channel; other rows as ``params_by_bits``."""
        if self.bn_channels is not None:
            return {FLOAT_BITS: 2 * self.bn_channels}
        return dict(self.params_by_bits)

    @property
    def memory_kb(self) -> float:
        return self.memory_bytes / BYTES_PER_KB

    @property
    def quantized(self) -> bool:
        return any(b is not None and b < FLOAT_BITS for b in (self.weight_bits, self.input_bits))


@dataclass
class ModelSummary(_SizeAndMacs):
    """Per-layer rows and totals; see the module docstring for the conventions."""

    name: str
    input_shape: Tuple[int, ...]
    layers: List[LayerSummary]
    params: int  # distinct parameters (a shared tensor is counted once)
    trainable_params: int
    params_by_bits: Dict[int, int]
    macs_by_bits: Dict[int, int]
    bn_statistics: int = 0  # BatchNorm running mean + variance entries (buffers; Keras: non-trainable weights)
    fused_params_by_bits: Dict[int, int] = field(default_factory=dict)  # Larq's table: BatchNorm as 2 per channel

    @property
    def memory_mb(self) -> float:
        """Memory of the parameters at their stored precisions, in MB (2^20 bytes)."""
        return self.memory_bytes / BYTES_PER_MB

    @property
    def params_with_statistics(self) -> int:
        """Parameters plus BatchNorm statistics: Keras's ``count_params()``, Larq's "Total params"."""
        return self.params + self.bn_statistics

    @property
    def non_trainable_params(self) -> int:
        """BatchNorm statistics plus frozen parameters: Keras's "Non-trainable params"."""
        return self.bn_statistics + self.params - self.trainable_params

    @property
    def fused_memory_mb(self) -> float:
        """Larq's "Model size" in MB (2^20 bytes): BatchNorm as 2 x 32 bits per channel."""
        return self.fused_memory_bytes / BYTES_PER_MB

    @property
    def memory_with_statistics_mb(self) -> float:
        """larq-zoo's "Memory" in MB (2^20 bytes): parameters plus BatchNorm statistics at 32 bits."""
        return self.memory_with_statistics_bytes / BYTES_PER_MB

    @property
    def binary_mac_ratio(self) -> float:
        """Fraction of the MACs at 1 bit (Larq's "Ratio of MACs that are binarized")."""
        return self.macs_by_bits.get(1, 0) / self.macs if self.macs else 0.0

    @property
    def is_quantized(self) -> bool:
        return any(layer.quantized for layer in self.layers)

    @property
    def bits(self) -> List[int]:
        """Every precision that occurs in the parameters or the MACs, ascending."""
        return sorted(set(self.params_by_bits) | set(self.macs_by_bits))


def _is_quantized_layer(module: nn.Module) -> bool:
    return hasattr(module, "weight_quantizer") and hasattr(module, "input_quantizer")


def _macs(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-accumulates of one call (the batch is 1)."""
    if isinstance(module, _ConvNd):
        kernel_area = 1
        for k in module.kernel_size:
            kernel_area *= k
        return output.numel() * (module.in_channels // module.groups) * kernel_area
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def summary(model: nn.Module, input_shape: Sequence[int]) -> ModelSummary:
    """Parameters, memory and MACs by precision of ``model`` for one input of ``input_shape`` (no batch dim)."""
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty shape of positive sizes (no batch dim), got {input_shape!r}")

    # --- rows and their parameters ---------------------------------------------------
    rows: Dict[str, LayerSummary] = {}
    modules: Dict[str, nn.Module] = {}
    seen: set = set()
    quantized_prefixes: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in quantized_prefixes):
            continue  # inside a quantized layer: counted with it
        quantized = _is_quantized_layer(module)
        if quantized:
            quantized_prefixes.append(f"{name}." if name else "")
        own = list(module.named_parameters(recurse=quantized))
        is_compute = isinstance(module, (_ConvNd, nn.Linear))
        is_bn = isinstance(module, _BatchNorm)
        if not own and not quantized and not is_compute and not is_bn:
            continue
        weight_bits = input_bits = None
        if quantized:
            weight_bits = quantizer_bits(module.weight_quantizer)
            input_bits = quantizer_bits(module.input_quantizer)
        elif is_compute:
            weight_bits = input_bits = FLOAT_BITS
        params_by_bits: Dict[int, int] = {}
        count = 0
        for param_name, param in own:
            if id(param) in seen:
                continue
            seen.add(id(param))
            bits = weight_bits if (param_name == "weight" and weight_bits is not None) else FLOAT_BITS
            _add(params_by_bits, bits, param.numel())
            count += param.numel()
        rows[name] = LayerSummary(
            name or "(model)",
            type(module).__name__,
            None,
            count,
            params_by_bits,
            weight_bits,
            input_bits,
            bn_channels=module.num_features if is_bn and module.track_running_stats else None,
        )
        modules[name] = module

    # --- one forward pass with hooks ---------------------------------------------------
    call_order: Dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            row = rows[name]
            call_order.setdefault(name, len(call_order))
            if isinstance(output, torch.Tensor):
                row.output_shape = tuple(output.shape[1:])
                macs = _macs(module, inputs, output)
                if macs:
                    _add(row.macs_by_bits, max(row.weight_bits or FLOAT_BITS, row.input_bits or FLOAT_BITS), macs)

        return hook

    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        model.eval()  # BatchNorm on a batch of 1 needs running statistics; MaxDropout off
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode

    never_called = len(call_order)
    layers = [rows[name] for name in sorted(rows, key=lambda name: call_order.get(name, never_called))]
    params_by_bits: Dict[int, int] = {}
    fused_params_by_bits: Dict[int, int] = {}
    macs_by_bits: Dict[int, int] = {}
    for row in layers:
        for bits, n in row.params_by_bits.items():
            _add(params_by_bits, bits, n)
        for bits, n in row.fused_params_by_bits.items():
            _add(fused_params_by_bits, bits, n)
        for bits, n in row.macs_by_bits.items():
            _add(macs_by_bits, bits, n)
    distinct = {id(p): p for p in model.parameters()}
    # Parameters of modules that are not rows (none in practice) still count, at 32 bits.
    missing = sum(p.numel() for i, p in distinct.items() if i not in seen)
    if missing:
        _add(params_by_bits, FLOAT_BITS, missing)
        _add(fused_params_by_bits, FLOAT_BITS, missing)
    return ModelSummary(
        name=type(model).__name__,
        input_shape=input_shape,
        layers=layers,
        params=sum(p.numel() for p in distinct.values()),
        trainable_params=sum(p.numel() for p in distinct.values() if p.requires_grad),
        params_by_bits=params_by_bits,
        macs_by_bits=macs_by_bits,
        bn_statistics=sum(row.bn_statistics for row in layers),
        fused_params_by_bits=fused_params_by_bits,
    )


# --- formatting ----------------------------------------------------------------------


def format_count(n: float) -> str:
    """12345678 -> '12.35 M', 12345 -> '12.35 k', 123 -> '123'."""
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{int(n)}"


def text_table(header: List[str], rows: List[List[str]], footer: Optional[List[str]] = None) -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows, *([footer] if footer else [])]) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(line(header))
    out = [rule, line(header), rule, *(line(r) for r in rows)]
    if footer:
        out += [rule, line(footer)]
    out.append(rule)
    return out


def format_summary(s: ModelSummary) -> str:
    """A plain-text table: one row per layer, then totals (Larq's ``lq.models.summary`` layout)."""
    bits = s.bits
    header = ["Layer (type)", "Output shape", "Bits (w/in)", "# params"]
    header += [f"# {b}-bit" for b in bits] + ["Memory (kB)"] + [f"{b}-bit MACs" for b in bits]
    rows = []
    for layer in s.layers:
        precision = "" if layer.weight_bits is None else f"{layer.weight_bits}/{layer.input_bits}"
        shape = "?" if layer.output_shape is None else str(tuple(layer.output_shape))
        row = [f"{layer.name} ({layer.kind})", shape, precision, str(layer.params)]
        row += [str(layer.params_by_bits.get(b, 0)) for b in bits]
        row += [f"{layer.memory_kb:.2f}"]
        row += [str(layer.macs_by_bits.get(b, 0)) for b in bits]
        rows.append(row)
    footer = ["Total", "", "", str(s.params)]
    footer += [str(s.params_by_bits.get(b, 0)) for b in bits]
    footer += [f"{s.memory_bytes / BYTES_PER_KB:.2f}"]
    footer += [str(s.macs_by_bits.get(b, 0)) for b in bits]
    lines = [f"{s.name} summary, input {(1, *s.input_shape)}"]
    lines += text_table(header, rows, footer)
    lines.append(f"Total params: {format_count(s.params)} ({s.params:,}); trainable: {s.trainable_params:,}")
    lines.append(f"Float-32 equivalent: {s.fp32_mb:.2f} MB")
    if s.is_quantized:
        by_bits = ", ".join(
            f"{b}-bit {bits_to_bytes({b: n}) / BYTES_PER_MB:.2f} MB" for b, n in sorted(s.params_by_bits.items())
        )
        lines.append(f"Model memory: {s.memory_mb:.2f} MB ({by_bits}); compression {s.fp32_mb / s.memory_mb:.2f}x")
    macs = ", ".join(f"{b}-bit {format_count(n)}" for b, n in sorted(s.macs_by_bits.items())) or "none"
    lines.append(f"MACs: {format_count(s.macs)} ({macs})")
    if s.bn_statistics:
        lines.append(
            f"Larq/Keras convention: {s.params_with_statistics:,} params with {s.bn_statistics:,} BatchNorm "
            f"statistics ({s.non_trainable_params:,} non-trainable); model size {s.fused_memory_mb:.2f} MB with "
            f"BatchNorm fused to 2 values per channel, {s.memory_with_statistics_mb:.2f} MB with the statistics"
        )
    return "\n".join(lines)


__all__ = ["LayerSummary", "ModelSummary", "format_count", "format_summary", "summary"]
