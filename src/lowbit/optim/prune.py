"""The sparsity path of DessiLBI and pruning by Γ, by magnitude or by entry order.

Along a DessiLBI run the support of Γ grows: a weight (or a whole conv
filter) *enters* when its Z first crosses the threshold, and the order of
entry ranks importance (Fu et al., ICML 2020, section 4). This module turns
that into

* :func:`support_records` / :class:`SupportTracker`: per-epoch flat records
  (support size, sparsity, residue ‖W − Γ‖²/(2μ), entries that entered) and
  the epoch each entry/filter first entered, as plain tensors for checkpoints;
* :func:`w_star`: the sparse estimate W* = W ⊙ 1[Γ ≠ 0];
* :func:`prune_order` / :func:`prune_mask` (pure) and :class:`Pruner`
  (in place, exactly recoverable) to prune a percentage of each layer;
* :func:`pruning_table` / :func:`format_pruning_table`: accuracy against
  pruned percentage for sets of layers, as in the notes' section 3.1 table.

Prune orders (within one layer; a *group* is an entry, or an output filter
for filter granularity, with ‖·‖₂ over the filter):

* ``by="gamma"``: groups with Γ = 0 first (among them smallest ‖W_g‖ first),
  then by increasing ‖Γ_g‖;
* ``by="magnitude"``: increasing ‖W_g‖;
* ``by="order"``: groups that never entered the support first, then those
  that entered latest (ties: smallest ‖W_g‖ first). This is the public
  code's ``prune_order = |W| − entry_epoch`` made lexicographic (there the
  two are summed, which is the same order while |W| < 1).

Pruning p % of a layer of n groups zeroes k = ⌊n·p/100 + ½⌋ groups.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lowbit.optim.dessilbi import DessiLBI
from lowbit.optim.functional import resolve_group_lasso, zero_groups
from lowbit.registry import unknown_name_message

__all__ = [
    "PRUNE_BY",
    "Pruner",
    "SupportTracker",
    "format_pruning_table",
    "num_pruned",
    "prune_mask",
    "prune_order",
    "pruning_table",
    "support_records",
    "w_star",
]

PRUNE_BY = ("gamma", "magnitude", "order")
GRANULARITIES = ("auto", "entry", "filter")
NEVER = -1  # entry epoch of an entry that has not entered the support

GammaSource = Union[DessiLBI, Mapping[str, torch.Tensor]]


def w_star(weight: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The sparse estimate W* = W ⊙ 1[Γ ≠ 0] (public ``calculate_w_star``); a new tensor."""
    if weight.shape != gamma.shape:
        raise ValueError(f"weight and gamma shapes differ: {tuple(weight.shape)} vs {tuple(gamma.shape)}")
    return weight.detach() * gamma.ne(0).to(weight.dtype)


# --- the Γ source: a DessiLBI optimizer or a {name: Γ} mapping ------------------------


def _layers(source: GammaSource) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor], str, float]]:
    """``{name: (Γ, W or None, mode, μ)}`` for a DessiLBI or a ``{name: Γ}`` mapping (W, μ unknown there)."""
    if isinstance(source, DessiLBI):
        return {
            name: (gamma, p, source.group_lasso_mode(p), source.mu_of(p))
            for name, p, gamma in source.named_gammas()
        }
    if isinstance(source, Mapping):
        return {name: (g, None, resolve_group_lasso("auto", g), math.nan) for name, g in source.items()}
    raise TypeError(f"expected a DessiLBI optimizer or a mapping name -> Γ, got {type(source).__name__}")


def _filter_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)  # (filters, entries per filter)


