"""``lowbit models``: one table of every registered model at its default settings."""

from __future__ import annotations

import inspect
from typing import List, Sequence, Tuple

from torch import nn

from lowbit.models.registry import MODELS, create_model, list_models
from lowbit.models.summary import BYTES_PER_MB, ModelSummary, bits_to_bytes, text_table, format_count, summary


def _build(name: str, input_shape: Tuple[int, ...]) -> nn.Module:
    """The model at its defaults with ``in_channels`` (and LeNet's ``input_size``) from ``input_shape``."""
    parameters = inspect.signature(MODELS.get(name)).parameters
    if "input_size" in parameters and len(input_shape) == 3 and input_shape[1] == input_shape[2]:
        try:
            return create_model(name, in_channels=input_shape[0], input_size=input_shape[-1])
        except ValueError:
            pass  # a size the model cannot be built for: its default, summarised on its own shape below
    return create_model(name, in_channels=input_shape[0])


def _summarise(model: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[ModelSummary, bool]:
    """The summary on ``input_shape``, or on the model's own ``input_shape`` (flag True) where it cannot run."""
    own = tuple(getattr(model, "input_shape", input_shape))
    if len(own) != len(input_shape):  # a model on vectors (the toy MLP): its own input
        return summary(model, own), False
    try:
        return summary(model, input_shape), False
    except RuntimeError:  # e.g. vgg_a's classifier expects 1x1 maps after five pools of 32x32
        return summary(model, own), True


def models_table(input_shape: Sequence[int] = (3, 32, 32)) -> str:
    """Every registered model at its defaults: parameters, fp32 size, and memory / MACs by precision.

    Image models are built with ``in_channels = input_shape[0]`` (and LeNet's
    ``input_size = input_shape[-1]``) and summarised on one input of
    ``input_shape``; a model on vectors (``toy_mlp``) uses its own
    ``input_shape``, and so does a model that cannot run on the requested shape
    (``vgg_a``'s classifier assumes 32x32), marked with ``*``. Quantized models
    also show their memory at stored precision and the split of parameters and
    MACs by precision (1 MB = 2^20 bytes; conventions in
    :mod:`lowbit.models.summary`). Runs in a few seconds on a CPU (one example
    per model, no gradients).
    """
    input_shape = tuple(int(d) for d in input_shape)
    header = ["Model", "Input", "Params", "FP32 (MB)", "Memory (MB)", "Params (memory) by precision"]
    header += ["MACs", "MACs by precision"]
    rows: List[List[str]] = []
    fallback = False
    for name in list_models():
        s, own_shape = _summarise(_build(name, input_shape), input_shape)
        fallback |= own_shape
        quantized = s.is_quantized
        by_params = ", ".join(
            f"{b}-bit {format_count(n)} ({bits_to_bytes({b: n}) / BYTES_PER_MB:.2f} MB)"
            for b, n in sorted(s.params_by_bits.items())
        )
        by_macs = ", ".join(f"{b}-bit {format_count(n)}" for b, n in sorted(s.macs_by_bits.items()))
        rows.append(
            [
                name,
                "x".join(map(str, s.input_shape)) + ("*" if own_shape else ""),
                f"{s.params:,}",
                f"{s.fp32_mb:.2f}",
                f"{s.memory_mb:.2f}" if quantized else "-",
                by_params if quantized else "-",
                format_count(s.macs),
                by_macs if quantized else "-",
            ]
        )
    notes = ["Memory: parameters at their stored precision; MACs per example; 1 MB = 2^20 bytes."]
    if fallback:
        notes.append("* built for a fixed input size: summarised on its own input shape.")
    return "\n".join([*text_table(header, rows), *notes])


__all__ = ["models_table"]
