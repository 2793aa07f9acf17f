"""Building blocks shared by the model zoo: activations by name, conv-BN-act, ResNet stems and
shortcuts, and the checks of the options every family takes (width, width_mult, max_dropout)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from torch import nn

from lowbit.registry import UnknownNameError, unknown_name_message

# The activations compared in the notes (§1.4), plus tanh for the classic LeNet.
ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "elu": nn.ELU,
    "rrelu": nn.RReLU,  # random slope in [1/8, 1/3] in training, the mean in eval
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """A new activation module by name: relu, gelu, mish, elu, rrelu or tanh (PyTorch defaults)."""
    if name not in ACTIVATIONS:
        raise UnknownNameError(unknown_name_message("activation", name, ACTIVATIONS))
    return ACTIVATIONS[name]()


def conv_bn_act(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act: str = "relu"
) -> nn.Sequential:
    """Conv(k x k, 'same' padding, no bias) -> BatchNorm -> activation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        make_activation(act),
    )


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else ValueError naming option ``name`` and quoting it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def projection_shortcut(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A ResNet block's shortcut, float: identity (an empty ``nn.Sequential``) where the shape is kept,
    else conv1x1(stride, no bias) -> BN, (N, in, H, W) -> (N, out, H/stride, W/stride) (the kuangliu
    CIFAR ResNet's; He et al.'s option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def check_width(width: int) -> int:
    """``width`` if it is an integer >= 1, else ValueError quoting it."""
    return check_positive_int("width", width)


def check_width_mult(width_mult: object) -> float:
    """``width_mult`` as a float if it is a number > 0 (not a bool), else ValueError quoting it."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
    return float(width_mult)


def scaled(channels: int, width_mult: float) -> int:
    """round(channels x width_mult), at least 1: the channel count of a width-scaled layer."""
    return max(1, int(round(channels * width_mult)))


def check_max_dropout(p: Optional[float]) -> Optional[float]:
    """``p`` if it is None or a number in [0, 1) (a MaxDropout rate), else ValueError quoting it."""
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0):
        raise ValueError(f"max_dropout must be None or in [0, 1), got {p!r}")
    return p


# The first conv block ("stem") variants compared in the notes §1.6, all ending in
# `width` channels. "7x7" is He et al.'s ImageNet stem (7x7 stride-2 conv -> BN ->
# act -> 3x3 stride-2 max pool: 32x32 -> 8x8); the others are stride-1 convs
# (32x32 stays 32x32), in -> width -> ... -> width, each followed by BN + act.
# "3x3" is the kuangliu CIFAR stem; the stacks trade one large kernel for depth
# at the same receptive field (3,5 and 3,3,3 both see 7x7).
STEMS: Tuple[str, ...] = ("3x3", "3x3,3x3", "3x3,3x3,3x3", "3x3,5x5", "7x7")


def declare_stem_input(module: nn.Module, in_channels: int, stem: str) -> None:
    """For a 32x32 model built on :func:`make_stem` whose body downsamples 8x: set what
    :func:`lowbit.models.check_model_fits` reads. ``input_shape`` = (in, 32, 32), ``stem_name``,
    ``small_stem`` = "3x3", ``min_input_size`` = 8, or 32 with the "7x7" stem's 4x more."""
    module.input_shape = (in_channels, 32, 32)
    module.stem_name, module.small_stem = stem, "3x3"
    module.min_input_size = 32 if str(stem).replace(" ", "") == "7x7" else 8


def make_stem(stem: str, in_channels: int, width: int, act: str = "relu") -> nn.Sequential:
    """The first conv block: one of :data:`STEMS` (spaces ignored); (N, in, H, W) -> (N, width, H', W')."""
    key = stem.replace(" ", "") if isinstance(stem, str) else stem
    if key not in STEMS:
        raise UnknownNameError(unknown_name_message("stem", stem, STEMS))
    if key == "7x7":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),  # (N, width, H/2, W/2)
            nn.BatchNorm2d(width),
            make_activation(act),
            nn.MaxPool2d(3, stride=2, padding=1),  # (N, width, H/4, W/4)
        )
    layers = []
    channels = in_channels
    for kernel in key.split(","):
        size = int(kernel.split("x")[0])
        layers.extend(conv_bn_act(channels, width, size, act=act))
        channels = width
    return nn.Sequential(*layers)


__all__ = [
    "ACTIVATIONS",
    "STEMS",
    "check_max_dropout",
    "check_positive_int",
    "check_width",
    "check_width_mult",
    "conv_bn_act",
    "declare_stem_input",
    "make_activation",
    "make_stem",
    "projection_shortcut",
    "scaled",
]
