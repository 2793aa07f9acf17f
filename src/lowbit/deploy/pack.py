"""``pack_model``: a trained binary model -> an inference-only model whose binary layers run on bits.

The model is traced with ``torch.fx`` (binary layers as leaves) and rewritten:

- every :class:`lowbit.nn.BinaryConv2d` / :class:`lowbit.nn.BinaryLinear` becomes a
  :class:`PackedBinaryConv2d` / :class:`PackedBinaryLinear` (weights packed 64 signs
  per int64 word, XNOR-popcount kernels);
- a binary layer whose only consumer is another binary layer, directly or through an
  eval-mode BatchNorm used by nothing else, emits bits: the BatchNorm and the
  consumer's sign are folded into integer thresholds on its accumulator
  (``fold.sign_thresholds``), the BatchNorm node disappears, and the activations
  stay packed from one layer to the next;
- everything else (float stem, shortcuts, pooling, head) is kept as it is.

The result computes what the source model computes in eval mode with the exact
eval form of its binary layers (``lowbit.nn.set_exact_eval``): the same logits, bit
for bit, on any input. The default eval form sums float32 multiples of alpha and
differs from it by float32 rounding only.

Before any work, every layer the packer cannot handle is reported in one
:class:`PackError` (a ValueError): binary layers with non-sign inputs or non-binary
weights, non-zero padding modes, k-bit layers, layers called more than once, a
model that is not float32 on the CPU, or a forward that ``torch.fx`` cannot trace.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Dict, List, Optional

import torch
import torch.fx as fx
from torch import nn

from lowbit.deploy.layers import PackedBinaryConv2d, PackedBinaryLinear, conv_padding
from lowbit.nn.binary import BinaryConv2d, BinaryLinear, QuantizedWeightLayer, binary_weight_parts, is_sign_quantizer
from lowbit.nn.spec import quantizer_name


class PackError(ValueError):
    """The model has layers the packer cannot handle; the message names every one."""


class _BinaryLeafTracer(fx.Tracer):
    """torch.fx tracer that keeps quantized layers (and torch.nn's own modules) as single nodes."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, QuantizedWeightLayer) or super().is_leaf_module(module, qualified_name)


def packing_problems(model: nn.Module) -> List[str]:
    """One line per layer of ``model`` (in eval mode) that :func:`pack_model` cannot pack; empty if none."""
    problems = []
    for name, module in model.named_modules():
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            reasons = []
            if not is_sign_quantizer(module.input_quantizer):
                reasons.append(f"input quantizer {quantizer_name(module.input_quantizer)!r} is not a sign")
            if binary_weight_parts(module.weight_quantizer, module.weight.detach()) is None:
                reasons.append(
                    f"weight quantizer {quantizer_name(module.weight_quantizer)!r} is not a scaled sign "
                    "(xnor_weight, magnitude_aware_sign or a sign quantizer)"
                )
            if isinstance(module, BinaryConv2d):
                if module.padding_mode != "zeros":
                    reasons.append(f"padding_mode={module.padding_mode!r} (only 'zeros' is packed)")
                try:
                    conv_padding(module)
                except ValueError as error:
                    reasons.append(str(error))
            if reasons:
                problems.append(f"{name} ({type(module).__name__}): " + "; ".join(reasons))
        elif isinstance(module, QuantizedWeightLayer):
            problems.append(
                f"{name} ({type(module).__name__}): a k-bit layer, not binary (export it with --format onnx instead)"
            )
    for pname, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            problems.append(f"{pname}: dtype {tensor.dtype}; the packed kernels compute in float32 (call model.float())")
            break
        if tensor.device.type != "cpu":
            problems.append(f"{pname}: on {tensor.device}; the packed kernels run on the CPU (call model.cpu())")
            break
    return problems


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _BinaryLeafTracer().trace(model)
    except Exception as error:
        raise PackError(
            f"cannot pack {type(model).__name__}: torch.fx cannot trace its forward ({type(error).__name__}: {error}); "
            "packing needs a forward without data-dependent control flow"
        ) from error
    return fx.GraphModule(model, graph)


def _is_binary(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), (BinaryConv2d, BinaryLinear))


