"""The training recipe: one hyper-parameter table, every default in one place.

``TrainConfig()`` *is* the quick CPU recipe (a float LeNet-5 on the
scikit-learn digits resized to 32x32, ``configs/train-digits.yaml``; its
measured accuracy and time are in docs/training.md); every other
recipe in ``configs/train-*.yaml`` only states what differs from it. Each
field says its unit and why it has its default. ``__post_init__`` checks reject
impossible values with the value quoted; ``lowbit.config.load_config`` collects
them together with unknown keys and wrong types before any work starts.

Names (model, dataset, optimizer, schedule, loss) are plain strings checked
against their registries when the run is built (``lowbit.train.loop.build``),
so a newly registered optimizer or model needs no change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from lowbit.devices import check_device_name
from lowbit.registry import nearest
from lowbit.tracking.base import MLflowConfig
from lowbit.train.distill import DistillConfig
from lowbit.train.grad_probe import GradProbeConfig
from lowbit.train.surrogate_schedule import SurrogateScheduleConfig


# run.grad_stats_every when unset in a run with quant: (see RunConfig)
DEFAULT_GRAD_STATS_EVERY = 50

# run.compile: torch.compile's modes (torch._inductor.list_mode_options(); true means "default")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class DataConfig:
    dataset: str = "digits"  # cifar10 | cifar100 | mnist | fashion_mnist | mnist5k | digits (scikit-learn, ships with it)
    data_dir: Optional[str] = None  # folder with the archives; None: $LOWBIT_DATA, else ./data
    image_size: Optional[int] = 32  # pixels; None: native. Digits are 8x8; LeNet-5 needs >= 28
    train_subset: Optional[int] = None  # images; the first N training images only (quick tests); None: all
    test_subset: Optional[int] = None  # images; the first N test images only; None: all
    batch_size: int = 64  # images per step; 64 gives 22 steps per epoch on the 1437 digits images
    eval_batch_size: int = 512  # images per forward pass at evaluation; memory only, does not change results

    def __post_init__(self) -> None:
        errors = []
        if self.batch_size < 1:
            errors.append(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            errors.append(f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        for name in ("train_subset", "test_subset", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                errors.append(f"data.{name} must be >= 1 or null, got {value}")
        _check(not errors, "; ".join(errors))


@dataclass
class ModelConfig:
    name: str = "lenet5"  # any name from lowbit.models.list_models(); LeNet-5: 62k parameters, ~12 CPU-s for 20 digits epochs
    # The keys below are passed to create_model only when set (None = the model's own default),
    # so a model that does not take one is never handed it by accident.
    width: Optional[int] = None  # channels of the first stage (resnet18: 64, xnor_resnet18: 64)
    width_mult: Optional[float] = None  # channel multiplier (resnet9, simp_resnet9: 1.0)
    act: Optional[str] = None  # float models: relu | gelu | mish | elu | rrelu; xnor_resnet18: the sign quantizer
    stem: Optional[str] = None  # first conv block: 3x3 | 3x3,3x3 | 3x3,3x3,3x3 | 3x3,5x5 | 7x7 (resnet18/9)
    max_dropout: Optional[float] = None  # MaxDropout threshold p in [0, 1) (resnet18, resnet9); None: off
    input_size: Optional[int] = None  # image side the model is built for (lenet5: 28 | 32, default 32)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # any other create_model keyword
    channels_last: bool = False  # NHWC memory layout; faster convolutions on recent GPUs
    # under torchrun: BatchNorm statistics over the global batch (every rank's part), as one process computes
    # them (lowbit.train.sync_batchnorm; torch's SyncBatchNorm on CUDA); false: per rank. No effect in one process
    sync_bn: bool = False
    # Larq's weight_clip: after every optimizer step each binary layer's latent weights are clamped to
    # [-c, c] (lowbit.nn.latent); 1.0 matches ste_sign's gradient window |w| <= 1. None: no clipping
    weight_clip: Optional[float] = None

    def __post_init__(self) -> None:
        errors = []
        if self.width is not None and self.width < 1:
            errors.append(f"model.width must be >= 1, got {self.width}")
        if self.width_mult is not None and self.width_mult <= 0:
            errors.append(f"model.width_mult must be > 0, got {self.width_mult}")
        if self.max_dropout is not None and not 0.0 <= self.max_dropout < 1.0:
            errors.append(f"model.max_dropout must be in [0, 1), got {self.max_dropout}")
        if self.weight_clip is not None and not (self.weight_clip > 0 and math.isfinite(self.weight_clip)):
            errors.append(f"model.weight_clip must be > 0 (latent weights clamped to [-clip, clip]) or null, got {self.weight_clip}")
        _check(not errors, "; ".join(errors))

    def create_kwargs(self) -> Dict[str, Any]:
        """The keywords for ``create_model`` (the fields that are set, then ``kwargs``)."""
        named = {k: getattr(self, k) for k in ("width", "width_mult", "act", "stem", "max_dropout", "input_size")}
        return {**{k: v for k, v in named.items() if v is not None}, **self.kwargs}


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | any name added with register_optimizer
    lr: float = 0.05  # peak learning rate (after warm-up); LeNet-5 (no BatchNorm) on digits: 0.1 is less stable
    momentum: float = 0.9  # SGD momentum; 0.9 as in the notes' CIFAR-10 recipes
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # L2 coefficient on every parameter (PyTorch convention; decoupled for adamw)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW moment decays
    eps: float = 1e-8  # Adam/AdamW denominator floor
    grad_clip: Optional[float] = None  # max global gradient L2 norm; None: no clipping
    extra: Dict[str, Any] = field(default_factory=dict)  # keywords for other registered optimizers (e.g. kappa, mu)
    # Per-group optimizers (Larq's CaseOptimizer): each group names its parameters and its optimizer, e.g.
    # [{params: [binary], name: bop}]; what no group takes goes to the optimizer above. [] : one optimizer
    groups: List["OptimGroupConfig"] = field(default_factory=list)
    bop: "BopConfig" = field(default_factory=lambda: BopConfig())  # Bop's hyper-parameters (any optimizer named bop)

    def __post_init__(self) -> None:
        errors = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"optim.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            errors.append(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            errors.append(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            errors.append(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            errors.append(f"optim.eps must be > 0, got {self.eps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            errors.append(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.nesterov and self.momentum == 0:
            errors.append("optim.nesterov=true needs optim.momentum > 0, got 0")
        _check(not errors, "; ".join(errors))


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | cyclic | onecycle | step | constant (learning rate per step)
    warmup_epochs: float = 1.0  # epochs of linear warm-up from lr/W to lr (all schedules); 1: no early loss spike
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of optim.lr; cyclic: the cycle's lower lr
    cycles: int = 1  # cyclic: number of triangles (up then down) over the run after warm-up
    pct_start: float = 0.3  # onecycle: fraction of the steps spent rising (torch OneCycleLR default)
    div_factor: float = 25.0  # onecycle: initial lr = lr / div_factor (torch default)
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor (torch default)
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # step: when to decay, as fractions of the epochs
    gamma: float = 0.1  # step: lr factor at each milestone

    def __post_init__(self) -> None:
        errors = []
        if self.warmup_epochs < 0:
            errors.append(f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.cycles < 1:
            errors.append(f"schedule.cycles must be >= 1, got {self.cycles}")
        if not 0.0 < self.pct_start < 1.0:
            errors.append(f"schedule.pct_start must be in (0, 1), got {self.pct_start}")
        if self.div_factor <= 0 or self.final_div_factor <= 0:
            errors.append(
                f"schedule.div_factor and final_div_factor must be > 0, got {self.div_factor}, {self.final_div_factor}"
            )
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            errors.append(f"schedule.milestones must be increasing fractions in (0, 1), got {self.milestones}")
        if self.gamma <= 0:
            errors.append(f"schedule.gamma must be > 0, got {self.gamma}")
        _check(not errors, "; ".join(errors))


@dataclass
class BopConfig:
    """Bop (Helwegen et al. 2019; lowbit.optim.Bop): m <- (1 - gamma) m + gamma g; flip where sign(w) m > threshold."""

    gamma: float = 1e-4  # adaptivity rate in (0, 1]: the gradient average remembers ~1/gamma steps; paper and Larq: 1e-4
    threshold: float = 1e-8  # tau >= 0: how strong the average must be to flip a weight; paper and Larq: 1e-8
    # gamma_t = gamma * s(t), tau_t = tau * s(t): a learning-rate schedule with peak 1 (the paper decays gamma
    # 10x every 100 epochs: {name: step, milestones: [...], gamma: 0.1, warmup_epochs: 0}). Constant by default
    gamma_schedule: "ScheduleConfig" = field(default_factory=lambda: ScheduleConfig(name="constant", warmup_epochs=0.0))
    threshold_schedule: "ScheduleConfig" = field(default_factory=lambda: ScheduleConfig(name="constant", warmup_epochs=0.0))

    def __post_init__(self) -> None:
        errors = []
        if not 0.0 < self.gamma <= 1.0:
            errors.append(f"optim.bop.gamma must be in (0, 1], got {self.gamma}")
        if not (0.0 <= self.threshold and math.isfinite(self.threshold)):
            errors.append(f"optim.bop.threshold must be a finite number >= 0, got {self.threshold}")
        _check(not errors, "; ".join(errors))


@dataclass
class OptimGroupConfig:
    """One group of a per-group optimizer: which parameters, which optimizer, what differs from ``optim``."""

    # which parameters (lowbit.nn.select_parameters): "binary" (the binary layers' latent weights), name globs
    # ("*.bias", "layer4.*"), "type:BatchNorm2d". Groups must not overlap
    params: List[str]
    name: str = "bop"  # the group's optimizer: bop | sgd | adam | adamw | any registered name
    lr: Optional[float] = None  # peak learning rate of this group (the schedule scales it as optim.lr); None: optim.lr
    momentum: Optional[float] = None  # None: optim.momentum
    weight_decay: Optional[float] = None  # None: optim.weight_decay
    extra: Dict[str, Any] = field(default_factory=dict)  # the group's optimizer keywords (as optim.extra)

    def __post_init__(self) -> None:
        errors = []
        if not self.params:
            errors.append("an optim.groups entry needs params, e.g. params: [binary]")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"optim.groups lr must be > 0 or null, got {self.lr}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            errors.append(f"optim.groups momentum must be in [0, 1) or null, got {self.momentum}")
        if self.weight_decay is not None and self.weight_decay < 0:
            errors.append(f"optim.groups weight_decay must be >= 0 or null, got {self.weight_decay}")
        _check(not errors, "; ".join(errors))


@dataclass
class BinarizeConfig:
    """``lowbit.nn.binarize`` applied to the zoo model before the optimizer is built (docs/training.md)."""

    input_quantizer: Any = "ste_clipped"  # activation quantizer spec: a name ("ste_sign", Larq names work), {name, ...}, null
    weight_quantizer: Any = "xnor_weight"  # weight quantizer spec; Bop recipes use ste_sign (|w| = 1 after Bop's first step)
    keep_first_last: bool = True  # the first and last weight layers stay float (XNOR-Net, Bi-Real Net)
    include: Optional[List[str]] = None  # patterns of layers to convert (name globs, "type:Conv2d"); null: all
    exclude: List[str] = field(default_factory=list)  # patterns of layers to leave float
    subclasses: Literal["error", "convert"] = "error"  # Conv2d/Linear subclasses with their own forward: refuse or replace


@dataclass
class LossConfig:
    name: str = "cross_entropy"  # cross_entropy | smooth_l1 | bce (the last two on one-hot targets)
    label_smoothing: float = 0.1  # epsilon: targets (1 - eps) onehot + eps / K; 0.1 gave LeNet-5 +1.5% on digits
    smooth_l1_beta: float = 1.0  # smooth_l1: the |x| below which the loss is quadratic (torch default)

    def __post_init__(self) -> None:
        errors = []
        if not 0.0 <= self.label_smoothing < 1.0:
            errors.append(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.smooth_l1_beta < 0:
            errors.append(f"loss.smooth_l1_beta must be >= 0, got {self.smooth_l1_beta}")
        _check(not errors, "; ".join(errors))


@dataclass
class AugmentConfig:
    crop_padding: int = 2  # pixels; random-crop padding (4 is the CIFAR standard; 2 on digits at 32x32 = 1/2 original pixel)
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # how the crop padding is filled
    flip: bool = False  # random horizontal flip; off for digits (a mirrored 2 is not a 2), on for CIFAR
    erasing: Optional[Dict[str, Any]] = None  # random erasing {p, scale, ratio, value}; None: off
    cutout: Optional[int] = None  # pixels; side of a cutout square; None: off
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing; 0: off (alpha = 0.2..1 is usual)

    def __post_init__(self) -> None:
        errors = []
        if self.crop_padding < 0:
            errors.append(f"augment.crop_padding must be >= 0, got {self.crop_padding}")
        if self.cutout is not None and self.cutout < 1:
            errors.append(f"augment.cutout must be >= 1 or null, got {self.cutout}")
        if self.mixup_alpha < 0:
            errors.append(f"augment.mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if self.erasing is not None:
            unknown = sorted(set(self.erasing) - {"p", "scale", "ratio", "value"})
            if unknown:
                errors.append(f"augment.erasing has unknown keys {unknown}; valid: p, scale, ratio, value")
        _check(not errors, "; ".join(errors))


@dataclass
class RunConfig:
    name: Optional[str] = None  # run folder prefix; None: "<model>-<dataset>"
    epochs: int = 20  # passes over the training set; LeNet-5 on digits plateaus at ~99% by epoch 16-20
    seed: int = 0  # seeds model init, data order and augmentation; same seed -> same numbers
    device: str = "cpu"  # cpu | cuda | cuda:N (under torchrun: cuda means each rank's cuda:LOCAL_RANK)
    # bf16: autocast on CUDA or CPU (weights and optimizer stay fp32); fp16: autocast with dynamic loss scaling
    # (lowbit.train.precision), for GPUs without bf16 (V100, T4)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    allow_tf32: bool = False  # CUDA matmuls/convs in TensorFloat-32 (faster, ~3 decimal digits); off: exact fp32
    deterministic: bool = True  # torch.use_deterministic_algorithms; exact resume and repeatable runs
    # torch.compile of the module the training step calls (lowbit.train.compiler, docs/training.md): false = eager;
    # true = "default"; default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs. The
    # numbers are eager's up to float rounding; the first step compiles (seconds on a CPU, minutes for max-autotune)
    compile: Union[bool, str] = False
    # the torch._dynamo backend run.compile uses: inductor (generated kernels) | aot_eager | eager (no code
    # generation: quick checks that a model traces) | any name in torch._dynamo.list_backends(). Modes other than
    # default need inductor
    compile_backend: str = "inductor"
    threads: Optional[int] = None  # CPU threads for torch ops; None: torch's default (all cores). 1 is far
    # faster for small models on a CPU shared with other jobs (idle threads spin-wait for busy ones)
    init_from: Optional[str] = None  # checkpoint (e.g. RUN_DIR/checkpoints/last.pt) whose matching weights start the model
    summary_last_n: int = 10  # epochs averaged in the summary table ("mean of the last 10 epochs", notes 2021-04-30)
    tensorboard: bool = True  # TensorBoard events in RUN_DIR/tensorboard/ when torch.utils.tensorboard imports
    # (else skipped with a note); ignored when run.trackers is set (the list says everything)
    # experiment trackers (lowbit.tracking): tensorboard | mlflow (the lowbit[mlflow] extra) | any registered name.
    # None: [tensorboard] if run.tensorboard, else none. A tracker named here whose package is missing is an error
    # before the run starts. Only rank 0 of a torchrun job logs
    trackers: Optional[List[str]] = None
    log_every: int = 10  # optimizer steps between the trackers' per-step points (step/train_loss, step/lr); 0: off
    # (digits at batch 64: 22 steps per epoch, so ~2 points per epoch; CIFAR-10 at 128: 39 per epoch)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)  # {tracking_uri, experiment} of the mlflow tracker
    grad_stats_every: Optional[int] = None  # optimizer steps between samples of every Conv2d/Linear's G and E
    # (lowbit.nn.GradientStats -> grad_stats.csv, grad_hist.csv, the report's gradient sections). None: 50 when
    # quant: is set, off for a float run; 0: off; N >= 1: every N-th step, float runs too. A sample costs ~2
    # steps of LeNet-5 on digits (float64 passes over every G and E): 50 is lost in the timing noise there
    # (9 samples in 20 epochs), 25 costs ~10%
    flip_ratio: Optional[bool] = None  # per binary layer per epoch, the mean share of latent weights whose sign
    # changed at an optimizer step (Larq's FlipRatio): metrics.csv flip_ratio/<layer>, TensorBoard, a report plot.
    # None: on when the model has binary layers
    baseline: Optional[str] = None  # a training run directory (e.g. the float run of the same recipe) whose
    # test accuracy the report shows next to this run's; checked when the run starts. Relative: to the working dir

    def __post_init__(self) -> None:
        errors = []
        try:
            check_device_name(self.device, "run.device")
        except ValueError as error:
            errors.append(str(error))
        if self.epochs < 1:
            errors.append(f"run.epochs must be >= 1, got {self.epochs}")
        if self.threads is not None and self.threads < 1:
            errors.append(f"run.threads must be >= 1 or null, got {self.threads}")
        if self.summary_last_n < 1:
            errors.append(f"run.summary_last_n must be >= 1, got {self.summary_last_n}")
        if self.log_every < 0:
            errors.append(f"run.log_every must be >= 0 (0: no per-step points), got {self.log_every}")
        if self.grad_stats_every is not None and self.grad_stats_every < 0:
            errors.append(f"run.grad_stats_every must be >= 0 (0: off) or null (auto), got {self.grad_stats_every}")
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_MODES:
            hint = nearest(str(self.compile), COMPILE_MODES)
            errors.append(
                f"run.compile must be false, true or a torch.compile mode ({', '.join(COMPILE_MODES)}), got "
                f"{self.compile!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            )
        if not (isinstance(self.compile_backend, str) and self.compile_backend):
            errors.append(f"run.compile_backend must be a torch._dynamo backend name such as inductor, got {self.compile_backend!r}")
        elif self.compile_mode not in (None, "default") and self.compile_backend != "inductor":
            errors.append(
                f"run.compile={self.compile!r} is a mode of the inductor backend; with run.compile_backend="
                f"{self.compile_backend} use run.compile=true"
            )
        _check(not errors, "; ".join(errors))

    @property
    def compile_mode(self) -> Optional[str]:
        """``run.compile`` as a torch.compile mode: None when off (eager), ``"default"`` for true."""
        if self.compile is False:
            return None
        return "default" if self.compile is True else self.compile

    def requested_trackers(self) -> Tuple[List[str], bool]:
        """``(tracker names, named explicitly)``: ``run.trackers``, else ``[tensorboard]`` per ``run.tensorboard``."""
        if self.trackers is not None:
            return list(self.trackers), True
        return (["tensorboard"] if self.tensorboard else []), False


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # low-bit training: {w_bits, a_bits, g_bits, e_bits, ...} for lowbit.nn.apply_quant_config, applied
    # to the model before the optimizer is built (docs/lowbit-training.md); None: the model as built
    quant: Optional[Dict[str, Any]] = None
    # gradient quality during training (lowbit.train.grad_probe, docs/training.md): STE-CDG cosine, STE SNR and
    # flip ratio per binary layer, at init and every probe.every epochs; None: off
    probe: Optional[GradProbeConfig] = None
    # binarize a zoo model: {input_quantizer, weight_quantizer, keep_first_last, include, exclude, subclasses}
    # for lowbit.nn.binarize, before the optimizer is built; None: the model as built
    binarize: Optional[BinarizeConfig] = None
    # scheduled surrogate gradients: quantizer parameters (window, beta, clip, slope) moved from a start to an
    # end value over training (lowbit.train.surrogate_schedule; docs/training.md); None: fixed as built
    surrogate: Optional[SurrogateScheduleConfig] = None
    # distillation from a frozen teacher: KD, ReActNet's distributional loss, attention transfer, Real-to-Binary's
    # two stages (lowbit.train.distill; docs/training.md); None: no teacher
    distill: Optional[DistillConfig] = None
    # modules imported before the rest of the config is checked: user models, quantizers, estimators (docs/api.md)
    plugins: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # options that only make sense together, reported together
        if self.binarize is not None and self.quant:
            raise ValueError("binarize: and quant: are both set; a run binarizes (1 bit) or trains k-bit layers, not both")
        quantizes_gradients = self.quant is not None and any(self.quant.get(k, 8) is not None for k in ("g_bits", "e_bits"))
        if self.run.precision == "fp16" and quantizes_gradients:
            raise ValueError(
                "run.precision=fp16 with quant: that quantizes gradients (g_bits / e_bits, 8 by default): fp16's loss "
                "scaling would put S times each gradient on their grids; use run.precision=bf16 or fp32, or set "
                "quant.g_bits and quant.e_bits to null"
            )

    @property
    def run_name(self) -> str:
        return self.run.name or f"{self.model.name}-{self.data.dataset}"

    @property
    def grad_stats_every(self) -> int:
        """``run.grad_stats_every`` resolved: steps between gradient-statistics samples, 0 = off."""
        if self.run.grad_stats_every is None:
            return DEFAULT_GRAD_STATS_EVERY if self.quant else 0
        return self.run.grad_stats_every


def load_train_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A recipe file plus ``key=value`` overrides; without a file, the overrides apply to ``TrainConfig()``.

    With a file, each section the file gives is built from the file's keys and
    the section's own defaults (so ``model: {name: resnet18}`` does not inherit
    the digits recipe's ``width_mult``).
    """
    from lowbit.config import load_config, to_dict

    return load_config(TrainConfig, path, overrides, base=None if path is not None else to_dict(TrainConfig()))