def support_records(source: GammaSource, epoch: Optional[int] = None) -> List[Dict[str, Any]]:
    """One flat record per registered layer describing Γ now.

    Keys: ``epoch``, ``layer``, ``mode`` (elementwise | filter), ``numel``,
    ``support`` (entries with Γ ≠ 0), ``sparsity`` (fraction of zero
    entries), ``groups`` / ``group_support`` / ``group_sparsity`` (the same
    over filters for filter layers, over entries otherwise) and ``residue``
    ‖W − Γ‖²/(2μ) (NaN when ``source`` is a plain mapping).
    """
    records = []
    for name, (gamma, weight, mode, mu) in _layers(source).items():
        numel = gamma.numel()
        support = int(gamma.ne(0).sum())
        zero_g, groups = zero_groups(gamma, mode)
        if weight is None or math.isnan(mu):
            residue = math.nan
        elif math.isinf(mu):
            residue = 0.0
        else:
            residue = float((weight.detach() - gamma).pow(2).sum()) / (2 * mu)
        records.append(
            {
                "epoch": epoch,
                "layer": name,
                "mode": mode,
                "numel": numel,
                "support": support,
                "sparsity": 1 - support / numel if numel else math.nan,
                "groups": groups,
                "group_support": groups - zero_g,
                "group_sparsity": zero_g / groups if groups else math.nan,
                "residue": residue,
            }
        )
    return records


class SupportTracker:
    """Remembers the epoch at which each entry of each Γ first entered the support.

    Call :meth:`update` after every epoch (``tracker.update(optimizer,
    epoch)``); it returns :func:`support_records` plus ``entered``, the number
    of entries that entered for the first time at this update. The entry
    epoch is *first* entry: it is kept if the entry later leaves the support
    (as in the public ``update_prune_order``). :meth:`state_dict` is plain
    tensors and ints for a checkpoint.
    """

    def __init__(self) -> None:
        self.entry_epoch: Dict[str, torch.Tensor] = {}  # name -> int64, Γ's shape; NEVER = not yet
        self.last_epoch: Optional[int] = None

    def update(self, source: GammaSource, epoch: int) -> List[Dict[str, Any]]:
        """Record the support of every layer of ``source`` at ``epoch``; returns the flat records."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise ValueError(f"epoch must increase between updates, got {epoch} after {self.last_epoch}")
        records = support_records(source, epoch)
        layers = _layers(source)
        for record in records:
            gamma = layers[record["layer"]][0]
            entry = self.entry_epoch.get(record["layer"])
            if entry is None or entry.shape != gamma.shape:
                entry = torch.full(gamma.shape, NEVER, dtype=torch.int64, device=gamma.device)
            new = gamma.ne(0) & entry.eq(NEVER)
            self.entry_epoch[record["layer"]] = torch.where(new, torch.full_like(entry, epoch), entry)
            record["entered"] = int(new.sum())
        self.last_epoch = epoch
        return records

    def entry_epochs(self, name: str) -> torch.Tensor:
        """Per entry, the epoch it first entered the support (``-1``: never)."""
        if name not in self.entry_epoch:
            raise KeyError(unknown_name_message("tracked layer", name, self.entry_epoch))
        return self.entry_epoch[name]

    def filter_entry_epochs(self, name: str) -> torch.Tensor:
        """Per output filter, the first epoch any of its entries entered (``-1``: never)."""
        flat = _filter_view(self.entry_epochs(name))  # (filters, entries)
        big = torch.iinfo(torch.int64).max
        first = torch.where(flat.eq(NEVER), torch.full_like(flat, big), flat).min(dim=1).values
        return torch.where(first.eq(big), torch.full_like(first, NEVER), first)

    def state_dict(self) -> Dict[str, Any]:
        return {"entry_epoch": {k: v.clone() for k, v in self.entry_epoch.items()}, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.entry_epoch = {k: torch.as_tensor(v, dtype=torch.int64).clone() for k, v in state["entry_epoch"].items()}
        self.last_epoch = state["last_epoch"]


# --- pure pruning orders ------------------------------------------------------------------


def num_pruned(n: int, percent: float) -> int:
    """k = ⌊n·p/100 + ½⌋ groups pruned out of n at ``percent`` p ∈ [0, 100]."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ValueError(f"percent must be a number in [0, 100], got {percent!r}")
    return min(n, int(math.floor(n * percent / 100 + 0.5)))


