"""Pieces shared by the binary model zoo (Bi-Real Net, ReActNet, QuickNet, BinaryDenseNet, ...).

Each zoo module builds its network from these, from :class:`lowbit.nn.BinaryConv2d`
and from quantizers by name, so that the architectures read like their papers:

- :func:`batch_norm`: BatchNorm with Keras's options (``center`` / ``scale``,
  momentum as Keras states it, Keras's default epsilon 1e-3), so that parameter
  counts match the Keras reference implementations (larq-zoo) exactly.
- :class:`CenteredBatchNorm2d` / :class:`CenteredBatchNorm1d`: BatchNorm with a
  learned offset and no learned scale (Keras ``scale=False``), as in XNOR-Net,
  DoReFa-Net and Binary AlexNet, whose next layer is a sign that ignores scale.
- :func:`downsample_shortcut`: Bi-Real Net's real-valued shortcut, 2x2 average
  pool -> float 1x1 conv -> BatchNorm.
- :class:`BinaryConvResidual` and :func:`bireal_channels`: Bi-Real Net's block,
  BN(BinConv3x3(q_a(x))) + shortcut(x), and the channels of its 16 blocks in a
  ResNet-18 (Bi-Real Net, ResNetE).
- :func:`resnet_stem`: the ResNet stem (7x7/2 conv, 3x3/2 max pool; a 3x3 conv
  for small images) with each model's own normalisation and activation.
- :class:`OnePaddedBinaryConv2d`: a binary conv whose border is padded with +1
  (QuickNet's ``pad_values=1``), so every input it sees is exactly +-1.
- :class:`LearnableBias`: ReActNet's per-channel shift (RSign / RPReLU).
- :func:`blur_kernel`: the fixed anti-aliasing filter of QuickNet's transitions.
- :func:`stem_kind` / :func:`image_size_error`: the ``stem`` option every zoo
  entry takes ("imagenet" for 224x224, "small" for 32x32 / 28x28 images) and the
  size check that names model, stem and image size; :func:`width_options` and
  :func:`fixed_size_options` validate an entry's options before it is built.

Padding: Keras's ``padding="same"`` pads a strided layer more at the bottom/right,
PyTorch symmetrically. The padding amounts below give the same output sizes as
"same" at the sizes the zoo is built for (224, 32, 28) -- so the parameter and MAC
counts are equal -- but the windows sit up to one pixel apart from Keras's, so
Keras weights would need re-padding to be loaded.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.layers import check_positive_int, check_width, check_width_mult, scaled
from lowbit.nn import BinaryConv2d, QuantizerSpec, make_quantizer
from lowbit.registry import UnknownNameError, unknown_name_message

KERAS_BN_EPSILON = 1e-3  # tf.keras.layers.BatchNormalization default (PyTorch: 1e-5)
ZOO_STEMS = ("imagenet", "small")


class _CenteredBatchNorm:
    """BatchNorm with a learned per-channel offset beta and no learned scale.

    y = (x - mean) / sqrt(var + eps) + beta, the running statistics as in
    ``nn.BatchNorm``. Keras's ``BatchNormalization(scale=False)``. Built as a
    non-affine BatchNorm with a ``bias`` parameter: ``nn.BatchNorm``'s forward
    passes ``weight`` (None) and ``bias`` to ``F.batch_norm``, which adds it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)  # type: ignore[call-arg]
        self.bias = nn.Parameter(torch.zeros(num_features))


class CenteredBatchNorm2d(_CenteredBatchNorm, nn.BatchNorm2d):
    """(N, C, H, W) BatchNorm with an offset and no scale (Keras ``scale=False``)."""


class CenteredBatchNorm1d(_CenteredBatchNorm, nn.BatchNorm1d):
    """(N, C) BatchNorm with an offset and no scale (Keras ``scale=False``)."""