def _foldable_bn(gm: fx.GraphModule, node: fx.Node, spatial: bool) -> bool:
    if node.op != "call_module":
        return False
    bn = gm.get_submodule(str(node.target))
    kind = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    # Eval mode with running statistics: a fixed per-channel affine map (batch statistics are not foldable).
    return type(bn) is kind and bn.running_mean is not None and len(node.args) == 1 and not node.kwargs


def _chains(gm: fx.GraphModule, binary: List[fx.Node]) -> Dict[fx.Node, tuple]:
    """producer node -> (BatchNorm node or None, consumer node) for every bits-to-bits link."""
    links: Dict[fx.Node, tuple] = {}
    for node in binary:
        layer = gm.get_submodule(str(node.target))
        spatial = isinstance(layer, BinaryConv2d)
        users = list(node.users)
        if len(users) != 1:
            continue
        bn: Optional[fx.Node] = None
        consumer = users[0]
        if _foldable_bn(gm, consumer, spatial) and len(consumer.users) == 1:
            bn, consumer = consumer, next(iter(consumer.users))
        if consumer not in binary or len(consumer.args) != 1 or consumer.kwargs or consumer.args[0] is not (bn or node):
            continue
        if isinstance(gm.get_submodule(str(consumer.target)), BinaryConv2d) != spatial:
            continue  # conv -> linear needs a flatten in between: the consumer packs the float output
        links[node] = (bn, consumer)
    return links


def _replace_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, child = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


class PackedModel(nn.Module):
    """An inference-only model with packed binary layers (``pack_model``'s result).

    ``forward`` runs under ``torch.no_grad``; ``layers()`` lists the packed layers by
    name; ``source`` names the model class it was packed from.
    """

    def __init__(self, graph_module: fx.GraphModule, source: str) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.source = source

    @torch.no_grad()
    def forward(self, *args: Any) -> Any:
        return self.graph_module(*args)

    def layers(self) -> Dict[str, nn.Module]:
        """{name: PackedBinaryConv2d | PackedBinaryLinear} in module order."""
        return {
            name: m
            for name, m in self.graph_module.named_modules()
            if isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear))
        }

    def train(self, mode: bool = True) -> "PackedModel":
        if mode:
            raise ValueError("a packed model is inference-only; train the source model and pack it again")
        return super().train(False)


def pack_model(model: nn.Module) -> PackedModel:
    """Pack ``model``'s binary layers (see the module docstring); ``model`` itself is not changed.

    Raises :class:`PackError` naming every layer the packer cannot handle, before packing any.
    """
    model = copy.deepcopy(model).eval()
    problems = packing_problems(model)
    if problems:
        raise PackError(
            f"cannot pack {type(model).__name__}: {len(problems)} layer(s) the packer cannot handle:\n  - "
            + "\n  - ".join(problems)
        )
    gm = _trace(model)
    binary = [n for n in gm.graph.nodes if _is_binary(gm, n)]
    calls = Counter(str(n.target) for n in binary)
    repeated = [f"{target} (called {count} times)" for target, count in calls.items() if count > 1]
    if repeated:
        raise PackError(
            f"cannot pack {type(model).__name__}: binary layers called more than once in forward (each call "
            f"site needs its own packed layer): {', '.join(repeated)}"
        )
    links = _chains(gm, binary)
    consumers = {consumer for _, consumer in links.values()}
    for node in binary:
        layer = gm.get_submodule(str(node.target))
        bn_node, consumer = links.get(node, (None, None))
        out_bn = gm.get_submodule(str(bn_node.target)) if bn_node is not None else None
        out_groups = None
        if consumer is not None:
            out_groups = getattr(gm.get_submodule(str(consumer.target)), "groups", 1)
        packed_cls = PackedBinaryConv2d if isinstance(layer, BinaryConv2d) else PackedBinaryLinear
        _replace_module(gm, str(node.target), packed_cls(layer, node in consumers, out_bn, out_groups))
    for bn_node, consumer in links.values():
        if bn_node is not None:
            consumer.replace_input_with(bn_node, bn_node.args[0])
            gm.graph.erase_node(bn_node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return PackedModel(gm, type(model).__name__)


__all__ = ["PackError", "PackedModel", "pack_model", "packing_problems"]
