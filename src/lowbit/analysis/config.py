"""The analyses' recipes: one dataclass per ``lowbit analyze`` subcommand.

Every default is the quick CPU recipe on scikit-learn's digits (8x8 images
resized to 32x32); each field's comment gives its unit and why it has its
value. ``__post_init__`` rejects impossible values with the value quoted and
all problems of one block together; ``lowbit.config.load_config`` adds
unknown keys (with the nearest valid one) and wrong types before any work
starts. The resolved config is saved as ``config.yaml`` in every run directory.

- :class:`BNSmoothnessConfig`  ``lowbit analyze bn-smoothness``  (Santurkar et al. 2018)
- :class:`LandscapeConfig`     ``lowbit analyze landscape``      (Li et al. 2018; Goodfellow et al. 2015)
- :class:`AttributionConfig`   ``lowbit analyze attribution``    (captum)
- :class:`WeightsConfig`       ``lowbit analyze weights``        (weight pictures)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from lowbit.devices import check_device_name

__all__ = [
    "AttributionConfig",
    "BNModelSpec",
    "BNSmoothnessConfig",
    "DataSpec",
    "DirectionSpec",
    "EvalSpec",
    "GridSpec",
    "InterpolationSpec",
    "LandscapeConfig",
    "LrBandSpec",
    "ProbeSpec",
    "SourceSpec",
    "SmoothnessTrainSpec",
    "WeightsConfig",
    "ATTRIBUTION_METHODS",
    "QUICK_LENET",
]

ATTRIBUTION_METHODS = ("saliency", "integrated_gradients", "guided_backprop")

# `lowbit train` overrides for a model trained on the spot: LeNet-5 on digits at 32x32 (its
# layer names conv1..conv3, fc1, fc2 are the notes'), 8 epochs of SGD; ~97% test accuracy in
# about a minute on 2 CPU cores. Pinned here so a change of TrainConfig()'s defaults does not
# change what the analyses study.
QUICK_LENET = [
    "model.name=lenet5",
    "model.width_mult=null",
    "data.image_size=32",
    "augment.crop_padding=2",
    "loss.label_smoothing=0.0",
    "optim.name=sgd",
    "optim.lr=0.05",
    "run.epochs=8",
    "run.tensorboard=false",
]


def _device_errors(device: str) -> List[str]:
    try:
        check_device_name(device)
    except ValueError as error:
        return [str(error)]
    return []


def _raise(errors: List[str]) -> None:
    if errors:
        raise ValueError("; ".join(errors))


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# --------------------------------------------------------------------------- bn-smoothness


@dataclass
class DataSpec:
    dataset: str = "digits"  # cifar10 | cifar100 | mnist | digits; digits ships with scikit-learn
    data_dir: Optional[str] = None  # folder with the archives; None: --data-dir, $LOWBIT_DATA, else ./data
    image_size: Optional[int] = 32  # pixels; VGG-A needs 32x32 (five 2x2 pools), digits are 8x8 natively
    train_subset: Optional[int] = None  # images; the first N training images only; None: all
    batch_size: int = 64  # images per step (the probes reuse the step's batch); 64 ~ 22 steps/epoch on digits

    def __post_init__(self) -> None:
        errors = []
        if self.batch_size < 2:  # BatchNorm in train mode needs more than one value per channel
            errors.append(f"data.batch_size must be >= 2, got {self.batch_size}")
        for name in ("image_size", "train_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                errors.append(f"data.{name} must be >= 1 or null, got {value}")
        _raise(errors)


@dataclass
class BNModelSpec:
    name: str = "vgg_a"  # a zoo model that takes bn=True/False; vgg_a is the paper's VGG
    # Channel multiplier of VGG-A's convolutions (the 512-wide classifier is kept). 1.0 is the
    # paper's network exactly (create_model("vgg_a")); 0.25 (channels 16..128) makes a step ~10x
    # cheaper, the quick CPU recipe.
    width_mult: float = 0.25
    # Weight init of both models. default: PyTorch's layer defaults (the zoo's VGG-A as is).
    # kaiming: torchvision's VGG init (conv Kaiming-normal fan_out/ReLU, linear N(0, 0.01^2), bias 0).
    # With SGD (lr 0.01-0.05) VGG without BN stays at loss ln(10) for 150+ steps on digits with
    # either init; with Adam it trains (docs/analysis.md).
    init: Literal["default", "kaiming"] = "default"
    kwargs: Dict[str, object] = field(default_factory=dict)  # other create_model keywords

    def __post_init__(self) -> None:
        errors = []
        if not _positive(self.width_mult):
            errors.append(f"model.width_mult must be > 0, got {self.width_mult}")
        if self.width_mult != 1.0 and self.name != "vgg_a":
            errors.append(f"model.width_mult applies to vgg_a only, got name {self.name!r} with width_mult {self.width_mult}")
        if self.width_mult != 1.0 and self.kwargs:
            errors.append(
                f"model.kwargs {sorted(self.kwargs)} cannot be applied with model.width_mult {self.width_mult}: the "
                "width-scaled VGG-A takes no other options; remove model.kwargs or set model.width_mult: 1"
            )
        if "bn" in self.kwargs:
            errors.append("model.kwargs must not set 'bn': the analysis trains both bn=False and bn=True")
        _raise(errors)


@dataclass
class SmoothnessTrainSpec:
    # Adam, as the notes (section 2): with SGD the VGG without BN does not leave the ln(10) plateau
    # within a CPU-sized run, with Adam it trains, more slowly than with BN.
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3  # constant learning rate (the notes' middle value); the probe's step sizes are multiples of it
    momentum: float = 0.9  # SGD momentum (unused by Adam)
    weight_decay: float = 0.0  # L2 coefficient; 0 keeps the probed loss the plain cross-entropy
    steps: int = 200  # optimizer steps per model (~9 epochs of digits at batch 64)

    def __post_init__(self) -> None:
        errors = []
        if not _positive(self.lr):
            errors.append(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            errors.append(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            errors.append(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.steps < 1:
            errors.append(f"train.steps must be >= 1, got {self.steps}")
        _raise(errors)


@dataclass
class ProbeSpec:
    every: int = 10  # probe every k-th step (each probe costs 1 + num_steps forward/backward passes)
    # Step sizes eta along -g as multiples of train.lr: the paper's [1/2, 4] x lr.
    eta_range: List[float] = field(default_factory=lambda: [0.5, 4.0])
    num_steps: int = 4  # probes per step: 0.5, 1, 2, 4 x lr with geometric spacing
    spacing: Literal["geometric", "linear"] = "geometric"

    def __post_init__(self) -> None:
        errors = []
        if self.every < 1:
            errors.append(f"probe.every must be >= 1, got {self.every}")
        if len(self.eta_range) != 2 or not all(_positive(v) for v in self.eta_range) or self.eta_range[0] > self.eta_range[1]:
            errors.append(f"probe.eta_range must be [low, high] with 0 < low <= high, got {self.eta_range}")
        if self.num_steps < 1:
            errors.append(f"probe.num_steps must be >= 1, got {self.num_steps}")
        _raise(errors)


@dataclass
class LrBandSpec:
    # The notes' simpler variant (section 2.2): per-step training loss band across separately
    # trained learning rates. An empty list turns it off.
    lrs: List[float] = field(default_factory=lambda: [2e-3, 1e-3, 5e-4, 1e-4])
    optimizer: Literal["sgd", "adam"] = "adam"  # the notes' recipe: Adam
    momentum: float = 0.9  # SGD momentum (unused by Adam)
    steps: int = 100  # steps per (lr, model) run; 2 x len(lrs) runs in all

    def __post_init__(self) -> None:
        errors = []
        if not all(_positive(v) for v in self.lrs):
            errors.append(f"lr_band.lrs must all be > 0, got {self.lrs}")
        if self.steps < 1:
            errors.append(f"lr_band.steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.momentum < 1.0:
            errors.append(f"lr_band.momentum must be in [0, 1), got {self.momentum}")
        _raise(errors)


@dataclass
class BNSmoothnessConfig:
    name: str = "bn-smoothness"  # run folder prefix
    seed: int = 0  # model init (both models get the same conv/linear weights) and batch order
    data: DataSpec = field(default_factory=DataSpec)
    model: BNModelSpec = field(default_factory=BNModelSpec)
    train: SmoothnessTrainSpec = field(default_factory=SmoothnessTrainSpec)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    lr_band: LrBandSpec = field(default_factory=LrBandSpec)
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N: where both models train and are probed
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_device_name(self.device)


# --------------------------------------------------------------------------- shared by landscape / attribution / weights


@dataclass
class SourceSpec:
    """Where the trained model comes from.

    ``checkpoint``: a ``lowbit train`` run directory or its ``checkpoints/last.pt``;
    the model, data set and seed are rebuilt from the config stored in it.
    ``None``: train one first with ``lowbit.train.train`` on ``train_config``
    (default ``TrainConfig()``) plus ``train_overrides`` (default
    :data:`QUICK_LENET`: LeNet-5 on digits), inside this run's folder.
    """

    checkpoint: Optional[str] = None
    train_config: Optional[str] = None  # a `lowbit train` YAML for the on-the-spot model; None: TrainConfig()
    train_overrides: List[str] = field(default_factory=lambda: list(QUICK_LENET))  # on top of train_config
    data_dir: Optional[str] = None  # overrides the checkpoint's data.data_dir (as --data-dir does)

    def __post_init__(self) -> None:
        bad = [o for o in self.train_overrides if "=" not in o]
        if bad:
            raise ValueError(f"source.train_overrides must be key=value strings (e.g. run.epochs=5), got {bad}")


# --------------------------------------------------------------------------- landscape


@dataclass
class GridSpec:
    x_range: List[float] = field(default_factory=lambda: [-1.0, 1.0])  # alpha range along direction 1 (Li et al.: [-1, 1])
    y_range: List[float] = field(default_factory=lambda: [-1.0, 1.0])  # beta range along direction 2
    resolution: int = 21  # points per axis (odd: the trained weights are a grid point); 21x21 = 441 points

    def __post_init__(self) -> None:
        errors = []
        for name in ("x_range", "y_range"):
            r = getattr(self, name)
            if len(r) != 2 or not all(math.isfinite(v) for v in r) or r[0] >= r[1]:
                errors.append(f"grid.{name} must be [low, high] with low < high, got {r}")
        if self.resolution < 2:
            errors.append(f"grid.resolution must be >= 2, got {self.resolution}")
        _raise(errors)


@dataclass
class DirectionSpec:
    seed: int = 0  # the two Gaussian directions are drawn from a torch.Generator with this seed
    norm: Literal["filter", "layer", "none"] = "filter"  # filter: Li et al.'s filter normalisation
    # 1-D parameters (biases, BatchNorm weight/bias): zero (Li et al.'s default ignore='biasbn'),
    # copy (direction = the weights, their code's other branch) or normalize (one filter per tensor).
    one_d: Literal["zero", "copy", "normalize"] = "zero"


@dataclass
class EvalSpec:
    split: Literal["train", "test"] = "train"  # Li et al. plot the training loss
    num_images: Optional[int] = 512  # the first N images of the split; None: all (441 points x 512 images)
    batch_size: int = 512  # images per forward pass (memory only)
    points_per_batch: int = 16  # grid points built (and with vmap run) together; memory only
    # torch.func.vmap over a chunk's points (one call) instead of a loop over them: same numbers;
    # on the CPU vmap makes every conv a grouped conv, measured 2-3x slower for LeNet-5, so off.
    vmap: bool = False
    # BatchNorm running statistics at a perturbed point:
    #   eval: the checkpoint's running stats, model in eval mode (Li et al.'s code);
    #   recompute: re-estimated at every point from bn_batches training batches (slower, point by point);
    #   batch: train-mode BN with the statistics of each evaluation batch (no running stats).
    bn: Literal["eval", "recompute", "batch"] = "eval"
    bn_batches: int = 4  # training batches of batch_size images per recompute

    def __post_init__(self) -> None:
        errors = []
        if self.num_images is not None and self.num_images < 1:
            errors.append(f"eval.num_images must be >= 1 or null, got {self.num_images}")
        for name in ("batch_size", "points_per_batch", "bn_batches"):
            if getattr(self, name) < 1:
                errors.append(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        _raise(errors)


@dataclass
class InterpolationSpec:
    enabled: bool = True
    start: str = "init"  # "init" (the run's initial weights, rebuilt from its seed) or a checkpoint path
    end: str = "final"  # "final" (source.checkpoint) or a checkpoint path
    t_range: List[float] = field(default_factory=lambda: [-0.5, 1.5])  # theta(t) = (1-t) start + t end
    points: int = 41

    def __post_init__(self) -> None:
        errors = []
        r = self.t_range
        if len(r) != 2 or not all(math.isfinite(v) for v in r) or r[0] >= r[1]:
            errors.append(f"interpolation.t_range must be [low, high] with low < high, got {r}")
        if self.points < 2:
            errors.append(f"interpolation.points must be >= 2, got {self.points}")
        _raise(errors)


@dataclass
class LandscapeConfig:
    name: str = "landscape"
    source: SourceSpec = field(default_factory=SourceSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    directions: DirectionSpec = field(default_factory=DirectionSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    interpolation: InterpolationSpec = field(default_factory=InterpolationSpec)
    log_scale: bool = True  # contour levels and surface height on a log scale (losses span decades)
    max_loss: Optional[float] = None  # clip the plotted loss at this value (diverged edges); None: no clipping
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N: where the grid is evaluated (and a source model trained)
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_device_name(self.device)


# --------------------------------------------------------------------------- attribution


@dataclass
class AttributionConfig:
    name: str = "attribution"
    source: SourceSpec = field(default_factory=SourceSpec)
    split: Literal["train", "test"] = "test"
    indices: List[int] = field(default_factory=lambda: [0, 1, 2, 3])  # images of the split to explain
    methods: List[str] = field(default_factory=lambda: list(ATTRIBUTION_METHODS))
    target: Literal["predicted", "label"] = "predicted"  # the class whose logit is explained
    ig_steps: int = 50  # integrated gradients: quadrature points (captum's default, Gauss-Legendre)
    # integrated gradients baseline: "black" (raw pixel 0, normalised) or "mean" (0 after normalisation)
    ig_baseline: Literal["black", "mean"] = "black"
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N: where the attributions are computed (and a source model trained)
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from lowbit.registry import nearest

        errors = _device_errors(self.device)
        unknown = [m for m in self.methods if m not in ATTRIBUTION_METHODS]
        for m in unknown:
            hint = nearest(m, ATTRIBUTION_METHODS)
            errors.append(
                f"unknown attribution method {m!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                f"valid: {', '.join(ATTRIBUTION_METHODS)}"
            )
        if not self.methods:
            errors.append("methods must name at least one of " + ", ".join(ATTRIBUTION_METHODS))
        if not self.indices or any(i < 0 for i in self.indices):
            errors.append(f"indices must be a non-empty list of image indices >= 0, got {self.indices}")
        if self.ig_steps < 1:
            errors.append(f"ig_steps must be >= 1, got {self.ig_steps}")
        _raise(errors)


# --------------------------------------------------------------------------- weights


@dataclass
class WeightsConfig:
    name: str = "weights"
    # {label: checkpoint (run dir or .pt)}. Empty: train one model per entry of `train` below.
    checkpoints: Dict[str, str] = field(default_factory=dict)
    # {label: lowbit train overrides}, used when `checkpoints` is empty: the same recipe with
    # different optimizers, the comparison of the notes' section 3.1 (DessiLBI: add an entry with
    # optim.name=dessilbi and its optim.extra keys).
    train: Dict[str, List[str]] = field(
        default_factory=lambda: {
            "sgd": QUICK_LENET + ["optim.name=sgd", "optim.lr=0.05"],
            "adam": QUICK_LENET + ["optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0"],
        }
    )
    train_config: Optional[str] = None  # the `lowbit train` YAML the `train` overrides apply to; None: TrainConfig()
    layers: List[str] = field(default_factory=lambda: ["conv3", "fc1"])  # module or parameter names, e.g. conv3 or fc1.weight
    absolute: bool = True  # |W| in grey, black = 0 (the notes' pictures); false: diverging map
    shared_scale: bool = True  # one colour scale across the compared models
    pad: int = 0  # NaN rows/columns between conv tiles
    data_dir: Optional[str] = None
    threads: Optional[int] = None  # torch CPU threads; None: torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N: where the compared models train (the pictures are drawn on the CPU)
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        errors = _device_errors(self.device)
        if not self.checkpoints and not self.train:
            errors.append("give checkpoints {label: run dir} or train {label: [overrides]}, got neither")
        if not self.layers:
            errors.append("layers must name at least one layer, e.g. [conv3]")
        if self.pad < 0:
            errors.append(f"pad must be >= 0, got {self.pad}")
        _raise(errors)