def _group_norms(t: torch.Tensor, granularity: str) -> torch.Tensor:
    t = t.detach()
    if granularity == "filter":
        return torch.linalg.vector_norm(_filter_view(t).float(), dim=1)  # (filters,)
    return t.abs().reshape(-1).float()  # (entries,)


def prune_order(
    weight: torch.Tensor,
    by: str = "gamma",
    *,
    gamma: Optional[torch.Tensor] = None,
    entry_epoch: Optional[torch.Tensor] = None,
    granularity: str = "entry",
) -> torch.Tensor:
    """Indices of the groups of ``weight`` (flat entries, or filters) in the order they are pruned.

    See the module docstring for the three orders. ``gamma`` is needed for
    ``by="gamma"``, ``entry_epoch`` (per entry, ``-1`` = never, as kept by
    :class:`SupportTracker`) for ``by="order"``.
    """
    if by not in PRUNE_BY:
        raise ValueError(f"by must be one of {PRUNE_BY}, got {by!r}")
    if granularity not in ("entry", "filter"):
        raise ValueError(f"granularity must be 'entry' or 'filter', got {granularity!r}")
    secondary = _group_norms(weight, granularity)  # smaller ‖W_g‖ first
    if by == "magnitude":
        primary = None
    elif by == "gamma":
        if gamma is None:
            raise ValueError("by='gamma' needs gamma (a DessiLBI optimizer or a {name: Γ} mapping)")
        primary = _group_norms(gamma, granularity)  # Γ = 0 first, then increasing ‖Γ_g‖
    else:
        if entry_epoch is None:
            raise ValueError("by='order' needs entry epochs (a SupportTracker updated after every epoch)")
        epochs = entry_epoch.to(torch.float64)
        epochs = torch.where(epochs.eq(NEVER), torch.full_like(epochs, math.inf), epochs)
        if granularity == "filter":
            epochs = _filter_view(epochs).min(dim=1).values  # a filter enters with its first entry
        primary = -epochs.reshape(-1)  # latest (and never = +inf) first
    order = torch.sort(secondary, stable=True).indices
    if primary is not None:
        order = order[torch.sort(primary[order], stable=True).indices]
    return order


