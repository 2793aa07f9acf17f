"""GraphObjective: many parameter sets of a few layers of a large network, evaluated fast.

Studying one layer of a network (CDG, NES, line searches) means evaluating the
loss for a population of P values of that layer's weight, everything else fixed.
The plain way (one forward per member, or ``vmap`` over the whole network)
recomputes the part of the network that does not depend on the studied weight
P times. This objective traces the network once with ``torch.fx`` and splits
its graph:

- *constant* nodes do not depend on the studied parameters (the input, the
  layers before the studied one, side branches): computed once, at
  construction, and cached;
- *dependent* nodes are recomputed for the population, with the population
  folded into the batch: an activation of a population of P members on a batch
  of N samples is one tensor of shape (P·N, ...), member-major, so every
  per-sample operation (conv with fixed weights, ReLU, sign, pooling, addition)
  runs once on the big batch unchanged. Only three kinds of operation need to
  know about members: the studied layer itself (a conv/linear whose weight
  differs per member: one conv with P·C_out output channels, or a grouped conv
  with groups = P), BatchNorm with batch statistics (statistics per member,
  over its own N samples) and the loss (one value per member). Operations on
  the studied weight alone (the weight quantizer, e.g. sign(W)·mean|W|) are
  ``vmap``-ed over the members (looped where vmap cannot batch them).

**Exact pruning of unchanged members.** After every dependent node, a member
whose every still-needed dependent value equals the unperturbed network's
value bit for bit cannot change the loss any more: its loss is the base loss
exactly, and it is dropped from the rest of the evaluation. In a binary
network this is what makes coordinate-wise probing cheap: a perturbation that
does not flip any downstream sign activation (e.g. a weight whose sign and
hence binary value does not change when the next op is a batch-statistics
BatchNorm, which is invariant to the channel scale mean|W|) stops at the first
sign activation. ``prune_unchanged=False`` turns this off (same results, for
checking).

**Channel pre-filter.** When the studied weight is that of a conv whose output
goes only into a BatchNorm and then only into a sign activation (the first
conv of every XNOR block), a member that changes one output channel of the
quantized weight (a single-coordinate move, as in CDG: sign(w) or the scale
mean|W| of that channel) can change the sign activation in that channel only.
Such members are first evaluated on that channel alone, conv → BatchNorm →
sign, one channel per member (1/C_out of the work), and those whose signs do
not change are pruned before the full folded conv; the rest continue as
usual.

**Safety.** At construction the folded evaluation of two different random
members is compared with two plain forward passes; an operation that mixes
samples across the batch in a way this module does not know (anything but
BatchNorm), or an unsupported use of the studied parameters, makes it fall back
to :class:`ModuleObjective`'s path (``vmap`` over ``functional_call``), with
the reason in ``fallback_reason``.

Conventions: BatchNorm in training mode (or without running statistics) uses
batch statistics and its running buffers are never updated; in eval mode with
running statistics, those. ``loss(params, surrogate)`` (STE) is
:class:`ModuleObjective`'s: backprop through the module itself.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lowbit.estimators.objective import ModuleObjective, is_sign_activation, stacked_size

# Folded activations per ``losses`` chunk: members × (bytes of the dependent
# activations of one member) stays under this many bytes.
FOLDED_CHUNK_BYTES = 1 << 29  # 512 MiB
MAX_CHUNK_MEMBERS = 256

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


class _UnsupportedGraph(Exception):
    """The folded evaluation cannot handle this graph; fall back to the generic path."""


class _LeafTracer(fx.Tracer):
    """torch.nn modules and every module without submodules (quantizers, whose autograd
    Functions fx cannot trace) are leaves: called as a whole, not traced into."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None or super().is_leaf_module(module, qualified_name)


