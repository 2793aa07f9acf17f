"""DessiLBI: split linearized Bregman iteration with SGD or Adam directions.

Y. Fu, C. Liu, D. Li, X. Sun, J. Zeng, Y. Yao, "DessiLBI: Exploring
Structural Sparsity of Deep Networks via Differential Inclusion Paths",
ICML 2020 (arXiv:2007.02010). The optimizer couples every registered weight
W with a sparse companion Γ through L̄(W, Γ) = L(W) + ‖W − Γ‖²/(2ν) and
follows the inverse-scale-space path of Γ: important weights (or whole conv
filters) enter the support of Γ early, unimportant ones never do. The
update is :func:`lowbit.optim.functional.dessilbi_step`; this module holds
the configuration and state (``torch.optim.sgd`` style).

Naming: the paper writes the coupling strength ν; the public code (and this
class) call it ``mu``. κ (``kappa``) is the damping factor and α (``lr``) the
step size; W moves with step lr·κ.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.optim.optimizer import Optimizer, required

from lowbit.optim.functional import (
    GROUP_LASSO_MODES,
    dessilbi_step,
    init_lbi_state,
    resolve_group_lasso,
    zero_groups,
)
from lowbit.registry import unknown_name_message

__all__ = ["DessiLBI", "dessilbi_param_groups"]

NameOrParam = Union[str, torch.Tensor]


class DessiLBI(Optimizer):
    r"""DessiLBI (Fu et al., ICML 2020), SGD-momentum or Adam flavour.

    For every parameter W with gradient g: g ← g + weight_decay·W (as in
    ``torch.optim.SGD``), then the direction d is the SGD momentum direction
    (``momentum``, ``dampening``, ``nesterov`` exactly as ``torch.optim.SGD``)
    or, with ``adam=True``, the bias-corrected Adam direction m̂/(√v̂ + eps)
    (``betas``, ``eps``; momentum/dampening/nesterov unused). A parameter
    *registered for sparsity* carries state Z and Γ and takes

        W ← W − lr·κ·(d + (W − Γ)/μ)
        Z ← Z − (lr/μ)·(Γ − W_old)
        Γ ← κ·prox(Z, 1)

    where prox is elementwise soft-thresholding sign(z)·max(|z| − 1, 0)
    (``group_lasso="elementwise"``, default for linear weights) or group
    soft-thresholding per output filter Z_g·max(1 − 1/‖Z_g‖₂, 0)
    (``"filter"``, default for conv weights; ``"auto"`` picks by dim). Every
    other parameter takes W ← W − lr·κ·d. Z₀ = Γ₀ = 0 as in the paper and the
    public code, so Γ starts empty and its support grows along the path.

    Args:
        params: parameters or param groups, optionally named
            (``model.named_parameters()``, or :func:`dessilbi_param_groups`).
            Names are used by :meth:`gamma`, :meth:`named_gammas`,
            :meth:`sparsity` and the pruning tools; unnamed parameters are
            called ``param<i>`` in optimizer order.
        lr: step size α (W moves by lr·κ per unit direction).
        kappa: damping factor κ > 0 (paper and public code: 1).
        mu: coupling ν > 0 of L̄ (``mu`` in the public code; it used 100,
            the notes' LeNet recipe 20). ``math.inf`` disables the coupling:
            Γ stays 0 and the step equals SGD/Adam with lr·κ.
        momentum, dampening, nesterov: as ``torch.optim.SGD`` (momentum 0.9).
        weight_decay: L2 coefficient added to the gradient.
        adam, betas, eps: the Adam flavour of the notes (section 3.2).
        group_lasso: ``"auto"`` | ``"elementwise"`` | ``"filter"`` (per group).
        sparse: which parameters of a group are registered: ``True`` (all),
            ``False`` (none) or ``"auto"`` (tensors of dim ≥ 2: weight
            matrices and conv kernels, as the public LeNet example). Per group.
        track_gamma: False disables Z/Γ entirely (nothing registered): the
            optimizer is then ``torch.optim.SGD(lr=lr·κ, ...)`` (or Adam).
        sparse_params: register exactly these tensors instead of using the
            groups' ``sparse`` option (cannot be combined with an explicit
            ``sparse`` key in a group).

    Z and Γ live in ``self.state[p]`` as ``"z"`` and ``"gamma"``, so
    ``state_dict()``/``load_state_dict()`` save and restore them (and which
    parameters are registered). Deviations from the public ``slbi_opt.py``
    are listed in :func:`lowbit.optim.functional.dessilbi_step`.

    Example::

        groups = dessilbi_param_groups(model)           # conv/linear weights sparse
        opt = DessiLBI(groups, lr=0.05, kappa=1, mu=100)
        ...
        loss.backward(); opt.step()
        opt.sparsity()                                   # {'conv1.weight': 0.83, ...}
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,
        kappa: float = 1.0,
        mu: float = 100.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        adam: bool = False,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        group_lasso: str = "auto",
        sparse: Union[bool, str] = "auto",
        track_gamma: bool = True,
        sparse_params: Optional[Iterable[torch.Tensor]] = None,
    ) -> None:
        if lr is required:
            raise TypeError("DessiLBI() missing required argument 'lr'")
        self._sparse_ids: Optional[set] = None
        if sparse_params is not None:
            sparse_list = list(sparse_params)
            if not all(isinstance(p, torch.Tensor) for p in sparse_list):
                raise TypeError(f"sparse_params must be tensors, got {[type(p).__name__ for p in sparse_list]}")
            self._sparse_ids = {id(p) for p in sparse_list}
            params = list(params)
            if any(isinstance(g, dict) and "sparse" in g for g in params):
                raise ValueError("give either sparse_params or a 'sparse' key in the param groups, not both")
            sparse = False
        defaults = dict(
            lr=lr,
            kappa=kappa,
            mu=mu,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            adam=adam,
            betas=tuple(betas),
            eps=eps,
            group_lasso=group_lasso,
            sparse=sparse,
            track_gamma=track_gamma,
        )
        _check_options(defaults, where="")
        super().__init__(params, defaults)
        if self._sparse_ids is not None:
            known = {id(p) for g in self.param_groups for p in g["params"]}
            missing = len(self._sparse_ids - known)
            if missing:
                raise ValueError(f"sparse_params holds {missing} tensor(s) that are not among the optimizer's params")

    # --- configuration and state -------------------------------------------------

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """As ``Optimizer.add_param_group``, then validate the group's options and register its sparse params."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_options(group, where=f"param group {len(self.param_groups) - 1}: ")
        if not group["track_gamma"]:
            return
        for p in group["params"]:
            if self._is_sparse(group, p) and "z" not in self.state[p]:
                self.state[p].update(init_lbi_state(p))

    def _is_sparse(self, group: Dict[str, Any], p: torch.Tensor) -> bool:
        if self._sparse_ids is not None:
            return id(p) in self._sparse_ids
        if group["sparse"] == "auto":
            return p.dim() >= 2
        return bool(group["sparse"])

    @torch.no_grad()
    def step(self, closure: Optional[Any] = None) -> Optional[torch.Tensor]:
        """One DessiLBI step for every parameter with a gradient (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: List[torch.Tensor] = []
            grads: List[torch.Tensor] = []
            states: List[Dict[str, Any]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DessiLBI does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                states.append(self.state[p])
            dessilbi_step(
                params,
                grads,
                states,
                lr=group["lr"],
                kappa=group["kappa"],
                mu=group["mu"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                adam=group["adam"],
                betas=group["betas"],
                eps=group["eps"],
                group_lasso=group["group_lasso"],
                track_gamma=group["track_gamma"],
            )
        return loss

    # --- inspection ----------------------------------------------------------------

    def named_params(self) -> Iterator[Tuple[str, torch.Tensor, Dict[str, Any]]]:
        """``(name, parameter, group)`` for every parameter, in optimizer order."""
        index = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                yield (names[i] if names is not None else f"param{index}"), p, group
                index += 1

    def is_registered(self, name_or_param: NameOrParam) -> bool:
        """Whether the parameter carries Z and Γ (and Γ tracking is on for its group)."""
        _, p, group = self._lookup(name_or_param)
        return bool(group["track_gamma"]) and "gamma" in self.state.get(p, {})

    def named_gammas(self) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, W, Γ)`` for every registered parameter (live tensors, not copies)."""
        for name, p, group in self.named_params():
            state = self.state.get(p, {})
            if group["track_gamma"] and "gamma" in state:
                yield name, p, state["gamma"]

    def gamma(self, name_or_param: NameOrParam) -> torch.Tensor:
        """Γ of a registered parameter, by name (``"conv3.weight"``, or ``"conv3"`` for its weight) or tensor."""
        name, p, _ = self._lookup(name_or_param)
        if not self.is_registered(p):
            registered = self._registered_names()
            raise KeyError(f"parameter {name!r} is not registered for sparsity (no Γ); registered: {registered}")
        return self.state[p]["gamma"]

    def group_lasso_mode(self, name_or_param: NameOrParam) -> str:
        """The resolved sparsity structure of a parameter: ``"elementwise"`` or ``"filter"``."""
        _, p, group = self._lookup(name_or_param)
        return resolve_group_lasso(group["group_lasso"], p)

    def mu_of(self, name_or_param: NameOrParam) -> float:
        """The coupling μ (ν) of the parameter's group."""
        return float(self._lookup(name_or_param)[2]["mu"])

    def sparsity(self, by: str = "group") -> Dict[str, float]:
        """Per registered layer, the fraction of Γ that is zero.

        ``by="group"``: zero entries for elementwise layers, zero output
        filters for filter layers; ``by="entry"``: zero entries always.
        """
        if by not in ("group", "entry"):
            raise ValueError(f"by must be 'group' or 'entry', got {by!r}")
        out = {}
        for name, p, gamma in self.named_gammas():
            mode = self.group_lasso_mode(p) if by == "group" else "elementwise"
            zeros, total = zero_groups(gamma, mode)
            out[name] = zeros / total if total else float("nan")
        return out

    def residue(self) -> Dict[str, float]:
        """Per registered layer, ‖W − Γ‖²/(2μ) (the public ``calculate_layer_residue``)."""
        out = {}
        for name, p, gamma in self.named_gammas():
            mu = self.mu_of(p)
            out[name] = 0.0 if math.isinf(mu) else float((p.detach() - gamma).pow(2).sum()) / (2 * mu)
        return out

    def _registered_names(self) -> List[str]:
        return [name for name, _, _ in self.named_gammas()]

    def _lookup(self, name_or_param: NameOrParam) -> Tuple[str, torch.Tensor, Dict[str, Any]]:
        entries = list(self.named_params())
        if isinstance(name_or_param, torch.Tensor):
            for name, p, group in entries:
                if p is name_or_param:
                    return name, p, group
            raise KeyError("tensor is not a parameter of this optimizer")
        if not isinstance(name_or_param, str):
            raise TypeError(f"expected a parameter name or tensor, got {type(name_or_param).__name__}")
        for candidate in (name_or_param, name_or_param + ".weight"):
            for name, p, group in entries:
                if name == candidate:
                    return name, p, group
        raise KeyError(unknown_name_message("parameter", name_or_param, [n for n, _, _ in entries]))


def dessilbi_param_groups(
    model: nn.Module,
    sparse: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    group_lasso: Optional[str] = None,
    **sparse_options: Any,
) -> List[Dict[str, Any]]:
    """Named param groups for :class:`DessiLBI`: ``[sparse group, dense group]``.

    ``sparse``: ``fnmatch`` patterns over parameter names (``"conv3.weight"``,
    ``"fc*.weight"``); None selects the weights of every ``nn.Conv*d`` and
    ``nn.Linear`` module (subclasses included, e.g. binary layers).
    ``exclude``: patterns removed from that selection (e.g. the classifier).
    Every pattern must match something (ValueError listing the names).
    Returns groups whose ``params`` are ``(name, tensor)`` pairs, so the
    optimizer keeps the names (``param_names``); the sparse group has
    ``sparse=True``, ``group_lasso`` if given (else the optimizer's default
    applies) and ``sparse_options`` (e.g. ``mu=200``); the dense one has
    ``sparse=False``. Empty groups are dropped;
    parameters with ``requires_grad=False`` are skipped.
    """
    from fnmatch import fnmatchcase

    if group_lasso is not None and group_lasso not in GROUP_LASSO_MODES:
        raise ValueError(f"group_lasso must be one of {GROUP_LASSO_MODES}, got {group_lasso!r}")
    if isinstance(sparse, str) or isinstance(exclude, str):
        raise TypeError(f"sparse and exclude must be sequences of patterns, got {sparse!r} and {exclude!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    if sparse is None:
        layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        chosen = {
            f"{mod_name}.weight" if mod_name else "weight"
            for mod_name, module in model.named_modules()
            if isinstance(module, layer_types) and isinstance(getattr(module, "weight", None), nn.Parameter)
        }
    else:
        unmatched = [pat for pat in sparse if not any(fnmatchcase(n, pat) for n in names)]
        if unmatched:
            raise ValueError(f"sparse patterns {unmatched} match no parameter; parameters: {names}")
        chosen = {n for n in names if any(fnmatchcase(n, pat) for pat in sparse)}
    unmatched = [pat for pat in exclude if not any(fnmatchcase(n, pat) for n in names)]
    if unmatched:
        raise ValueError(f"exclude patterns {unmatched} match no parameter; parameters: {names}")
    chosen = {n for n in chosen if not any(fnmatchcase(n, pat) for pat in exclude)}
    sparse_group: Dict[str, Any] = {"params": [(n, p) for n, p in named if n in chosen], "sparse": True}
    if group_lasso is not None:
        sparse_group["group_lasso"] = group_lasso
    sparse_group.update(sparse_options)
    dense_group = {"params": [(n, p) for n, p in named if n not in chosen], "sparse": False}
    return [g for g in (sparse_group, dense_group) if g["params"]]


def _check_options(o: Dict[str, Any], where: str) -> None:
    """Raise one ValueError naming every invalid option, each with its value."""
    errors: List[str] = []

    def number(key: str) -> Optional[float]:
        v = o[key]
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    lr, kappa, mu = number("lr"), number("kappa"), number("mu")
    momentum, dampening = number("momentum"), number("dampening")
    weight_decay, eps, betas, sparse = number("weight_decay"), number("eps"), o["betas"], o["sparse"]
    check(lr is not None and 0 < lr < math.inf, f"lr must be a finite number > 0, got {o['lr']!r}")
    check(kappa is not None and 0 < kappa < math.inf, f"kappa must be a finite number > 0, got {o['kappa']!r}")
    check(mu is not None and mu > 0, f"mu must be > 0 (math.inf disables the coupling), got {o['mu']!r}")
    check(momentum is not None and 0 <= momentum < 1, f"momentum must be in [0, 1), got {o['momentum']!r}")
    check(dampening is not None and 0 <= dampening <= 1, f"dampening must be in [0, 1], got {o['dampening']!r}")
    wd_ok = weight_decay is not None and 0 <= weight_decay < math.inf
    check(wd_ok, f"weight_decay must be >= 0, got {o['weight_decay']!r}")
    check(eps is not None and 0 < eps < math.inf, f"eps must be > 0, got {o['eps']!r}")
    betas_ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    betas_ok = betas_ok and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
    check(betas_ok, f"betas must be two numbers in [0, 1), got {betas!r}")
    modes = GROUP_LASSO_MODES
    check(o["group_lasso"] in modes, f"group_lasso must be one of {modes}, got {o['group_lasso']!r}")
    check(isinstance(sparse, bool) or sparse == "auto", f"sparse must be True, False or 'auto', got {sparse!r}")
    for key in ("nesterov", "adam", "track_gamma"):
        check(isinstance(o[key], bool), f"{key} must be a bool, got {o[key]!r}")
    if o["nesterov"] is True:
        check(o["adam"] is not True, "nesterov=True and adam=True cannot be combined (no Nesterov Adam here)")
        check(
            momentum is None or (momentum > 0 and dampening == 0),
            f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={o['momentum']!r}, "
            f"dampening={o['dampening']!r}",
        )
    if errors:
        raise ValueError(where + "; ".join(errors))
