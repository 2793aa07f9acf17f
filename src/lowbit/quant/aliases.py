"""Larq and bitorch quantizer names as aliases of lowbit's, and hints that never mislead.

A user coming from Larq writes ``input_quantizer="ste_sign"`` and
``{"name": "ste_sign", "clip_value": 0.5}``; from bitorch, ``"sign"``. Each such
name is an :class:`Alias`: the lowbit quantizer it means, how its keyword
arguments translate (Larq's ``clip_value`` is lowbit's ``clip``), and where the
two definitions differ. ``get_quantizer`` resolves aliases, so every place that
takes a quantizer spec (layers, ``binarize``, configs, estimators) accepts them.

Larq's definitions (``larq.quantizers``; closed forms, tested in
tests/test_larq_names.py) against lowbit's:

=====================  ==========================================  ==========================
Larq / bitorch name    Larq's (bitorch's) q(x); dq/dx              lowbit
=====================  ==========================================  ==========================
``ste_sign``           sign(x) (sign(0) = +1); 1{|x| <= clip}      ``ste_clipped`` (clip = 1);
                                                                   ``clip_value=None``: ``ste``
``approx_sign``        sign(x); (2 - 2|x|) 1{|x| <= 1}             ``approx_sign``
``swish_sign``         sign(x); b(2 - bx tanh(bx/2))/(1 + cosh bx)  ``swish_sign`` (beta = 5)
``magnitude_aware_``   mean|x| sign(x), mean over all axes but     ``magnitude_aware_sign``:
``sign``               the last (TF layout); alpha 1{|x| <= clip}  the mean is over all dims
                                                                   but dim 0 (PyTorch layout)
``ste_heaviside``      1{x > 0}; 1{|x| <= clip}                    ``ste_heaviside``
``ste_tern``           sign(x) 1{|x| > t} with +-1 at |x| = t;     ``ste_tern``: 0 at |x| = t
                       t = 0.7 mean|x| if ternary_weight_networks  (TWN's definition)
``dorefa_quantizer``   round(n clip(x, 0, 1)) / n, n = 2^k - 1,    ``dorefa``: ties round up
                       ties to even; 1{0 <= x <= 1}
bitorch ``sign``       sign(x) (sign(0) = +1); identity STE        ``ste``
=====================  ==========================================  ==========================

Larq's class names (``SteSign``, ``ApproxSign``, ``DoReFa``, ...) are aliases
too. Names that mean something else elsewhere are *not* aliased but refused
with an explanation (bitorch's ``steheaviside`` is a +-1 sign, not Larq's 0/1
step), so a near miss never lands on a different quantizer.

Hints: an unknown name is compared, ignoring case, ``_`` and ``-``, with every
registered name and alias; the suggestion names what an alias resolves to
("'ste_sign' (Larq's name for 'ste_clipped', clip=1)").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from lowbit.quant.base import QUANTIZERS
from lowbit.registry import UnknownNameError, nearest

ParamTranslator = Callable[[Dict[str, Any]], Tuple[str, Dict[str, Any]]]


@dataclass(frozen=True)
class Alias:
    """A foreign quantizer name and the lowbit quantizer it means.

    ``renames`` maps the foreign keyword names to lowbit's (``clip_value`` ->
    ``clip``); ``translate``, when set, rewrites the (renamed) parameters and may
    pick another target (Larq's ``clip_value=None`` means no clipping: ``ste``).
    """

    name: str
    target: str
    source: str  # "Larq" | "bitorch"
    renames: Mapping[str, str] = field(default_factory=dict)
    translate: Optional[ParamTranslator] = None
    differs: str = ""  # where the definitions differ, "" if nowhere

    def resolve(self, params: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
        """(lowbit registry name, lowbit keyword arguments) for ``params`` given in either spelling."""
        renamed: Dict[str, Any] = {}
        for key, value in params.items():
            new = self.renames.get(key, key)
            if new in renamed:
                raise ValueError(f"quantizer {self.name!r}: {key!r} and {new!r} are the same parameter; give one")
            renamed[new] = value
        if self.translate is not None:
            return self.translate(renamed)
        return self.target, renamed

    def describe(self) -> str:
        return f"{self.source}'s name for {self.target!r}" + (f"; {self.differs}" if self.differs else "")


def _ste_sign(params: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    # Larq: clip_value=None turns the clipping off, i.e. the identity STE.
    if "clip" in params and params["clip"] is None:
        return "ste", {k: v for k, v in params.items() if k != "clip"}
    return "ste_clipped", params


def _ste_tern(params: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    # Larq's ternary_weight_networks (bool) is lowbit's threshold_mode ("mean" | "fixed").
    if "ternary_weight_networks" in params:
        twn = params.pop("ternary_weight_networks")
        if not isinstance(twn, bool):
            raise ValueError(f"ternary_weight_networks must be a bool, got {twn!r}")
        if "threshold_mode" in params:
            raise ValueError("give ternary_weight_networks (Larq) or threshold_mode (lowbit), not both")
        params["threshold_mode"] = "mean" if twn else "fixed"
    return "ste_tern", params


def _dorefa(params: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    mode = params.pop("mode", "activations")
    if mode != "activations":
        raise ValueError(
            f"dorefa_quantizer mode={mode!r}: lowbit's dorefa is DoReFa's activation quantizer (mode='activations'); "
            "for k-bit weights use 'uniform_weight' (bits=k)"
        )
    return "dorefa", params


_LARQ_CLIP = {"clip_value": "clip"}
_TERN_DIFFERS = "at |x| = threshold exactly Larq gives +-1, lowbit 0 (TWN's definition)"
_DOREFA_DIFFERS = "at exact ties n x = i + 1/2 Larq rounds to even, lowbit up"
_MAS_DIFFERS = "alpha is the mean |x| over all dims but dim 0 (PyTorch's output channel), Larq's over all axes but the last"


def _larq(names: Tuple[str, ...], target: str, **kw: Any) -> List[Alias]:
    return [Alias(name, target, "Larq", **kw) for name in names]


ALIASES: Dict[str, Alias] = {
    a.name: a
    for a in [
        *_larq(("ste_sign", "SteSign"), "ste_clipped", renames=_LARQ_CLIP, translate=_ste_sign),
        *_larq(("ApproxSign",), "approx_sign"),
        *_larq(("SwishSign",), "swish_sign"),
        *_larq(("MagnitudeAwareSign",), "magnitude_aware_sign", renames=_LARQ_CLIP, differs=_MAS_DIFFERS),
        *_larq(("SteHeaviside",), "ste_heaviside", renames=_LARQ_CLIP),
        *_larq(
            ("SteTern",),
            "ste_tern",
            renames={"clip_value": "clip", "threshold_value": "threshold"},
            translate=_ste_tern,
            differs=_TERN_DIFFERS,
        ),
        *_larq(("dorefa_quantizer", "DoReFa", "DoReFaQuantizer"), "dorefa", translate=_dorefa, differs=_DOREFA_DIFFERS),
        Alias("sign", "ste", "bitorch"),
    ]
}

# Larq's keyword spellings are also accepted by lowbit's quantizers of the same name
# (``{"name": "ste_heaviside", "clip_value": 0.5}``), through the same translation.
_SAME_NAME_AS_LARQ: Dict[str, Alias] = {
    "magnitude_aware_sign": ALIASES["MagnitudeAwareSign"],
    "ste_heaviside": ALIASES["SteHeaviside"],
    "ste_tern": ALIASES["SteTern"],
}

# Names used elsewhere for something lowbit does not have under a near-identical name:
# refused with an explanation instead of a misleading "did you mean".
FOREIGN_NAMES: Dict[str, str] = {
    "steheaviside": (
        "bitorch's 'steheaviside' outputs +-1 (+1 for x > 0, -1 otherwise) with a clipped STE; it is not "
        "Larq's/lowbit's 'ste_heaviside' (0/1 output). The closest lowbit quantizer is 'ste_clipped' "
        "(differs only at x = 0, where it gives +1)"
    ),
    "inputdorefa": (
        "bitorch's 'inputdorefa' is round(n clamp(x, 0, 1)) / n with the identity STE; lowbit's 'dorefa' "
        "(k_bit) has the same forward (ties round up) but passes the gradient only on 0 <= x <= 1"
    ),
    "weightdorefa": (
        "bitorch's 'weightdorefa' is DoReFa's tanh-normalised weight quantizer, which lowbit does not have; "
        "for k-bit weights use 'uniform_weight' (bits=k)"
    ),
}


def _normalized(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def suggestion(name: str) -> Optional[str]:
    """The registered name or alias a misspelt ``name`` most likely means, or None.

    A match ignoring case, ``_`` and ``-`` wins (``SteClipped`` -> ``ste_clipped``);
    otherwise the closest by edit similarity among registered names and aliases.
    """
    candidates = [*QUANTIZERS.names(), *ALIASES]
    key = _normalized(str(name))
    exact = [c for c in candidates if _normalized(c) == key]
    if exact:
        return exact[0]
    return nearest(str(name), candidates)


def unknown_quantizer_message(name: str) -> str:
    """The error for an unknown quantizer name: the hint says what an alias means; all valid names listed."""
    if _normalized(str(name)) in FOREIGN_NAMES:
        note = FOREIGN_NAMES[_normalized(str(name))]
        return f"unknown quantizer {name!r}: {note}. Valid quantizer names: {', '.join(QUANTIZERS.names())}"
    hint = suggestion(name)
    if hint is None:
        did_you_mean = ""
    elif hint in ALIASES:
        did_you_mean = f" Did you mean {hint!r} ({ALIASES[hint].describe()})?"
    else:
        did_you_mean = f" Did you mean {hint!r}?"
    return (
        f"unknown quantizer {name!r}.{did_you_mean} Valid quantizer names: {', '.join(QUANTIZERS.names())}; "
        f"Larq/bitorch aliases: {', '.join(sorted(ALIASES))}"
    )


def resolve_quantizer(name: str, params: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(registry name, keyword arguments) for a registered name or an alias; UnknownNameError otherwise."""
    if not isinstance(name, str):
        raise UnknownNameError(f"a quantizer name must be a string, got {name!r}")
    if name in ALIASES:
        return ALIASES[name].resolve(params)
    if name in _SAME_NAME_AS_LARQ:
        return _SAME_NAME_AS_LARQ[name].resolve(params)
    if name in QUANTIZERS:
        return name, dict(params)
    raise UnknownNameError(unknown_quantizer_message(name))


def list_quantizer_aliases() -> Dict[str, str]:
    """Every alias and the lowbit quantizer it means, e.g. ``{"ste_sign": "ste_clipped", ...}``."""
    return {name: alias.target for name, alias in sorted(ALIASES.items())}


__all__ = [
    "ALIASES",
    "FOREIGN_NAMES",
    "Alias",
    "list_quantizer_aliases",
    "resolve_quantizer",
    "suggestion",
    "unknown_quantizer_message",
]
