"""Convert a float model's Conv2d/Linear layers in place: shared machinery and `binarize`."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from lowbit.nn.binary import BinaryConv2d, BinaryLinear, QuantizedWeightLayer
from lowbit.nn.select import Pattern
from lowbit.nn.spec import QuantizerSpec


def layer_like(layer: nn.Module, conv_cls: type, linear_cls: type, **options: Any) -> nn.Module:
    """A ``conv_cls`` / ``linear_cls`` with ``layer``'s hyper-parameters, sharing its Parameter objects.

    ``options`` go to the new layer's constructor (quantizers, bits, ``device``).
    """
    options = dict(bias=layer.bias is not None, **options)
    if isinstance(layer, nn.Conv2d):
        new: nn.Module = conv_cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **options,
        )
    else:
        new = linear_cls(layer.in_features, layer.out_features, **options)
    # The same Parameter objects: values, requires_grad and optimizer state are kept.
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def replace_layers(model: nn.Module, convert: Callable[[nn.Module], nn.Module], keep_first_last: bool) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` / ``nn.Linear`` of ``model`` by ``convert(layer)``, in place.

    "First" and "last" (kept when ``keep_first_last``) are in module
    registration order. Only layers whose type is exactly ``nn.Conv2d`` or
    ``nn.Linear`` are converted; already quantized layers are left alone but
    count for first/last, so converting twice is harmless. A module reachable
    under two names is replaced under its first name only.
    """
    candidates: List[Tuple[str, nn.Module]] = [
        (name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    if keep_first_last:
        candidates = candidates[1:-1]
    for name, module in candidates:
        if type(module) not in (nn.Conv2d, nn.Linear) or isinstance(module, QuantizedWeightLayer):
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, convert(module))
    return model


# The float layers binarize knows, and their binary twins (exact types; see _check_convertible).
_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def _binary_classes() -> Dict[type, type]:
    from lowbit.nn.binary_conv import BinaryConv1d, BinaryConvTranspose2d

    return {
        nn.Linear: BinaryLinear,
        nn.Conv1d: BinaryConv1d,
        nn.Conv2d: BinaryConv2d,
        nn.ConvTranspose2d: BinaryConvTranspose2d,
    }


def _binary_twin(layer: nn.Module, binary_cls: type, **options: Any) -> nn.Module:
    """A ``binary_cls`` with ``layer``'s hyper-parameters, sharing its weight and bias Parameter objects.

    Built on the meta device: allocates nothing and draws nothing from the global RNG.
    """
    options = dict(bias=layer.bias is not None, device="meta", dtype=layer.weight.dtype, **options)
    if isinstance(layer, nn.Linear):
        new: nn.Module = binary_cls(layer.in_features, layer.out_features, **options)
    else:
        conv = dict(
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
        )
        if isinstance(layer, nn.ConvTranspose2d):
            conv["output_padding"] = layer.output_padding
        new = binary_cls(layer.in_channels, layer.out_channels, layer.kernel_size, **conv, **options)
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def _check_convertible(layers: Sequence[Tuple[str, nn.Module]], subclasses: str) -> Dict[str, type]:
    """name -> binary class for every layer to convert; ValueError listing every layer binarize cannot convert."""
    classes = _binary_classes()
    plan: Dict[str, type] = {}
    refused: List[Tuple[str, str]] = []  # (why, class name)
    for name, layer in layers:
        exact = classes.get(type(layer))
        if exact is not None:
            plan[name] = exact
            continue
        base = next((cls for cls in classes if isinstance(layer, cls)), None)
        kind = type(layer).__name__
        if base is not None and subclasses == "convert":
            plan[name] = classes[base]
        elif base is not None:
            why = f"a subclass of nn.{base.__name__} with its own forward, which a {classes[base].__name__} would drop"
            refused.append((f"{name!r} is a {kind}, {why}", kind))
        else:
            refused.append((f"{name!r} is a {kind}, for which lowbit has no binary layer", kind))
    if refused:
        raise ValueError(
            "binarize cannot convert " + "; ".join(why for why, _ in refused) + ". Exclude these layers (exclude=[...] "
            f"by name, or by type: 'type:{refused[0][1]}'), or pass subclasses='convert' to replace a subclass by the "
            "plain binary layer anyway"
        )
    return plan


def _first_few(items: List[str], n: int = 6) -> str:
    return "; ".join(items[:n]) + (f"; and {len(items) - n} more" if len(items) > n else "")


def binarize(
    model: nn.Module,
    input_quantizer: QuantizerSpec = "ste_clipped",
    weight_quantizer: QuantizerSpec = "xnor_weight",
    keep_first_last: bool = True,
    *,
    include: Optional[Sequence[Pattern]] = None,
    exclude: Sequence[Pattern] = (),
    weight_clip: Optional[float] = None,
    subclasses: str = "error",
    example_input: Any = None,
) -> List[str]:
    """Replace the model's Linear / Conv1d / Conv2d / ConvTranspose2d layers by binary ones, in place.

    Returns the names of the converted layers (``model.get_submodule(name)``
    gives each), in registration order.

    Each converted layer becomes a :class:`BinaryLinear`, :class:`BinaryConv1d`,
    :class:`BinaryConv2d` or :class:`BinaryConvTranspose2d` with the same
    hyper-parameters that *shares* the original weight and bias Parameters (so
    values and optimizer references survive) and gets its own quantizer
    instances built from the specs (a module spec is deep-copied per layer;
    Larq names such as ``"ste_sign"`` work). ``weight_clip`` (> 0) sets Larq's
    latent-weight clipping on every converted layer (:mod:`lowbit.nn.latent`).

    Which layers:

    - with ``keep_first_last`` the first and the last weight layer (Linear or
      any convolution, in registration order, already quantized ones included)
      stay float, as in XNOR-Net and Bi-Real Net, even if ``include`` matches them;
    - ``include`` (default: all) and ``exclude`` are lists of patterns: name
      globs (``"layer1.*"``; a module's name also selects what is inside it),
      ``"type:ClassName"`` or classes (:mod:`lowbit.nn.select`). A pattern that
      matches no weight layer is an error;
    - already quantized layers are left alone, so calling ``binarize`` twice is
      harmless; a module reachable under two names is converted once;
    - a subclass of a supported layer (timm's ``StdConv2d`` is a Conv2d with
      its own forward) and a layer with no binary twin (Conv3d, ConvTranspose1d)
      are refused with a ValueError naming them, before anything is replaced:
      exclude them, or pass ``subclasses="convert"`` to replace subclasses anyway.

    Dead signs: a sign after a ReLU (ReLU6, sigmoid, softmax) sees only inputs
    >= 0 and outputs +1 everywhere, so the layer passes no information. After
    converting, ``binarize`` warns (:class:`lowbit.nn.DeadSignWarning`) about
    every converted layer with a sign input quantizer whose input is
    non-negative by construction (a static trace, :mod:`lowbit.nn.sign_inputs`)
    and, given ``example_input`` (a batch), every layer whose quantized input
    is constant on it. The fix is to put the sign after BatchNorm, not after a
    ReLU: e.g. a model built with ``act="elu"`` (sign(elu(x)) = sign(x)).
    """
    from lowbit.nn.latent import check_weight_clip
    from lowbit.nn.select import check_patterns, select_modules
    from lowbit.nn.sign_inputs import DeadSignWarning, constant_quantized_inputs, is_sign_like, nonnegative_inputs
    from lowbit.nn.spec import make_quantizer

    # --- validate everything before replacing anything
    errors = []
    for what, spec in (("input_quantizer", input_quantizer), ("weight_quantizer", weight_quantizer)):
        try:
            make_quantizer(spec)
        except (KeyError, ValueError, TypeError) as error:
            errors.append(f"{what}: {error}")
    try:
        weight_clip = check_weight_clip(weight_clip)
    except ValueError as error:
        errors.append(str(error))
    if not isinstance(keep_first_last, bool):
        errors.append(f"keep_first_last must be a bool, got {keep_first_last!r}")
    if subclasses not in ("error", "convert"):
        errors.append(f"subclasses must be 'error' or 'convert', got {subclasses!r}")
    try:
        include = None if include is None else check_patterns(include, "binarize include")
        exclude = check_patterns(exclude, "binarize exclude")
    except ValueError as error:
        errors.append(str(error))
    if errors:
        raise ValueError("binarize: " + "; ".join(errors))

    weight_layers: List[Tuple[str, nn.Module]] = []
    seen = set()
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHT_LAYERS) and id(module) not in seen:
            seen.add(id(module))
            weight_layers.append((name, module))
    candidates = weight_layers
    if include is not None:
        candidates = select_modules(weight_layers, include, "binarize include")
    if exclude:
        excluded = {n for n, _ in select_modules(weight_layers, exclude, "binarize exclude")}
        candidates = [(n, m) for n, m in candidates if n not in excluded]
    if keep_first_last and weight_layers:
        ends = {weight_layers[0][0], weight_layers[-1][0]}
        candidates = [(n, m) for n, m in candidates if n not in ends]
    candidates = [(n, m) for n, m in candidates if not isinstance(m, QuantizedWeightLayer)]
    plan = _check_convertible(candidates, subclasses)

    # --- convert
    for name, layer in candidates:
        twin = _binary_twin(
            layer, plan[name], input_quantizer=input_quantizer, weight_quantizer=weight_quantizer, weight_clip=weight_clip
        )
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, twin)
    converted = [name for name, _ in candidates]

    # --- dead signs
    modules = dict(model.named_modules())
    signed = [n for n in converted if is_sign_like(modules[n].input_quantizer)]
    by_construction = nonnegative_inputs(model, signed) if signed else {}
    if by_construction:
        listed = _first_few([f"{n} (after {why})" for n, why in by_construction.items()])
        warnings.warn(
            f"binarize: the sign input of {len(by_construction)} of {len(converted)} converted layers is non-negative "
            f"by construction, so every binary activation there is +1 and the layer passes no information: {listed}. "
            "Put the sign after BatchNorm instead of after a ReLU (e.g. build the model with act='elu': "
            "sign(elu(x)) = sign(x)), exclude these layers, or use a 0/1 input quantizer ('ste_heaviside')",
            DeadSignWarning,
            stacklevel=2,
        )
    if example_input is not None and converted:
        constant = {
            n: v for n, v in constant_quantized_inputs(model, converted, example_input).items() if n not in (by_construction or {})
        }
        if constant:
            listed = _first_few([f"{n} (all {numel} values = {value:g})" for n, (value, numel) in constant.items()])
            warnings.warn(
                f"binarize: the quantized input of {len(constant)} of {len(converted)} converted layers is constant on "
                f"the example batch, so these layers pass no information: {listed}",
                DeadSignWarning,
                stacklevel=2,
            )
    return converted


__all__ = ["binarize", "layer_like", "replace_layers"]