class GraphObjective(ModuleObjective):
    """A :class:`ModuleObjective` whose ``losses`` caches everything that does not depend on ``params``.

    Same arguments as :class:`ModuleObjective` (``loss_fn`` reduces over the
    batch, e.g. the mean cross-entropy), plus ``prune_unchanged``. See the
    module docstring for the method and its exactness.
    """

    def __init__(
        self,
        module: nn.Module,
        batch: Tuple[Any, torch.Tensor],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        params: Optional[Iterable[str]] = None,
        activations: Optional[Iterable[str]] = None,
        chunk: Optional[int] = None,
        prune_unchanged: bool = True,
    ) -> None:
        # ModuleObjective refuses BatchNorm in training mode with running statistics (each loss would update them)
        super().__init__(module, batch, loss_fn=loss_fn, params=params, activations=activations, chunk=chunk)
        self.prune_unchanged = prune_unchanged
        self.fallback_reason: Optional[str] = None
        self.channel_chain: Optional[_ChannelChain] = None
        self._loop_nodes: Set[fx.Node] = set()  # weight-branch nodes that vmap cannot batch
        self.pruned_members = 0  # members dropped early by exact pruning, over all calls (for benchmarks)
        self.evaluated_members = 0
        try:
            self._build_graph()
            self._self_test()
        except _UnsupportedGraph as error:
            self.fallback_reason = str(error)
        except Exception as error:  # fx cannot trace every module (data-dependent control flow)
            self.fallback_reason = f"{type(error).__name__}: {error}"

    @property
    def folded(self) -> bool:
        """Whether ``losses`` uses the fast folded path (else the generic one)."""
        return self.fallback_reason is None

    # --- graph analysis ----------------------------------------------------------------

    def _build_graph(self) -> None:
        graph = _LeafTracer().trace(self.module)
        self.graph_module = fx.GraphModule(self.module, graph)
        self.nodes: List[fx.Node] = list(graph.nodes)
        self.submodules = dict(self.module.named_modules())
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.inputs):
            raise _UnsupportedGraph(f"the module takes {len(placeholders)} inputs, the batch has {len(self.inputs)}")
        studied = set(self.params)
        owner = {name.rpartition(".")[0]: name for name in studied}
        self.dependent: Set[fx.Node] = set()
        self.batch_like: Set[fx.Node] = set()  # depends on the input: has a batch dimension
        self.studied_attr: Dict[fx.Node, str] = {}
        for node in self.nodes:
            inputs = node.all_input_nodes
            if node.op == "placeholder":
                self.batch_like.add(node)
            elif node.op == "get_attr":
                if node.target in studied:
                    self.studied_attr[node] = node.target
                    self.dependent.add(node)
            elif node.op in ("call_module", "call_function", "call_method"):
                if any(i in self.dependent for i in inputs):
                    self.dependent.add(node)
                if node.op == "call_module" and str(node.target) in owner:
                    self.dependent.add(node)  # a leaf module (nn.Conv2d, nn.Linear) owning a studied weight
                if any(i in self.batch_like for i in inputs):
                    self.batch_like.add(node)
        # Exact equality with the base network reappears at quantizer outputs (a sign that did not
        # flip): pruning is checked there only, which keeps the comparisons cheap.
        from lowbit.quant import Quantizer

        self.prune_points = {
            n
            for n in self.dependent
            if n in self.batch_like and n.op == "call_module" and isinstance(self.submodules.get(str(n.target)), Quantizer)
        }
        output = next(n for n in self.nodes if n.op == "output")
        if output.args[0] not in self.dependent:
            raise _UnsupportedGraph("the output does not depend on the studied parameters")
        self.output_node = output.args[0]
        used = {str(n.target) for n in self.nodes if n.op == "call_module" and n in self.dependent} | {
            str(n.target) for n in self.studied_attr
        }
        unused = [name for name in studied if name not in self.studied_attr.values() and name.rpartition(".")[0] not in used]
        if unused:
            raise _UnsupportedGraph(f"studied parameters {unused} are not reached by the traced graph")
        # Last position at which each node's value is needed (to free it and to prune).
        position = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = {node: max((position[u] for u in node.users), default=position[node]) for node in self.nodes}
        self._cache_constants()
        self.channel_chain = _ChannelChain.find(self)

    def _cache_constants(self) -> None:
        """Evaluate the graph once at the current params: cache constants and base values."""
        env: Dict[fx.Node, Any] = {}
        inputs = iter(self.inputs)
        with torch.no_grad():
            for node in self.nodes:
                if node.op == "placeholder":
                    env[node] = next(inputs)
                elif node.op == "output":
                    break
                else:
                    env[node] = self._plain(node, env)
        self.base_values = env  # every node's value at the current params (dependent ones compared for pruning)
        self.batch_size = int(self.inputs[0].shape[0])
        self._member_bytes = sum(
            v.numel() * v.element_size() for n, v in env.items() if n in self.dependent and isinstance(v, torch.Tensor)
        )

    def _plain(self, node: fx.Node, env: Mapping[fx.Node, Any]) -> Any:
        """A node's value in an ordinary forward pass at the current params."""
        args, kwargs = _load(node.args, env), _load(node.kwargs, env)
        if node.op == "get_attr":
            return self.params[node.target] if node.target in self.params else _attr(self.module, node.target)
        if node.op == "call_module":
            module = self.submodules[str(node.target)]
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return _batch_norm(module, args[0], module.weight, module.bias)
            local = self._local_params(str(node.target))
            if local:
                return torch.func.functional_call(module, local, args, kwargs)
            return module(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise _UnsupportedGraph(f"unsupported node {node.op} {node.target}")

    def _local_params(self, module_name: str, stacked: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        source = self.params if stacked is None else stacked
        prefix = module_name + "."
        return {name[len(prefix):]: value for name, value in source.items() if name.startswith(prefix)}

    def _self_test(self) -> None:
        """Two different random members through the folded path must equal two plain forwards."""
        generator = torch.Generator().manual_seed(0)
        stacked = {}
        for name, p in self.params.items():
            noise = torch.randn((2, *p.shape), generator=generator, dtype=p.dtype).to(p.device)
            scale = p.detach().abs().mean().clamp_min(1e-3)
            # Different magnitudes, so that a per-tensor statistic (a max-abs quantizer scale)
            # shared across the folded members shows.
            magnitude = torch.tensor([1.0, 3.0], dtype=p.dtype, device=p.device).reshape(2, *([1] * p.dim()))
            stacked[name] = magnitude * (p.unsqueeze(0) + 0.5 * scale * noise)
        folded = self._folded_losses(stacked, prune=False)
        plain = torch.tensor([float(self.loss({k: v[i] for k, v in stacked.items()})) for i in range(2)], dtype=torch.float64)
        exact = all(p.dtype == torch.float64 for p in self.params.values())
        if not torch.allclose(folded, plain, rtol=1e-10 if exact else 2e-5, atol=1e-12 if exact else 1e-6):
            raise _UnsupportedGraph(
                f"the folded evaluation disagrees with plain forward passes ({folded.tolist()} vs {plain.tolist()}): "
                "the module mixes samples across the batch in a way GraphObjective does not handle"
            )

    # --- evaluation --------------------------------------------------------------------

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.folded:
            return super().losses(stacked)
        pop = stacked_size(stacked, self.params)
        full = {name: stacked.get(name, p.unsqueeze(0).expand(pop, *p.shape)) for name, p in self.params.items()}
        chunk = self.chunk or max(1, min(MAX_CHUNK_MEMBERS, FOLDED_CHUNK_BYTES // max(1, self._member_bytes)))
        out = torch.empty(pop, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, pop, chunk):
                part = {k: v[start : start + chunk] for k, v in full.items()}
                out[start : start + chunk] = self._folded_losses(part, prune=self.prune_unchanged)
        return out

    def _folded_losses(self, stacked: Mapping[str, torch.Tensor], prune: bool) -> torch.Tensor:
        """L for every member of ``stacked`` (name -> (P, *shape)) by the folded evaluation; (P,) float64 on the CPU."""
        pop = stacked_size(stacked, self.params)
        device = self.targets.device
        stacked = {k: v.to(device=device, dtype=self.params[k].dtype) for k, v in stacked.items()}
        alive = torch.arange(pop, device=device)  # original indices of the members still evaluated
        env: Dict[fx.Node, Any] = {}  # dependent node -> value for the alive members
        result = torch.full((pop,), float("nan"), dtype=torch.float64, device=device)
        base_loss: Optional[float] = None
        position = {node: i for i, node in enumerate(self.nodes)}
        for node, name in self.studied_attr.items():  # all members' weights are live from the start
            env[node] = stacked[name]
        for node in self.nodes:
            if node not in self.dependent or node in self.studied_attr:
                continue
            if prune and self.channel_chain is not None and node is self.channel_chain.conv and len(alive) > 0:
                with torch.no_grad():
                    unchanged = self.channel_chain.unchanged_members(self, env, stacked)
                if bool(unchanged.any()):
                    if base_loss is None:
                        base_loss = self._base_loss()
                    result[alive[unchanged]] = base_loss
                    self.pruned_members += int(unchanged.sum())
                    keep = (~unchanged).nonzero().reshape(-1)
                    env = {n: self._select(n, v, keep, len(alive)) for n, v in env.items()}
                    stacked = {k: v[keep] for k, v in stacked.items()}
                    alive = alive[keep]
                    if len(alive) == 0:
                        return result.cpu()
            with torch.no_grad():
                env[node] = self._dependent(node, env, stacked, alive)
            for done in [n for n in env if self.last_use[n] <= position[node] and n is not node]:
                del env[done]
            if node is self.output_node:
                break
            if prune and node in self.prune_points and len(alive) > 0:
                changed = self._members_differ(node, env[node], len(alive))
                for live, value in env.items():
                    if live is node or bool(changed.all()):
                        continue
                    candidates = (~changed).nonzero().reshape(-1)  # compare only members equal so far
                    changed[candidates] = self._members_differ(live, self._select(live, value, candidates, len(alive)), len(candidates))
                if not bool(changed.all()):
                    if base_loss is None:
                        base_loss = self._base_loss()
                    result[alive[~changed]] = base_loss
                    self.pruned_members += int((~changed).sum())
                    keep = changed.nonzero().reshape(-1)
                    env = {n: self._select(n, v, keep, len(alive)) for n, v in env.items()}
                    stacked = {k: v[keep] for k, v in stacked.items()}
                    alive = alive[keep]
                    if len(alive) == 0:
                        return result.cpu()
        self.evaluated_members += len(alive)
        logits = env[self.output_node]  # (P·N, ...) folded
        per_member = logits.reshape(len(alive), self.batch_size, *logits.shape[1:])
        result[alive] = torch.stack([self.loss_fn(per_member[i], self.targets) for i in range(len(alive))]).double()
        return result.cpu()

    def _base_loss(self) -> float:
        with torch.no_grad():
            return float(self.loss_fn(self.base_values[self.output_node], self.targets))

    def _members_differ(self, node: fx.Node, value: Any, members: int) -> torch.Tensor:
        """(P,) bool: does each member's value of ``node`` differ from the base value?"""
        base = self.base_values[node]
        if not isinstance(value, torch.Tensor):
            raise _UnsupportedGraph(f"node {node.name} has a non-tensor dependent value")
        per_member = value.reshape(members, -1)  # folded (P·N, ...) and stacked (P, ...) alike
        return (per_member != base.reshape(1, -1)).any(dim=1)

    def _select(self, node: fx.Node, value: torch.Tensor, keep: torch.Tensor, members: int) -> torch.Tensor:
        per_member = value.reshape(members, -1, *value.shape[1:]) if node in self.batch_like else value
        kept = per_member[keep]
        return kept.reshape(-1, *value.shape[1:]) if node in self.batch_like else kept

    def _dependent(self, node: fx.Node, env: Mapping[fx.Node, Any], stacked: Mapping[str, torch.Tensor], alive: torch.Tensor) -> Any:
        """A dependent node's value for the alive members: folded (P·N, ...) or stacked (P, ...)."""
        members = len(alive)
        if node.op == "get_attr":
            return stacked[self.studied_attr[node]]  # (P, *shape)
        folded_args = [a for a in node.all_input_nodes if a in self.dependent and a in self.batch_like]
        stacked_args = [a for a in node.all_input_nodes if a in self.dependent and a not in self.batch_like]

        def value_of(arg: Any) -> Any:
            if isinstance(arg, fx.Node):
                if arg in self.dependent:
                    return env[arg]
                value = self.base_values[arg]
                if arg in self.batch_like and node in self.batch_like and folded_args:
                    return _repeat_members(value, members)  # (N, ...) -> (P·N, ...)
                return value
            return arg

        if node.op == "call_module":
            module = self.submodules[str(node.target)]
            local = self._local_params(str(node.target), stacked)
            if local:
                return self._member_layer(node, module, local, value_of, members)
            if stacked_args and not folded_args:
                return self._vmapped(node, env, stacked_args, value_of)  # e.g. the weight quantizer
            if stacked_args:
                raise _UnsupportedGraph(f"module {node.target} receives a studied tensor and activations")
            args, kwargs = _map(node.args, value_of), _map(node.kwargs, value_of)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                return _member_batch_norm(module, args[0], members, self.batch_size if folded_args else None)
            return module(*args, **kwargs)
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d, F.linear) and stacked_args:
            names = _LINEAR_ARGS if node.target is F.linear else _CONV_ARGS
            bound = dict(zip(names, node.args))
            bound.update(node.kwargs)
            if any(bound.get(k) in stacked_args for k in ("input",)):
                raise _UnsupportedGraph(f"{node.target} takes a studied tensor as its input")
            values = {k: value_of(v) for k, v in bound.items()}
            weight_stacked = bound.get("weight") in stacked_args
            bias_stacked = bound.get("bias") in stacked_args
            if not weight_stacked:
                raise _UnsupportedGraph(f"{node.name}: only the weight of a conv/linear may be studied directly")
            input_folded = bound.get("input") in folded_args
            return _member_op(node.target, values, members, input_folded, bias_stacked, self.batch_size)
        if not folded_args:
            # The weight branch (e.g. the weight quantizer): vmap over the members.
            return self._vmapped(node, env, stacked_args, value_of)
        if stacked_args:
            raise _UnsupportedGraph(f"node {node.name} mixes a studied tensor with activations")
        args, kwargs = _map(node.args, value_of), _map(node.kwargs, value_of)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise _UnsupportedGraph(f"unsupported node {node.op} {node.target}")

    def _vmapped(self, node: fx.Node, env: Mapping[fx.Node, Any], stacked_args: List[fx.Node], value_of) -> Any:
        def one(*member_values):
            lookup = dict(zip(stacked_args, member_values))

            def single(arg):
                return lookup[arg] if isinstance(arg, fx.Node) and arg in lookup else value_of(arg)

            args, kwargs = _map(node.args, single), _map(node.kwargs, single)
            if node.op == "call_module":
                return self.submodules[str(node.target)](*args, **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            return getattr(args[0], node.target)(*args[1:], **kwargs)

        members = [env[a] for a in stacked_args]
        if node not in self._loop_nodes:
            try:
                return torch.func.vmap(one)(*members)
            except Exception:  # e.g. an autograd.Function vmap cannot batch: loop over the (small) weights
                self._loop_nodes.add(node)
        return torch.stack([one(*values) for values in zip(*members)])

    def _member_layer(self, node: fx.Node, module: nn.Module, local: Mapping[str, torch.Tensor], value_of, members: int) -> torch.Tensor:
        """A leaf nn.Conv2d / nn.Linear whose own weight (and bias) are studied."""
        if set(local) - {"weight", "bias"}:
            raise _UnsupportedGraph(f"module {node.target}: only weight and bias can be studied, got {sorted(local)}")
        if "weight" not in local:  # only the bias studied: the fixed weight, shared by every member
            local = {**local, "weight": module.weight.unsqueeze(0).expand(members, *module.weight.shape)}
        if len(node.args) != 1 or node.kwargs:
            raise _UnsupportedGraph(f"module {node.target} is called with extra arguments")
        source = node.args[0]
        x = value_of(source)
        input_folded = isinstance(source, fx.Node) and source in self.dependent
        bias = local.get("bias", module.bias)
        if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward and module.padding_mode == "zeros":
            values = {
                "input": x, "weight": local["weight"], "bias": bias, "stride": module.stride,
                "padding": module.padding, "dilation": module.dilation, "groups": module.groups,
            }
            return _member_op(F.conv2d, values, members, input_folded, "bias" in local, self.batch_size)
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            values = {"input": x, "weight": local["weight"], "bias": bias}
            return _member_op(F.linear, values, members, input_folded, "bias" in local, self.batch_size)
        raise _UnsupportedGraph(f"module {node.target} ({type(module).__name__}) owns a studied parameter")


class _ChannelChain:
    """studied conv -> BatchNorm -> sign, each the only user of the previous: the channel pre-filter."""

    def __init__(self, conv: fx.Node, weight: Any, x: fx.Node, spec: Dict[str, Any], bn: nn.Module, sign: fx.Node) -> None:
        self.conv, self.weight, self.x, self.spec, self.bn, self.sign = conv, weight, x, spec, bn, sign

    @staticmethod
    def find(objective: "GraphObjective") -> Optional["_ChannelChain"]:
        if len(objective.params) != 1:
            return None
        (name,) = objective.params
        for node in objective.nodes:
            found = _ChannelChain._conv(objective, node, name)
            if found is None:
                continue
            weight, x, spec = found
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module":
                return None
            bn = objective.submodules[str(users[0].target)]
            if not isinstance(bn, nn.BatchNorm2d) or len(users[0].args) != 1:
                return None
            after = list(users[0].users)
            sign = after[0] if len(after) == 1 else None
            if sign is None or sign.op != "call_module" or not is_sign_activation(objective.submodules[str(sign.target)]):
                return None
            return _ChannelChain(node, weight, x, spec, bn, sign)
        return None

    @staticmethod
    def _conv(objective: "GraphObjective", node: fx.Node, name: str):
        """(weight node or studied name, input node, conv options) if ``node`` is the studied conv."""
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d):
            bound = dict(zip(_CONV_ARGS, node.args))
            bound.update(node.kwargs)
            weight, x = bound.get("weight"), bound.get("input")
            if not (isinstance(weight, fx.Node) and weight in objective.dependent and weight not in objective.batch_like):
                return None
            bias = bound.get("bias")
            if isinstance(bias, fx.Node) and bias in objective.dependent:
                return None
            spec = {k: bound.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))}
            spec["bias"] = objective.base_values[bias] if isinstance(bias, fx.Node) else bias
        elif node.op == "call_module" and f"{node.target}.weight" == name:
            module = objective.submodules[str(node.target)]
            if type(module) is not nn.Conv2d or module.padding_mode != "zeros" or len(node.args) != 1:
                return None
            weight, x = name, node.args[0]
            spec = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                    "groups": module.groups, "bias": module.bias}
        else:
            return None
        if spec["groups"] != 1 or isinstance(spec["padding"], str):
            return None
        if not isinstance(x, fx.Node) or x in objective.dependent:
            return None
        return weight, x, spec

    def unchanged_members(self, objective: "GraphObjective", env: Mapping[fx.Node, Any], stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(P,) bool: members whose sign activation after the chain equals the base network's."""
        if isinstance(self.weight, str):
            w, base_w = stacked[self.weight], objective.params[self.weight]
        else:
            w, base_w = env[self.weight], objective.base_values[self.weight]
        members, c_out = w.shape[0], w.shape[1]
        changed = (w != base_w.unsqueeze(0)).reshape(members, c_out, -1).any(dim=2)  # (P, C_out)
        count = changed.sum(dim=1)
        unchanged = count == 0  # identical quantized weights: nothing downstream changes
        single = (count == 1).nonzero().reshape(-1)
        if len(single) == 0:
            return unchanged
        channel = changed[single].float().argmax(dim=1)  # (S,) the one changed output channel
        spec, bn = self.spec, self.bn
        bias = None if spec["bias"] is None else spec["bias"][channel]
        x = objective.base_values[self.x]
        y = F.conv2d(x, w[single, channel], bias, spec["stride"], spec["padding"], spec["dilation"])  # (N, S, H', W')
        use_batch = bn.training or bn.running_mean is None
        y = F.batch_norm(
            y,
            None if use_batch else bn.running_mean[channel],
            None if use_batch else bn.running_var[channel],
            None if bn.weight is None else bn.weight[channel],
            None if bn.bias is None else bn.bias[channel],
            use_batch,
            0.0,
            bn.eps,
        )
        signs = objective.submodules[str(self.sign.target)](y)
        same = (signs == objective.base_values[self.sign][:, channel]).reshape(signs.shape[0], len(single), -1).all(dim=2).all(dim=0)
        unchanged[single[same]] = True
        return unchanged


def use_batch_statistics(module: nn.Module) -> nn.Module:
    """Make every BatchNorm of ``module`` normalise with batch statistics and keep no running buffers.

    In place; returns ``module``. Then the loss on a fixed batch is a pure
    function of the weights (what training minimises at that step), in train
    and eval mode alike, and evaluating it never mutates the module.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return module


# --- helpers -----------------------------------------------------------------------------


def _attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _map(structure: Any, fn) -> Any:
    return fx.node.map_aggregate(structure, fn)


def _load(structure: Any, env: Mapping[fx.Node, Any]) -> Any:
    return fx.node.map_arg(structure, lambda n: env[n])


def _repeat_members(x: torch.Tensor, members: int) -> torch.Tensor:
    """(N, ...) -> (P·N, ...), member-major."""
    return x.unsqueeze(0).expand(members, *x.shape).reshape(members * x.shape[0], *x.shape[1:])


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, weight, bias) -> torch.Tensor:
    """The module's normalisation without touching its running buffers."""
    use_batch = module.training or module.running_mean is None
    return F.batch_norm(
        x,
        None if use_batch else module.running_mean,
        None if use_batch else module.running_var,
        weight,
        bias,
        use_batch,
        0.0,
        module.eps,
    )


def _member_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, members: int, batch: Optional[int]) -> torch.Tensor:
    """BatchNorm of a folded (P·N, C, ...) tensor with statistics per member (over its own N samples)."""
    use_batch = module.training or module.running_mean is None
    if not use_batch or batch is None:
        return _batch_norm(module, x, module.weight, module.bias)
    # (P·N, C, *S) -> (N, P·C, *S): one BatchNorm over P·C channels = P members' own statistics.
    rest = x.shape[2:]
    channels = x.shape[1]
    grouped = x.reshape(members, batch, channels, *rest).transpose(0, 1).reshape(batch, members * channels, *rest)
    weight = None if module.weight is None else module.weight.repeat(members)
    bias = None if module.bias is None else module.bias.repeat(members)
    out = F.batch_norm(grouped, None, None, weight, bias, True, 0.0, module.eps)
    return out.reshape(batch, members, channels, *rest).transpose(0, 1).reshape(members * batch, channels, *rest)


