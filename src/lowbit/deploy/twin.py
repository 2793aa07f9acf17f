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
from lowbit.nn.convert import layer_like


def _plain(layer: nn.Module) -> nn.Module:
    """The plain nn.Conv2d / nn.Linear with ``layer``'s hyper-parameters and Parameters (of the copy)."""
    return layer_like(layer, nn.Conv2d, nn.Linear, device=layer.weight.device, dtype=layer.weight.dtype)


def float_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every quantized Conv2d / Linear replaced by the plain float layer.

    The plain layers hold the copy's latent weights (its own tensors: ``model`` is not shared).
    """
    twin = copy.deepcopy(model)
    targets = [name for name, m in twin.named_modules() if isinstance(m, QuantizedWeightLayer)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, _plain(getattr(parent, child)))
    return twin


__all__ = ["float_twin"]
