"""Binary layers whose sign cannot see a sign: non-negative inputs by construction, constant on a batch.

A sign quantizer after a ReLU (or ReLU6, sigmoid, softmax) maps every input to
+1 (sign(0) = +1): the binary activations are constant, the layer passes no
information and the network trains at chance. Two checks find such layers:

- :func:`nonnegative_inputs` (static, no data): traces the model with
  ``torch.fx`` and, for each binary layer, follows its input back through
  operations that keep a tensor non-negative (pooling, flatten, reshape,
  dropout, padding, a sum or concatenation of non-negative tensors) to an
  operation whose output is non-negative by construction. Models that
  ``torch.fx`` cannot trace (data-dependent Python control flow) are skipped.
- :func:`constant_quantized_inputs` (measured): runs one batch through the model
  (in its current train/eval mode; BatchNorm statistics, every buffer and the
  global RNG are restored afterwards) and reports the layers whose quantized
  input takes a single value over the whole batch.

``lowbit.nn.binarize`` runs both and warns with :class:`DeadSignWarning`.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.latent import is_quantized_layer


class DeadSignWarning(UserWarning):
    """A binary layer's sign sees an input that is non-negative by construction or constant on a batch."""


# Outputs >= 0 whatever the input.
_NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softmax, nn.Softmax2d, nn.Hardsigmoid, nn.Softplus)
_NONNEGATIVE_FUNCTIONS = {
    F.relu: "relu",
    F.relu_: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    F.relu6: "relu6",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid",
    torch.softmax: "softmax",
    F.softmax: "softmax",
    F.softplus: "softplus",
}
_NONNEGATIVE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "softmax"}
# Non-negative in -> non-negative out (first tensor argument).
_KEEPING_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.Upsample,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
_KEEPING_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.dropout,
    F.interpolate,
    F.pad,
    operator.getitem,
}
_KEEPING_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze", "clone", "mean"}
_ALL_NONNEGATIVE_FUNCTIONS = {operator.add, torch.add, operator.mul, torch.mul, torch.cat, torch.stack}


def is_sign_like(quantizer: Optional[nn.Module]) -> bool:
    """A quantizer whose output has the sign of its input and maps 0 and every x > 0 to one value."""
    from lowbit.quant import MagnitudeAwareSign

    return quantizer is not None and (getattr(quantizer, "forward_is_sign", False) or isinstance(quantizer, MagnitudeAwareSign))


class _LeafTracer(torch.fx.Tracer):
    """Keeps quantized layers, quantizers and every module without submodules as single nodes.

    Quantizers' autograd Functions do not trace; a module of user or library code
    without submodules (a BatchNorm subclass whose forward checks ``x.dim()``, a
    custom activation) is opaque either way: its output sign is unknown, which is
    the conservative answer (only known producers count as non-negative).
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from lowbit.quant import Quantizer

        return (super().is_leaf_module(m, qualname) or is_quantized_layer(m) or isinstance(m, Quantizer)
                or next(m.children(), None) is None)


def nonnegative_inputs(model: nn.Module, layer_names: Sequence[str]) -> Optional[Dict[str, str]]:
    """For each named layer whose input is >= 0 by construction: what makes it so, e.g. "ReLU 'layer1.0.act1'".

    None if ``torch.fx`` cannot trace the model (then nothing is known statically).
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # data-dependent control flow, unsupported ops: no static answer
        return None
    modules = dict(model.named_modules())
    producer: Dict[Any, Optional[str]] = {}  # node -> why its output is non-negative, or None

    def why(arg: Any) -> Optional[str]:
        return producer.get(arg) if isinstance(arg, torch.fx.Node) else None

    found: Dict[str, str] = {}
    wanted = set(layer_names)
    for node in graph.nodes:
        reason: Optional[str] = None
        first = node.args[0] if node.args else None
        if node.op == "call_module":
            module = modules.get(node.target)
            if node.target in wanted and why(first):
                found[node.target] = why(first)  # type: ignore[assignment]
            if isinstance(module, _NONNEGATIVE_MODULES):
                reason = f"{type(module).__name__} {node.target!r}"
            elif isinstance(module, _KEEPING_MODULES):
                reason = why(first)
        elif node.op == "call_function":
            if node.target in _NONNEGATIVE_FUNCTIONS:
                reason = f"{_NONNEGATIVE_FUNCTIONS[node.target]}() in {_where(node)}"
            elif node.target in _KEEPING_FUNCTIONS:
                reason = why(first)
            elif node.target in _ALL_NONNEGATIVE_FUNCTIONS:
                tensors = [a for a in _flat(node.args) if isinstance(a, torch.fx.Node)]
                reasons = [why(a) for a in tensors]
                if tensors and all(reasons):
                    reason = reasons[0]
        elif node.op == "call_method":
            if node.target in _NONNEGATIVE_METHODS:
                reason = f".{node.target}() in {_where(node)}"
            elif node.target in _KEEPING_METHODS:
                reason = why(first)
        producer[node] = reason
    return found


def _flat(args: Any) -> list:
    out: list = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") if hasattr(node, "meta") else None
    return f"{list(stack)[-1]!r}" if stack else "the model's forward"


@contextlib.contextmanager
def _untouched(model: nn.Module):
    """Run the model without lasting effects: buffers (BatchNorm statistics) and the CPU RNG restored."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            yield
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)


def constant_quantized_inputs(
    model: nn.Module, layer_names: Sequence[str], example_input: Any
) -> Dict[str, Tuple[float, int]]:
    """Layers whose quantized input is one value over the whole batch: ``{name: (value, numel)}``.

    ``example_input`` is a tensor or a tuple of positional inputs. Layers without an
    input quantizer, or not reached by the forward pass, are not reported.
    """
    modules = dict(model.named_modules())
    seen: Dict[str, Tuple[float, int]] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.numel() > 1:
                lo, hi = output.min(), output.max()
                if bool(lo == hi):
                    seen[name] = (float(lo), output.numel())
                else:
                    seen.pop(name, None)

        return hook

    for name in layer_names:
        quantizer = getattr(modules[name], "input_quantizer", None)
        if quantizer is not None:
            handles.append(quantizer.register_forward_hook(hook_for(name)))
    try:
        with _untouched(model):
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return seen


__all__ = ["DeadSignWarning", "constant_quantized_inputs", "is_sign_like", "nonnegative_inputs"]