def batch_norm(
    channels: int,
    momentum: float = 0.99,
    eps: float = KERAS_BN_EPSILON,
    *,
    scale: bool = True,
    center: bool = True,
    dims: int = 2,
) -> nn.Module:
    """A BatchNorm stated in Keras's terms.

    ``momentum`` is Keras's (running = m running + (1 - m) batch), i.e. PyTorch's
    ``1 - momentum``; ``scale`` / ``center`` say whether gamma / beta are learned;
    ``dims`` = 2 for images, 1 for vectors.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Keras BatchNorm momentum must be in [0, 1), got {momentum!r}")
    torch_momentum = 1.0 - momentum
    if scale != center:
        if scale:
            raise ValueError("batch_norm(scale=True, center=False) is not used by the zoo and not implemented")
        cls = CenteredBatchNorm2d if dims == 2 else CenteredBatchNorm1d
        return cls(channels, eps=eps, momentum=torch_momentum)
    cls2 = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls2(channels, eps=eps, momentum=torch_momentum, affine=scale)


def downsample_shortcut(in_channels: int, out_channels: int, momentum: float = 0.99, eps: float = KERAS_BN_EPSILON):
    """Bi-Real Net's real-valued downsampling shortcut: (N, in, H, W) -> (N, out, ceil(H/2), ceil(W/2)).

    2x2 average pool (stride 2; a partial window at an odd border is averaged
    over its valid pixels, as Keras's "same" pooling) -> float 1x1 conv -> BatchNorm.
    """
    return nn.Sequential(
        nn.AvgPool2d(2, stride=2, ceil_mode=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        batch_norm(out_channels, momentum, eps),
    )


class BinaryConvResidual(nn.Module):
    """(N, in, H, W) -> (N, out, H/stride, W/stride): BN(BinConv3x3(stride)(q_a(x))) + shortcut(x).

    Bi-Real Net's block (Liu et al., ECCV 2018, Fig. 2), one binary conv inside
    each real-valued shortcut; q_a = ``act`` is the conv's input quantizer.
    shortcut = identity where ``in_channels == out_channels``, else
    :func:`downsample_shortcut` (which halves the size: use stride 2 there).
    ``momentum`` / ``eps`` are the BatchNorms' (Keras's terms, :func:`batch_norm`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        act: QuantizerSpec,
        weight_quantizer: QuantizerSpec,
        momentum: float,
        eps: float = KERAS_BN_EPSILON,
    ) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            in_channels, out_channels, 3, stride, padding=1, input_quantizer=act, weight_quantizer=weight_quantizer
        )
        self.bn = batch_norm(out_channels, momentum, eps)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else downsample_shortcut(in_channels, out_channels, momentum, eps)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


def bireal_channels(width: int) -> List[Tuple[int, int]]:
    """(in, out) channels of the 16 one-conv blocks of a Bi-Real ResNet-18: w x4, 2w x4, 4w x4, 8w x4.

    The first block of each later stage doubles the channels (in != out) and
    halves the size; the others keep both.
    """
    pairs, channels = [], width
    for stage in range(4):
        for _ in range(4):
            pairs.append((channels, width * 2**stage))
            channels = width * 2**stage
    return pairs


def resnet_stem(
    stem: str,
    in_channels: int,
    width: int,
    norm_act: Callable[[], List[nn.Module]],
    *,
    small_norm_act: bool = True,
    after_pool: Callable[[], List[nn.Module]] = list,
) -> nn.Sequential:
    """The ResNet stem of the binary zoo, float: (N, in, S, S) -> (N, width, S', S').

        "imagenet": conv7x7/2 (width) -> norm_act -> maxpool 3x3/2 -> after_pool     S' = S/4
        "small":    conv3x3 (width) -> norm_act (only if ``small_norm_act``)          S' = S

    ``norm_act()`` / ``after_pool()`` make the model's own layers (its BatchNorm,
    its activation) anew; convs have no bias.
    """
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),  # (N, w, S/2, S/2)
            *norm_act(),
            nn.MaxPool2d(3, stride=2, padding=1),  # (N, w, S/4, S/4)
            *after_pool(),
        )
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), *(norm_act() if small_norm_act else []))


class OnePaddedBinaryConv2d(BinaryConv2d):
    """A :class:`lowbit.nn.BinaryConv2d` whose zero-padding is replaced by +1 padding of the binary input.

    y = conv2d(pad(q_x(x), p, value=+1), q_w(W)): every value the kernel sees is
    +-1, so the layer is an exact XNOR-popcount (QuickNet; Larq's
    ``pad_values=1.0``; Bannink et al., "Larq Compute Engine", MLSys 2021).
    ``padding`` is an int (the same on all sides).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.padding, tuple) or isinstance(self.padding, str):
            raise ValueError(f"OnePaddedBinaryConv2d needs an integer padding, got {self.padding!r}")
        self.pad_amount = int(self.padding[0])
        self.padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_amount
        x = F.pad(self.quantize_input(x), (p, p, p, p), value=1.0)  # (N, C, H + 2p, W + 2p)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class LearnableBias(nn.Module):
    """x + b with a learned per-channel b, (N, C, H, W) -> (N, C, H, W); zero at initialisation.

    ReActNet's "move": before a sign it is RSign's learned threshold
    (sign(x + b) = sign(x - alpha) with alpha = -b); around a PReLU it forms RPReLU.
    Liu et al., "ReActNet", ECCV 2020.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1)


