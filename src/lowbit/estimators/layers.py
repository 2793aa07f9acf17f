"""Which weights of a network a gradient study looks at: its conv and linear layers, by name.

Shared by the probe's network task (``lowbit.probe.network``) and the in-training
gradient probe (``lowbit.train.grad_probe``), so neither imports the other.
"""

from __future__ import annotations

from typing import List

from torch import nn


def studied_weight(model: nn.Module, layer: str) -> str:
    """The parameter name probed for ``layer``: a module name ("layer1.0.conv1") or a parameter name.

    Raises ValueError naming the nearest valid layer.
    """
    params = dict(model.named_parameters())
    if layer in params:
        return layer
    if f"{layer}.weight" in params:
        return f"{layer}.weight"
    from lowbit.registry import nearest

    valid = probe_layers(model)
    hint = nearest(layer, valid)
    raise ValueError(
        f"the model has no layer {layer!r}" + (f"; did you mean {hint!r}?" if hint else "") + f" (conv/linear layers: {', '.join(valid)})"
    )


def probe_layers(model: nn.Module) -> List[str]:
    """Names of the model's conv and linear layers (what ``probe.layers`` may list), in order."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name]


__all__ = ["probe_layers", "studied_weight"]
