"""Convert a float model's layers into binary layers in place."""

from __future__ import annotations

from typing import List, Tuple

from torch import nn

from lowbit.nn.binary import BinaryConv2d, BinaryLinear, QuantizedWeightLayer
from lowbit.nn.spec import QuantizerSpec


def _binary_like(layer: nn.Module, input_quantizer: QuantizerSpec, weight_quantizer: QuantizerSpec) -> nn.Module:
    """A BinaryConv2d/BinaryLinear with ``layer``'s hyper-parameters, sharing its Parameter objects."""
    weight = layer.weight
    common = dict(
        bias=layer.bias is not None,
        input_quantizer=input_quantizer,
        weight_quantizer=weight_quantizer,
        device=weight.device,
        dtype=weight.dtype,
    )
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = BinaryConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **common,
        )
    else:
        new = BinaryLinear(layer.in_features, layer.out_features, **common)
    # The same Parameter objects: values, requires_grad and optimizer state are kept.
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def binarize(
    model: nn.Module,
    input_quantizer: QuantizerSpec = "ste_clipped",
    weight_quantizer: QuantizerSpec = "xnor_weight",
    keep_first_last: bool = True,
) -> nn.Module:
    """Replace the model's ``nn.Conv2d`` / ``nn.Linear`` layers by binary ones, in place; returns ``model``.

    Each converted layer becomes a :class:`BinaryConv2d` / :class:`BinaryLinear`
    with the same hyper-parameters that *shares* the original weight and bias
    Parameters (so values and optimizer references survive) and gets its own
    quantizer instances built from the specs (a module spec is deep-copied per
    layer). With ``keep_first_last`` the first and the last Conv2d/Linear stay
    float, as in XNOR-Net and Bi-Real Net.

    "First" and "last" are in module registration order (``named_modules``),
    which is the execution order for the usual ``Sequential``/ResNet layouts but
    not necessarily for a model that registers a layer before it uses an
    earlier one. Only layers whose type is exactly ``nn.Conv2d`` or
    ``nn.Linear`` are converted (subclasses may have their own forward);
    already quantized layers are left alone but count for first/last, so
    calling ``binarize`` twice is harmless. A module reachable under two names
    is replaced under its first name only.
    """
    candidates: List[Tuple[str, nn.Module]] = [
        (name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    if keep_first_last:
        candidates = candidates[1:-1]
    for name, module in candidates:
        if type(module) not in (nn.Conv2d, nn.Linear) or isinstance(module, QuantizedWeightLayer):
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, _binary_like(module, input_quantizer, weight_quantizer))
    return model


__all__ = ["binarize"]