def prune_mask(
    weight: torch.Tensor,
    percent: float,
    by: str = "gamma",
    *,
    gamma: Optional[torch.Tensor] = None,
    entry_epoch: Optional[torch.Tensor] = None,
    granularity: str = "entry",
) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape, False on the first k = ⌊n·p/100 + ½⌋ groups of :func:`prune_order`."""
    order = prune_order(weight, by, gamma=gamma, entry_epoch=entry_epoch, granularity=granularity)
    keep = torch.ones(order.numel(), dtype=torch.bool, device=weight.device)
    keep[order[: num_pruned(order.numel(), percent)]] = False
    if granularity == "filter":
        return keep.reshape((-1,) + (1,) * (weight.dim() - 1)).expand(weight.shape).clone()
    return keep.reshape(weight.shape)


# --- in-place pruning with exact recovery ----------------------------------------------------


class Pruner:
    """Prunes layers of ``model`` in place; :meth:`recover` restores the exact original weights.

    ``source``: the trained :class:`DessiLBI` (Γ, filter/elementwise mode) or
    a ``{name: Γ}`` mapping; may be None for ``by="magnitude"``. ``tracker``:
    a :class:`SupportTracker` updated during training, for ``by="order"``.
    Layer names are parameter names (``"conv3.weight"``) or module names
    (``"conv3"``, meaning its weight).

    >>> pruner = Pruner(model, optimizer, tracker)
    >>> pruner.prune(["conv3", "fc1"], percent=50, by="gamma")
    >>> acc = evaluate(model)
    >>> pruner.recover()
    """

    def __init__(
        self, model: nn.Module, source: Optional[GammaSource] = None, tracker: Optional[SupportTracker] = None
    ) -> None:
        self.model = model
        self.source = source
        self.tracker = tracker
        self._params: Dict[str, nn.Parameter] = dict(model.named_parameters())
        self._layers: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor], str, float]] = {}
        self._source_name: Dict[str, str] = {}  # model name -> name in the optimizer and tracker
        model_name = {id(p): n for n, p in self._params.items()}
        for name, layer in (_layers(source) if source is not None else {}).items():
            # Match an optimizer's parameters to the model's by identity, so that unnamed
            # optimizers (names "param<i>") still prune by the model's layer names.
            key = model_name.get(id(layer[1]), name) if layer[1] is not None else name
            self._layers[key] = layer
            self._source_name[key] = name
        self._originals: Dict[str, torch.Tensor] = {}

    def resolve(self, layer: str) -> str:
        """The parameter name for ``layer`` (``"conv3"`` -> ``"conv3.weight"``)."""
        for candidate in (layer, f"{layer}.weight"):
            if candidate in self._params:
                return candidate
        modules = [n[: -len(".weight")] for n in self._params if n.endswith(".weight")]
        raise ValueError(unknown_name_message("layer", layer, list(self._params) + modules))

    def _granularity(self, name: str, granularity: str) -> str:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if granularity != "auto":
            return granularity
        mode = self._layers[name][2] if name in self._layers else resolve_group_lasso("auto", self._params[name])
        return "filter" if mode == "filter" else "entry"

    def _gamma(self, name: str) -> Optional[torch.Tensor]:
        if name not in self._layers:
            return None
        return self._layers[name][0]

    def _save(self, name: str) -> nn.Parameter:
        p = self._params[name]
        if name not in self._originals:
            self._originals[name] = p.detach().clone()
        return p

    def mask(self, layer: str, percent: float, by: str = "gamma", granularity: str = "auto") -> torch.Tensor:
        """The keep-mask :meth:`prune` would apply to ``layer`` (nothing is modified)."""
        name = self.resolve(layer)
        gran = self._granularity(name, granularity)
        gamma = self._gamma(name)
        if by == "gamma" and gamma is None:
            raise ValueError(f"by='gamma' needs Γ for {name!r}; layers with Γ: {sorted(self._layers)}")
        entry = None
        if by == "order":
            if self.tracker is None:
                raise ValueError("by='order' needs a SupportTracker (Pruner(model, optimizer, tracker))")
            entry = self.tracker.entry_epochs(self._source_name.get(name, name))
        # Orders are computed on the original weights, so repeated prune() calls do not compound.
        weight = self._originals.get(name, self._params[name].detach())
        return prune_mask(weight, percent, by, gamma=gamma, entry_epoch=entry, granularity=gran)

    @torch.no_grad()
    def prune(
        self,
        layers: Union[str, Sequence[str]],
        percent: float,
        by: str = "gamma",
        granularity: str = "auto",
        prune_bias: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Zero ``percent`` % of the groups of each layer (see the module docstring); returns the keep-masks.

        Each layer is pruned relative to its original weights (a second call
        replaces the first). ``prune_bias=True`` also zeroes the bias of
        pruned filters for layers pruned by filter (layers pruned by entry
        keep their bias), as the public ``prune_layer_by_order(..., prune_bias=True)``.
        """
        if isinstance(layers, str):
            layers = [layers]
        names = [self.resolve(layer) for layer in layers]
        masks = {name: self.mask(name, percent, by, granularity) for name in names}  # validate all first
        for name, keep in masks.items():
            p = self._save(name)
            p.copy_(torch.where(keep, self._originals[name], torch.zeros_like(p)))
            bias_name = name[: -len("weight")] + "bias" if name.endswith("weight") else None
            by_filter = self._granularity(name, granularity) == "filter"
            if prune_bias and by_filter and bias_name in self._params:
                b = self._save(bias_name)
                b.copy_(torch.where(_filter_view(keep)[:, 0], self._originals[bias_name], torch.zeros_like(b)))
        return masks

    @torch.no_grad()
    def apply_w_star(self, layers: Optional[Iterable[str]] = None) -> None:
        """Replace W by W* = W ⊙ 1[Γ ≠ 0] for ``layers`` (default: every layer with Γ); recoverable."""
        names = [self.resolve(layer) for layer in layers] if layers is not None else list(self._layers)
        missing = [n for n in names if n not in self._layers]
        if missing:
            raise ValueError(f"no Γ for {missing}; layers with Γ: {sorted(self._layers)}")
        for name in names:
            p = self._save(name)
            p.copy_(w_star(self._originals[name], self._layers[name][0]))

    @torch.no_grad()
    def recover(self) -> None:
        """Restore every modified parameter exactly (bit for bit) and forget the copies."""
        for name, original in self._originals.items():
            self._params[name].copy_(original)
        self._originals.clear()

    @contextlib.contextmanager
    def pruned(self, layers: Union[str, Sequence[str]], percent: float, **kw: Any) -> Iterator[Dict[str, torch.Tensor]]:
        """``with pruner.pruned(["conv3"], 50): acc = evaluate(model)`` — recovers on exit."""
        try:
            yield self.prune(layers, percent, **kw)
        finally:
            self.recover()


