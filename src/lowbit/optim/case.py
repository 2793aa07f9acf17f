"""One optimizer per group of parameters, stepped as one: Larq's ``CaseOptimizer`` for PyTorch.

A binary network has two kinds of parameters: the binary layers' latent
weights, which Bop trains by flipping signs, and everything else (BatchNorm,
the float first and last layers, biases), which needs an ordinary optimizer:

    >>> from lowbit.nn import binary_weights
    >>> binary = [p for _, p in binary_weights(model)]
    >>> rest = [p for p in model.parameters() if all(p is not b for b in binary)]
    >>> optimizer = CaseOptimizer({"binary": Bop(binary), "rest": torch.optim.Adam(rest, lr=1e-2)})
    >>> loss.backward(); optimizer.step(); optimizer.zero_grad()

:func:`case_optimizer` builds the same from patterns over the model
(``"binary"``, name globs, ``"type:BatchNorm2d"``) and puts every parameter no
case claims into the default optimizer, as Larq's ``default_optimizer``.

``CaseOptimizer`` is a ``torch.optim.Optimizer``: its ``param_groups`` are the
cases' own group dicts (so a learning-rate scheduler or the training loop that
sets ``group["lr"]`` reaches every case), ``step`` steps each case in order,
``state`` is a read-only view of the cases' states, and ``state_dict`` holds
one state dict per case, by name, so a checkpoint round-trips exactly.
A parameter in two cases is an error (it would be updated twice).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.optim.optimizer import Optimizer

Selector = Union[Sequence[Any], Callable[[str, nn.Parameter], bool]]
Factory = Callable[[List[nn.Parameter]], Optimizer]


class _CaseStates(Mapping):
    """``CaseOptimizer.state``: parameter -> its state in whichever case holds it (read-only)."""

    def __init__(self, optimizers: Mapping[str, Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, param: Any) -> Any:
        for optimizer in self._optimizers.values():
            if param in optimizer.state:  # not optimizer.state[param]: a defaultdict would grow
                return optimizer.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[Any]:
        for optimizer in self._optimizers.values():
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._optimizers.values())


class CaseOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, stepped, zeroed and checkpointed as one.

    Args:
        optimizers: case name -> optimizer, in the order they step (a dict or
            a sequence of pairs). Names key the state dict.
    """

    def __init__(self, optimizers: Union[Mapping[str, Optimizer], Sequence[Tuple[str, Optimizer]]]) -> None:
        cases = dict(optimizers)
        if not cases:
            raise ValueError("CaseOptimizer needs at least one case")
        owner: Dict[int, str] = {}
        for name, optimizer in cases.items():
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"case {name!r} must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in owner and owner[id(p)] != name:
                        raise ValueError(
                            f"a parameter of shape {tuple(p.shape)} is in cases {owner[id(p)]!r} and {name!r}: "
                            "it would be updated twice; give each parameter to one case"
                        )
                    owner[id(p)] = name
        self.optimizers: Dict[str, Optimizer] = cases
        self._built = False
        super().__init__([{"params": []}], {})  # hooks and profiling; the groups are the cases' (below)
        self._built = True
        self.state = _CaseStates(self.optimizers)  # type: ignore[assignment]

    @property
    def param_groups(self) -> List[Dict[str, Any]]:  # type: ignore[override]
        """The cases' own group dicts, read live: whoever sets group["lr"] sets it in the case that owns the group
        (also after ``load_state_dict``, which gives each case new group dicts)."""
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, value: Any) -> None:
        pass  # Optimizer.__init__ assigns [] here; the groups belong to the cases

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if getattr(self, "_built", False):
            raise TypeError(
                "add the group to one of the cases, e.g. optimizer.optimizers[name].add_param_group(...); "
                f"cases: {', '.join(self.optimizers)}"
            )

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Evaluate ``closure`` once (if given), then step every case in order."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        """``{"cases": [names], "optimizers": {name: state_dict}}`` (tensors and plain values only)."""
        return {"cases": list(self.optimizers), "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if "cases" not in state_dict or "optimizers" not in state_dict:
            raise ValueError(
                f"this optimizer has cases {list(self.optimizers)}, but the state dict is a single optimizer's "
                f"(keys {sorted(state_dict)}); was the checkpoint written with other optimizer groups?"
            )
        if list(state_dict["cases"]) != list(self.optimizers):
            raise ValueError(
                f"the state dict has cases {list(state_dict['cases'])}, this optimizer {list(self.optimizers)}"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict["optimizers"][name])

    def __repr__(self) -> str:
        inner = "\n".join(f"  {name}: {type(o).__name__} ({sum(len(g['params']) for g in o.param_groups)} tensors)" for name, o in self.optimizers.items())
        return f"CaseOptimizer(\n{inner}\n)"


def case_optimizer(
    model: nn.Module,
    cases: Sequence[Tuple[str, Selector, Factory]],
    default: Optional[Factory] = None,
    default_name: str = "default",
) -> CaseOptimizer:
    """A :class:`CaseOptimizer` over ``model``'s parameters, chosen per case.

    ``cases``: (name, selector, factory) triples; a selector is a list of
    patterns (:func:`lowbit.nn.select_parameters`: ``"binary"``, name globs,
    ``"type:X"``, classes) or a predicate ``f(param_name, param) -> bool``;
    ``factory(params) -> Optimizer``. ``default`` gets every parameter no case
    selected (Larq's ``default_optimizer``); without it such parameters are an
    error. A parameter selected by two cases is an error naming both.

    >>> optimizer = case_optimizer(model, [("binary", ["binary"], Bop)],
    ...                            default=lambda ps: torch.optim.Adam(ps, lr=1e-2))
    """
    from lowbit.nn.select import select_parameters

    named = list(model.named_parameters())
    chosen: Dict[str, List[Tuple[str, nn.Parameter]]] = {}
    owner: Dict[int, str] = {}
    for name, selector, _ in cases:
        if name in chosen or name == default_name:
            raise ValueError(f"two cases are called {name!r}")
        if callable(selector):
            picked = [(n, p) for n, p in named if selector(n, p)]
            if not picked:
                raise ValueError(f"case {name!r}: its predicate selects no parameter")
        else:
            picked = select_parameters(model, selector, f"case {name!r}")
        for param_name, p in picked:
            if id(p) in owner:
                raise ValueError(
                    f"parameter {param_name!r} is selected by cases {owner[id(p)]!r} and {name!r}; groups must not "
                    "overlap (narrow one of the selections, e.g. exclude it by name)"
                )
            owner[id(p)] = name
        chosen[name] = picked
    rest = [(n, p) for n, p in named if id(p) not in owner]
    optimizers: Dict[str, Optimizer] = {}
    for name, _, factory in cases:
        optimizers[name] = factory([p for _, p in chosen[name]])
    if rest:
        if default is None:
            raise ValueError(
                f"{len(rest)} parameters are in no case and there is no default optimizer: "
                f"{', '.join(n for n, _ in rest[:8])}{' ...' if len(rest) > 8 else ''}"
            )
        optimizers[default_name] = default([p for _, p in rest])
    return CaseOptimizer(optimizers)


def leaf_optimizers(optimizer: Optimizer) -> List[Optimizer]:
    """The optimizers that update parameters: a :class:`CaseOptimizer`'s cases in order, else ``[optimizer]``."""
    if isinstance(optimizer, CaseOptimizer):
        return list(optimizer.optimizers.values())
    return [optimizer]


__all__ = ["CaseOptimizer", "case_optimizer", "leaf_optimizers"]