def _member_op(op, values: Dict[str, Any], members: int, input_folded: bool, bias_stacked: bool, batch: int) -> torch.Tensor:
    """conv2d / linear with a per-member weight (P, *w.shape); output folded (P·N, ...)."""
    x, w, b = values["input"], values["weight"], values.get("bias")
    if op is F.linear:
        if input_folded:
            out = torch.einsum("pn...i,poi->pn...o", x.reshape(members, batch, *x.shape[1:]), w)
        else:
            out = torch.einsum("n...i,poi->pn...o", x, w)
        if b is not None:
            b = b if bias_stacked else b.unsqueeze(0).expand(members, *b.shape)
            out = out + b.reshape(members, 1, *([1] * (out.dim() - 3)), b.shape[-1])
        return out.reshape(members * batch, *out.shape[2:])
    groups = values.get("groups", 1)
    c_out = w.shape[1]
    kw = {k: values[k] for k in ("stride", "padding", "dilation") if k in values}
    if b is not None:
        b = (b if bias_stacked else b.unsqueeze(0).expand(members, *b.shape)).reshape(members * c_out)
    weight = w.reshape(members * c_out, *w.shape[2:])
    if input_folded:
        # (P·N, C, H, W) -> (N, P·C, H, W): a grouped conv, one group per member (per original group).
        c_in = x.shape[1]
        x = x.reshape(members, batch, c_in, *x.shape[2:]).transpose(0, 1).reshape(batch, members * c_in, *x.shape[2:])
        out = F.conv2d(x, weight, b, groups=groups * members, **kw)
    else:
        if groups != 1:
            raise _UnsupportedGraph("a grouped conv with a studied weight on a shared input")
        out = F.conv2d(x, weight, b, **kw)  # (N, P·C_out, H', W')
    n, _, *spatial = out.shape
    return out.reshape(n, members, c_out, *spatial).transpose(0, 1).reshape(members * n, c_out, *spatial)


__all__ = ["GraphObjective", "use_batch_statistics"]
