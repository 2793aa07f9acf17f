"""Convert a float model's Conv2d/Linear layers in place: shared machinery and `binarize`."""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

from torch import nn

from lowbit.nn.binary import BinaryConv2d, BinaryLinear, QuantizedWeightLayer
from lowbit.nn.spec import QuantizerSpec


def layer_like(layer: nn.Module, conv_cls: type, linear_cls: type, **options: Any) -> nn.Module:
    """A ``conv_cls`` / ``linear_cls`` with ``layer``'s hyper-parameters, sharing its Parameter objects.

    ``options`` go to the new layer's constructor (quantizers, bits, ``device``).
    """
    options = dict(bias=layer.bias is not None, **options)
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = conv_cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **options,
        )
    else:
        new = linear_cls(layer.in_features, layer.out_features, **options)
    # The same Parameter objects: values, requires_grad and optimizer state are kept.
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def replace_layers(model: nn.Module, convert: Callable[[nn.Module], nn.Module], keep_first_last: bool) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` / ``nn.Linear`` of ``model`` by ``convert(layer)``, in place.

    "First" and "last" (kept when ``keep_first_last``) are in module
    registration order. Only layers whose type is exactly ``nn.Conv2d`` or
    ``nn.Linear`` are converted; already quantized layers are left alone but
    count for first/last, so converting twice is harmless. A module reachable
    under two names is replaced under its first name only.
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
        setattr(parent, child_name, convert(module))
    return model


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
    def convert(layer: nn.Module) -> nn.Module:
        return layer_like(
            layer,
            BinaryConv2d,
            BinaryLinear,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )

    return replace_layers(model, convert, keep_first_last)


__all__ = ["binarize", "layer_like", "replace_layers"]
