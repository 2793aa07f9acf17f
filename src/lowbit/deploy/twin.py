"""The float twin of a binary model: the same network with its binary layers replaced by plain ones.

``float_twin(model)`` is what a binary model should be compared with for speed and
accuracy: the same topology, the same BatchNorms and shortcuts, every
:class:`lowbit.nn.BinaryConv2d` / :class:`lowbit.nn.BinaryLinear` turned back into an
``nn.Conv2d`` / ``nn.Linear`` with the same hyper-parameters, float inputs and float
weights (a copy of the latent weights). ``resnet18`` is not xnor_resnet18's twin:
their block layouts differ.
"""

from __future__ import annotations

import copy

from torch import nn

from lowbit.nn.binary import QuantizedWeightLayer


def _plain(layer: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        plain: nn.Module = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
    else:
        plain = nn.Linear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype
        )
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    plain.train(layer.training)
    return plain


def float_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every quantized Conv2d / Linear replaced by the plain float layer."""
    twin = copy.deepcopy(model)
    targets = [name for name, m in twin.named_modules() if isinstance(m, QuantizedWeightLayer)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, _plain(getattr(parent, child)))
    return twin


__all__ = ["float_twin"]