# --- the pruning table ---------------------------------------------------------------------------

DEFAULT_PERCENTS = (0, 5, 10, 20, 40, 60, 80)  # the columns of the notes' section 3.1 table


def pruning_table(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    layer_sets: Mapping[str, Sequence[str]],
    percents: Sequence[float] = DEFAULT_PERCENTS,
    by: str = "gamma",
    *,
    source: Optional[GammaSource] = None,
    tracker: Optional[SupportTracker] = None,
    granularity: str = "auto",
    prune_bias: bool = False,
) -> List[Dict[str, Any]]:
    """Accuracy after pruning each layer set at each percentage; the model is recovered after each.

    ``evaluate_fn(model) -> accuracy`` is the caller's. Returns flat records
    ``{"layer_set", "layers", "percent", "by", "granularity", "accuracy"}``
    (``layers`` joined with ``+``); see :func:`format_pruning_table`.
    """
    if not layer_sets:
        raise ValueError("layer_sets must name at least one set of layers, got {}")
    pruner = Pruner(model, source, tracker)
    for layers in layer_sets.values():  # fail on a bad name before evaluating anything
        for layer in layers:
            pruner.resolve(layer)
    for p in percents:
        num_pruned(1, p)
    records = []
    for set_name, layers in layer_sets.items():
        for percent in percents:
            with pruner.pruned(list(layers), percent, by=by, granularity=granularity, prune_bias=prune_bias):
                accuracy = float(evaluate_fn(model))
            records.append(
                {
                    "layer_set": set_name,
                    "layers": "+".join(layers),
                    "percent": percent,
                    "by": by,
                    "granularity": granularity,
                    "accuracy": accuracy,
                }
            )
    return records


def format_pruning_table(records: Sequence[Mapping[str, Any]], digits: int = 4) -> str:
    """A Markdown table: one row per layer set, one column per pruned percentage, cells = accuracy."""
    percents: List[Any] = []
    rows: Dict[str, Dict[Any, float]] = {}
    for r in records:
        if r["percent"] not in percents:
            percents.append(r["percent"])
        rows.setdefault(r["layer_set"], {})[r["percent"]] = r["accuracy"]
    header = ["pruned layers \\ percent"] + [f"{p:g}%" for p in percents]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * len(percents)) + "|"]
    for name, cells in rows.items():
        values = [f"{cells[p]:.{digits}f}" if p in cells else "–" for p in percents]
        lines.append("| " + " | ".join([name] + values) + " |")
    return "\n".join(lines)