def blur_kernel(channels: int, size: int = 3) -> torch.Tensor:
    """The binomial low-pass filter of anti-aliased pooling, one per channel: (channels, 1, size, size).

    k = outer(b, b) / sum, b = (1, 2, 1) for size 3 (Zhang, "Making Convolutional
    Networks Shift-Invariant Again", ICML 2019).
    """
    rows = {2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}
    if size not in rows:
        raise ValueError(f"blur kernel size must be 2, 3 or 5, got {size!r}")
    b = torch.tensor(rows[size])
    k = torch.outer(b, b)
    return (k / k.sum()).expand(channels, 1, size, size).clone()


def stem_kind(stem: str, model: str) -> str:
    """``stem`` if it is one of :data:`ZOO_STEMS` ("imagenet" or "small"), else an error naming ``model``."""
    if stem not in ZOO_STEMS:
        raise UnknownNameError(unknown_name_message(f"{model} stem", stem, ZOO_STEMS))
    return stem


def zoo_options(model: str, stem: str, *quantizers: QuantizerSpec) -> str:
    """Validate a zoo entry's ``stem`` and quantizer specs before anything is built; returns ``stem``."""
    for spec in quantizers:
        make_quantizer(spec)
    return stem_kind(stem, model)


def width_options(model: str, stem: str, width: int, *quantizers: QuantizerSpec) -> int:
    """A width-scaled entry's options, validated before anything is built (``width`` >= 1, then the
    quantizer specs and ``stem``): ``width``."""
    width = check_width(width)
    zoo_options(model, stem, *quantizers)
    return width


def fixed_size_options(
    model: str, stem: str, input_size: int, width_mult: float, channels: Tuple[int, ...], *quantizers: QuantizerSpec
) -> Tuple[int, Tuple[int, ...]]:
    """An AlexNet-style entry's options, validated before anything is built (the quantizer specs, ``stem``,
    then ``input_size`` >= 1 and ``width_mult`` > 0): ``input_size`` and the ``channels`` scaled by ``width_mult``."""
    zoo_options(model, stem, *quantizers)
    size = check_positive_int("input_size", input_size)
    m = check_width_mult(width_mult)
    return size, tuple(scaled(c, m) for c in channels)


def declare_input(
    module: nn.Module, in_channels: int, stem: str, imagenet_min: int = 32, small_min: int = 8
) -> None:
    """Set what :func:`lowbit.models.check_model_fits` reads: ``input_shape`` (224 or 32 pixels per
    side), ``min_input_size`` (the total downsampling with that stem), ``stem_name``, ``small_stem``."""
    size = 224 if stem == "imagenet" else 32
    module.input_shape = (in_channels, size, size)
    module.min_input_size = imagenet_min if stem == "imagenet" else small_min
    module.stem_name, module.small_stem = stem, "small"


def declare_fixed_input(module: nn.Module, model: str, in_channels: int, stem: str, size: int, side: int) -> None:
    """For a model whose classifier is sized for ``size`` (its features end ``side`` pixels wide):
    reject a size that leaves no pixel, and set ``input_shape``, ``fixed_input_size``, the stem names."""
    if side < 1:
        raise image_size_error(
            model, stem, size, "its stride-2 poolings leave no pixel",
            "use a larger input_size or the small stem (model.stem: small)",
        )
    module.input_shape = (in_channels, size, size)
    module.fixed_input_size = True
    module.stem_name, module.small_stem = stem, "small"


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, ceil: bool = False) -> int:
    """Output side of a conv or pool: floor((size + 2 padding - kernel) / stride) + 1 (ceil with ``ceil``)."""
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    return (-(-span // stride) if ceil else span // stride) + 1


def image_size_error(model: str, stem: str, size: int, needed: str, fix: str) -> ValueError:
    return ValueError(f"model {model!r} with stem {stem!r} does not fit {size}x{size} images: {needed}; {fix}")


__all__ = [
    "KERAS_BN_EPSILON",
    "ZOO_STEMS",
    "BinaryConvResidual",
    "CenteredBatchNorm1d",
    "CenteredBatchNorm2d",
    "LearnableBias",
    "OnePaddedBinaryConv2d",
    "batch_norm",
    "bireal_channels",
    "blur_kernel",
    "check_positive_int",
    "check_width_mult",
    "conv_out",
    "declare_fixed_input",
    "declare_input",
    "downsample_shortcut",
    "fixed_size_options",
    "image_size_error",
    "resnet_stem",
    "scaled",
    "stem_kind",
    "width_options",
    "zoo_options",
]
