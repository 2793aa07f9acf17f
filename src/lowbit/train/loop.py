"""The training loop: config -> data + model -> per-epoch metrics and checkpoints.

``train(config)`` reads top to bottom (nanoGPT / airbench style):

1. **build** everything from the config: data (uint8 tensors in memory), model,
   optimizer, loss, schedule. Every bad name or missing file is reported here,
   before a run directory exists or a step is taken.
2. **loop** over epochs: a permutation of the training set from a seeded
   ``torch.Generator``; per batch, ``BatchAugment`` (and mixup), forward, loss,
   backward, gradient clipping, ``lr = lr_at(step)``, optimizer step.
3. **per epoch**: evaluate on the test split, append a row to ``metrics.csv``
   (and TensorBoard when available), save ``checkpoints/last.pt`` atomically.
   Low-bit runs (``quant:``) also write ``storage.csv`` at the start and append
   the gradient statistics of every ``run.grad_stats_every``-th step
   (``lowbit.nn.GradientStats``) to ``grad_stats.csv`` / ``grad_hist.csv``
   before each checkpoint.
4. **at the end**: ``report.md`` and plots (``lowbit.train.summary``).

Exact resume. SIGINT / SIGTERM set a flag; at the next step boundary the loop
saves a mid-epoch checkpoint (weights, optimizer, step, the epoch's permutation
and position, the running sums, every RNG state) and raises
:class:`TrainingInterrupted`. ``train(resume=run_dir)`` continues from it and
ends with the same weights and metrics, bit for bit, as a run that was never
interrupted (same machine and thread count; deterministic algorithms on).
A second SIGINT stops at once, keeping the previous checkpoint. A signal the
process inherited as ignored stays ignored (a script's background job has
SIGINT ignored), as Python itself, ``lowbit probe`` and ``lowbit sweep`` do for
SIGINT.

Randomness, each from its own seeded source so resuming restores it exactly:
model init (torch global RNG seeded with ``seed``), data order (``seed``),
augmentation and mixup (``seed + 1``), layers' own noise such as RReLU
(torch global RNG).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from lowbit.config import flatten_dotted, to_dict
from lowbit.devices import set_tf32
from lowbit.files import check_writable
from lowbit.nn.latent import clip_latent_weights_
from lowbit.runs import (
    RecordWriter,
    atomic_write_text,
    create_run_dir,
    hold_run_lock,
    holds_run_locks,
    prepare_run_dir,
    rewrite_records,
    write_run_files,
)
from lowbit.train.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_matching_weights,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from lowbit.train.compiler import CompileFailed, check_compile, compile_errors, compile_module, describe_compile
from lowbit.train.config import TrainConfig
from lowbit.train.distributed import Distributed, check_divisible, from_environment
from lowbit.train.precision import Precision
from lowbit.train.flips import flip_ratio_for
from lowbit.train.distill import build_distiller, resolve_teacher
from lowbit.train.guards import KeptCheckpoint, TrainingDiverged, check_checkpointable, divergence_fix, nonfinite_tensor
from lowbit.train.resume import load_resume_state
from lowbit.train.losses import LOSSES, LossFn, build_loss
from lowbit.train.optim import OPTIMIZERS, build_optimizer, set_learning_rate
from lowbit.train.schedules import SCHEDULES, make_schedule
from lowbit.train.summary import (
    GRAD_HIST_FILE,
    GRAD_STATS_FILE,
    STOP_FILE,
    STORAGE_FILE,
    is_bookkeeping_key,
    read_stats,
    summarize,
    write_stop_record,
)
from lowbit.tracking import Trackers, TrackingContext, open_trackers, resolve_trackers
from lowbit.train.surrogate_schedule import build_surrogate_schedule

PathLike = Union[str, Path]

# Test hook: the process sends itself a real SIGINT right after this optimizer step
# (global count, from 1). Lets the tests interrupt mid-epoch at a known point.
INTERRUPT_ENV = "LOWBIT_TEST_INTERRUPT_AT_STEP"
METRICS_FILE = "metrics.csv"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM: a checkpoint was saved at a step boundary; ``train(resume=run_dir)`` continues."""

    def __init__(self, run_dir: Path, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch}, step {step}; checkpoint saved in {run_dir}")
        self.run_dir, self.epoch, self.step = run_dir, epoch, step


class StopTraining(Exception):
    """Raised by an ``on_epoch`` callback of :func:`train` to end the run after this epoch (e.g. a tuner's
    early stop); the message is recorded as the reason. ``train`` returns normally, the run resumable."""


@dataclass
class Setup:
    """Everything ``build`` makes from a config, before any training step."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    lr_at: Callable[[int], float]
    train_images: torch.Tensor  # (N, C, H, W) uint8, on device
    train_labels: torch.Tensor  # (N,) int64, on device
    test_images: torch.Tensor  # (M, C, H, W) uint8, on device
    test_labels: torch.Tensor  # (M,) int64, on device
    num_classes: int
    mean: tuple
    std: tuple
    augment: Any  # lowbit.data.BatchAugment
    steps_per_epoch: int
    total_steps: int
    num_params: int
    init_info: Optional[Dict[str, list]] = None
    surrogate: Any = None  # lowbit.train.surrogate_schedule.SurrogateSchedule, or None
    distiller: Any = None  # lowbit.train.distill.Distiller, or None


def resolve_device(name: str) -> torch.device:
    """``run.device`` as a ``torch.device``; no such device on this machine is a one-line error."""
    from lowbit.devices import resolve_device as resolve

    return resolve(name, "run.device")


def check_names(config: TrainConfig) -> None:
    """Every registry name in the config at once, so all typos are reported together."""
    from lowbit.data import list_datasets
    from lowbit.models import list_models
    from lowbit.registry import unknown_name_message
    checks = [
        ("model", config.model.name, list_models()),
        ("dataset", config.data.dataset, list_datasets()),
        ("optimizer", config.optim.name, OPTIMIZERS.names()),
        ("schedule", config.schedule.name, SCHEDULES.names()),
        ("loss", config.loss.name, LOSSES.names()),
    ]
    errors = [unknown_name_message(kind, name, valid) for kind, name, valid in checks if name not in valid]
    if errors:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errors))


def check_baseline(config: TrainConfig) -> None:
    """``run.baseline`` must name an existing training run directory (checked before training starts)."""
    if config.run.baseline is None:
        return
    path = Path(config.run.baseline)
    if not path.is_dir():
        raise FileNotFoundError(
            f"run.baseline={config.run.baseline!r}: no such directory (relative to {os.getcwd()!r}); "
            "give the run directory of the baseline run, e.g. run.baseline=runs/lenet5-digits-20260101-120000"
        )
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"run.baseline={config.run.baseline!r}: no config.yaml there; is it a `lowbit train` run directory?"
        )


def check_config(config: TrainConfig) -> None:
    """Every check that needs no data (:mod:`lowbit.train.preflight`): names, ranges, the model on ``meta``."""
    from lowbit.train.preflight import check_config as check_without_data

    check_without_data(config)


def _sparsity_columns(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """For sparsity-tracking optimizers (DessiLBI, also as a case of ``optim.groups``): the fraction of zero Γ.

    Columns ``gamma_sparsity/<layer>``, ``gamma_sparsity`` (zero Γ entries over all
    registered entries) and ``residue`` of metrics.csv: the epoch-by-epoch sparsity path.
    """
    from lowbit.optim import leaf_optimizers

    tracking = [o for o in leaf_optimizers(optimizer) if hasattr(o, "named_gammas")]  # optim.groups: its cases
    if not tracking:
        return {}
    columns: Dict[str, float] = {}
    zeros = total = 0
    residue = 0.0
    for inner in tracking:
        columns.update({f"gamma_sparsity/{name}": value for name, value in inner.sparsity(by="entry").items()})
        for _, _, gamma in inner.named_gammas():
            zeros += int((gamma == 0).sum())
            total += gamma.numel()
        residue += sum(inner.residue().values())  # Σ_l ‖W_l − Γ_l‖² / 2μ
    columns["gamma_sparsity"] = zeros / total if total else float("nan")
    columns["residue"] = residue
    return columns


def build(config: TrainConfig, device: torch.device) -> Setup:
    """Data, model, optimizer, loss and schedule from ``config``; raises on any bad input."""
    from lowbit.data import BatchAugment, load_dataset, normalize
    from lowbit.models import check_model_fits, create_model

    check_names(config)
    check_baseline(config)
    d = config.data
    train_set = load_dataset(d.dataset, "train", data_dir=d.data_dir, image_size=d.image_size)
    test_set = load_dataset(d.dataset, "test", data_dir=d.data_dir, image_size=d.image_size)
    if d.train_subset is not None:
        train_set = train_set.subset(slice(0, d.train_subset))
    if d.test_subset is not None:
        test_set = test_set.subset(slice(0, d.test_subset))

    torch.manual_seed(config.run.seed)  # the model's initial weights
    model = create_model(
        config.model.name,
        num_classes=train_set.num_classes,
        in_channels=train_set.images.shape[1],
        **config.model.create_kwargs(),
    )
    size = "null" if d.image_size is None else d.image_size
    check_model_fits(model, config.model.name, train_set.images.shape[1:], f"{d.dataset}, data.image_size={size}")
    if config.binarize is not None or config.model.weight_clip is not None:  # binarize:, weight clipping
        from lowbit.data import normalize
        from lowbit.train.binarize import prepare_binary_model

        prepare_binary_model(model, config, normalize(train_set.images[: d.batch_size], train_set.mean, train_set.std))
    if config.quant:
        from lowbit.nn import apply_quant_config

        model = apply_quant_config(model, config.quant)
    init_info = load_matching_weights(model, config.run.init_from) if config.run.init_from else None
    model = model.to(device)
    if config.model.sync_bn:
        from lowbit.train.sync_batchnorm import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, device)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Drop the last partial batch (a batch of 1 breaks BatchNorm); a set smaller than one batch is one step.
    steps_per_epoch = max(1, len(train_set) // d.batch_size)
    total_steps = steps_per_epoch * config.run.epochs
    optimizer = build_optimizer(model.parameters(), config.optim, model=model, steps=(total_steps, steps_per_epoch))
    loss_fn = build_loss(config.loss)

    a = config.augment
    augment = BatchAugment(
        crop_padding=a.crop_padding,
        pad_mode=a.pad_mode,
        flip=a.flip,
        erasing=a.erasing,
        cutout=a.cutout,
        mean=train_set.mean,
        std=train_set.std,
    )
    lr_at = make_schedule(config.schedule, config.optim.lr, total_steps, steps_per_epoch)
    surrogate = build_surrogate_schedule(config.surrogate, model, config.model.name, total_steps, steps_per_epoch)
    example = normalize(train_set.images[:2].to(device), train_set.mean, train_set.std)  # (2, C, H, W)
    distiller = build_distiller(config.distill, model, example, train_set.num_classes, d.dataset, steps_per_epoch)
    return Setup(
        config=config,
        device=device,
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        lr_at=lr_at,
        train_images=train_set.images.to(device),
        train_labels=train_set.labels.to(device),
        test_images=test_set.images.to(device),
        test_labels=test_set.labels.to(device),
        num_classes=train_set.num_classes,
        mean=train_set.mean,
        std=train_set.std,
        augment=augment,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        num_params=sum(p.numel() for p in model.parameters()),
        init_info=init_info,
        surrogate=surrogate,
        distiller=distiller,
    )


@torch.no_grad()
def evaluate(setup: Setup, autocast: Any = contextlib.nullcontext, rank: Optional[Distributed] = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``setup.model`` on the test split (eval mode, no augmentation).

    Under torchrun each rank evaluates its contiguous share of the split and the sums are all-reduced.
    """
    from lowbit.data import normalize

    model, cfg = setup.model, setup.config
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    images, labels = setup.test_images, setup.test_labels
    if rank is not None:
        share = rank.local_part(torch.empty(images.shape[0] - images.shape[0] % rank.world_size))
        tail = slice(images.shape[0] - images.shape[0] % rank.world_size, images.shape[0])
        if rank.is_main:  # the images left over by an uneven split go to rank 0
            images, labels = torch.cat([images[share], images[tail]]), torch.cat([labels[share], labels[tail]])
        else:
            images, labels = images[share], labels[share]
    for start in range(0, images.shape[0], cfg.data.eval_batch_size):
        x = normalize(images[start : start + cfg.data.eval_batch_size], setup.mean, setup.std)
        y = labels[start : start + cfg.data.eval_batch_size]
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)  # (B, K)
            loss = setup.loss_fn(logits.float(), y)
        loss_sum += float(loss) * y.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        count += y.shape[0]
    if rank is not None:
        loss_sum, correct, count = rank.sum([loss_sum, correct, count], setup.device)
    return loss_sum / count, correct / count


class _StopFlag:
    """Signal handler: the first SIGINT/SIGTERM asks for a stop at the next step boundary."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the previous checkpoint stays
        self.signum = signum


@contextlib.contextmanager
def _handle_signals(flag: _StopFlag):
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    # an inherited SIG_IGN (a job a script started in the background) stays: that process asked for no Ctrl-C
    watched = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, flag) for s in watched}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    # torch.use_deterministic_algorithms also sets the inductor compiler's flag, importing the whole
    # compiler stack (1-2 s, 20 s on a loaded machine). An eager run does not need it, so set the ATen flag
    # directly unless the compiler is already loaded (run.compile loads it first: lowbit.train.compiler).
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def _threads(n: Optional[int]):
    """``torch.set_num_threads(n)`` inside the block (None: unchanged); restored after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """Deterministic algorithms inside the block (warn, not fail, where an op has none); restored after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    _set_deterministic(enabled, warn_only=True)
    try:
        yield
    finally:
        _set_deterministic(*previous)


def _rewrite_metrics(path: Path, rows: List[Dict[str, Any]]) -> None:
    """Replace a records file by exactly ``rows`` (on resume: drop rows newer than the checkpoint)."""
    rewrite_records(path, rows)


def _quantizer_schedules(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """The clip schedules of the model's gradient quantizers (``clip_interval``): checkpoint state."""
    from lowbit.quant import GradientQuantizer

    return {name: m.schedule_state() for name, m in model.named_modules() if isinstance(m, GradientQuantizer)}


def _restore_quantizer_schedules(model: nn.Module, schedules: Dict[str, Dict[str, Any]]) -> None:
    modules = dict(model.named_modules())
    for name, schedule in schedules.items():
        modules[name].load_schedule_state(schedule)


def _keep_grad_stats_before(run_dir: Path, step: int) -> None:
    """On resume: drop the gradient-statistics rows of steps >= ``step`` (the resumed run records them again).

    Rows are flushed before each checkpoint, so normally none are dropped; this
    covers a stop between a flush and its checkpoint (a crash, a second Ctrl-C).
    """
    for name in (GRAD_STATS_FILE, GRAD_HIST_FILE):
        path = run_dir / name
        if path.exists():
            rows = read_stats(path)  # layer names stay text ("1.10" is not 1.1)
            kept = [r for r in rows if int(r["step"]) < step]
            if len(kept) != len(rows):
                _rewrite_metrics(path, kept)


def _open_trackers(cfg: TrainConfig, run_dir: Path, resumed: bool, log: Optional[Callable[[str], None]],
                   resume_step: Optional[int] = None) -> Trackers:
    """The run's trackers (``run.trackers`` / ``run.tensorboard``), opened, with the run's parameters logged.

    ``resume_step``: the optimizer steps of the checkpoint a resumed run continues from."""
    names, explicit = cfg.run.requested_trackers()
    usable, notes = resolve_trackers(names, required=explicit)
    for note in notes:  # the implicit run.tensorboard: true without the package
        message = f"no TensorBoard events for this run: {note}, or set run.tensorboard=false"
        log(message) if log is not None else warnings.warn(message, stacklevel=3)
    trackers = open_trackers(usable, TrackingContext(run_dir, "train", resumed=resumed, mlflow=cfg.run.mlflow,
                                                     resume_step=resume_step))
    flat = flatten_dotted(to_dict(cfg))
    trackers.log_params({k: v for k, v in flat.items() if not is_bookkeeping_key(k)})
    return trackers


def _epoch_scalars(record: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics.csv row as tracker scalars, x = the epoch: every number but the epoch and step counters."""
    return {k: v for k, v in record.items() if k not in ("epoch", "step")}


def _finish_trackers(trackers: Trackers, history: List[Dict[str, Any]], cfg: TrainConfig, status: str) -> None:
    """The run's summary (``lowbit.train.summarize`` of its epochs, ``summary/*``) and its status, then close."""
    if not trackers:
        return
    if history:
        summary = summarize(history, cfg.run.summary_last_n)
        trackers.log_summary({f"summary/{k}": v for k, v in summary.items()})
    trackers.close(status)


def _ask_callback(on_epoch: Callable[[Dict[str, Any]], Any], record: Dict[str, Any]) -> Optional[str]:
    """Why ``on_epoch`` stops the run after this epoch (it returned a true value or raised StopTraining), or None."""
    try:
        answer = on_epoch(dict(record))
    except StopTraining as stop:
        return str(stop) or "StopTraining raised by the epoch callback"
    if answer:
        return answer if isinstance(answer, str) else "the epoch callback returned True"
    return None


def _with(config: TrainConfig, data_dir: Optional[str], device: Optional[str],
          compile: Optional[Union[bool, str]] = None) -> TrainConfig:
    """``config`` with the command line's --data-dir / --device / --compile applied."""
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(data_dir)))
    if device is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, device=device))
    if compile is not None:  # RunConfig checks the value
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, compile=compile))
    return config


@holds_run_locks
def train(
    config: Optional[TrainConfig] = None,
    run_dir: Optional[PathLike] = None,
    resume: Optional[PathLike] = None,
    *,
    runs_dir: PathLike = "runs",
    data_dir: Optional[str] = None,
    device: Optional[str] = None,
    compile: Optional[Union[bool, str]] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    force: bool = False,
    on_epoch: Optional[Callable[[Dict[str, Any]], Any]] = None,
) -> Path:
    """Train ``config`` (default: ``TrainConfig()``, the digits recipe); return the run directory.

    Args:
        config: the recipe; ignored parts take their defaults. Not allowed with ``resume``.
        run_dir: where to write (created; must hold no checkpoint). Default:
            ``runs_dir/<run name>-<time>``.
        resume: a run directory to continue from its ``checkpoints/last.pt``
            with its saved ``config.yaml`` (from the start if it stopped before its
            first checkpoint); a finished run only gets its report rebuilt. A
            ``config.yaml`` edited since the run started is refused, naming the
            changed keys (only ``data.data_dir``, ``run.device``, ``run.compile`` and the tracking keys may change).
        force: resume even so (the run then mixes two configs).
        data_dir, device, compile: override ``data.data_dir`` / ``run.device`` / ``run.compile`` (the CLI flags).
        progress: show a tqdm bar per epoch.
        log: called with a start line and one line per epoch (the CLI passes ``tqdm.write``).
        on_epoch: called after every epoch, once its checkpoint is saved, with the epoch's metrics.csv
            row (a dict: epoch, step, lr, train_loss, train_acc, test_loss, test_acc, seconds, ...). A true
            return value (a string: the reason) or ``raise StopTraining(reason)`` ends the run there (after
            the last epoch it changes nothing): ``stopped.yaml`` and the report record the early stop, the
            trackers get status ``stopped``, and ``train(resume=run_dir)`` continues it. Any other exception
            propagates, the epoch's checkpoint kept. Under torchrun it is called on rank 0 only; every rank stops.

    Raises:
        ValueError / FileNotFoundError / KeyError: bad config, names or data, before training.
        DirectoryInUse: another process holds the run directory.
        StorageError: a file could not be written (disk full, read-only); resumable.
        TrainingInterrupted: SIGINT/SIGTERM; a resumable checkpoint was saved.
        TrainingDiverged: NaN/Inf loss, test loss or weights; the last good (finite) checkpoint was kept.
    """
    from lowbit.train.summary import write_train_report

    state: Optional[Dict[str, Any]] = None
    rank = from_environment()  # torchrun's rendezvous variables (lowbit.train.distributed); None: one process
    main = rank is None or rank.is_main  # the one process that writes the run directory (and holds its lock)
    if resume is not None:
        if config is not None or run_dir is not None:
            raise ValueError("resume continues a run with its saved config.yaml; do not pass config or run_dir too")
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume {str(run_dir)!r}: no config.yaml there; is it a training run directory?")
        if main:
            hold_run_lock(run_dir)
        config, state = load_resume_state(run_dir, data_dir, device, force)
    config = _with(config or TrainConfig(), data_dir, device, compile)
    if resume is None:
        check_config(config)  # the checks that need no data: before any is loaded or any folder is made
    if main:
        check_writable(run_dir if run_dir is not None else runs_dir)  # a read-only --runs-dir: now, not after the data
    if config.distill is not None:  # a teacher glob becomes the run it names, saved so that a resume uses it
        config = dataclasses.replace(config, distill=resolve_teacher(config.distill))
    if rank is not None:
        check_divisible(config.data.batch_size, rank.world_size)
        progress, log = (progress, log) if main else (False, None)
    dev = resolve_device(config.run.device if rank is None else str(rank.device(config.run.device)))
    check_compile(config.run, dev)  # run.compile: the backend and its code generator, before any data is read
    set_tf32(config.run.allow_tf32)
    if state is not None and state.get("complete"):
        if main:
            write_train_report(run_dir)
        return Path(run_dir)
    resumed = resume is not None
    if rank is not None:
        rank.start(dev)
        try:
            done = _train(config, run_dir, state, runs_dir, dev, rank, progress, log, resumed, on_epoch)
        except BaseException:
            rank.stop()  # no barrier: another rank may be gone
            raise
        rank.stop(wait_for_all=True)
        return done
    return _train(config, run_dir, state, runs_dir, dev, rank, progress, log, resumed, on_epoch)


def _train(
    config: TrainConfig,
    run_dir: Optional[PathLike],
    state: Optional[Dict[str, Any]],
    runs_dir: PathLike,
    dev: torch.device,
    rank: Optional[Distributed],
    progress: bool,
    log: Optional[Callable[[str], None]],
    resumed: bool = False,
    on_epoch: Optional[Callable[[Dict[str, Any]], Any]] = None,
) -> Path:
    """The body of :func:`train` once the device (and, under torchrun, the process group) is up."""
    from tqdm.auto import tqdm

    from lowbit.data import mixup
    from lowbit.train.summary import write_train_report

    main = rank is None or rank.is_main

    cfg = config
    if dev.type == "cuda" and cfg.run.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; must be set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    with _deterministic(cfg.run.deterministic), _threads(cfg.run.threads):
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        setup = build(cfg, dev)  # raises on any bad input, before anything is written
        grad_probe = None  # gradient quality every probe.every epochs (lowbit.train.grad_probe); draws no random numbers
        if cfg.probe is not None:
            from lowbit.train.grad_probe import GradProbe

            grad_probe = GradProbe(cfg.probe, setup, cfg.run.seed)  # checks the probed layers
        model, optimizer = setup.model, setup.optimizer
        eager_forward = model if rank is None else _ddp(model, dev)  # DDP averages the gradients over ranks
        # run.compile: the step calls the compiled module; everything else (checkpoints, evaluation, hooks) `model`
        forward = compile_module(eager_forward, cfg.run) if cfg.run.compile_mode else eager_forward
        binary_later = setup.distiller is not None and bool(setup.distiller.stage2_layers)  # Real-to-Binary's stage 2
        flips = flip_ratio_for(model, cfg.run.flip_ratio, binary_later)  # None for a float model (lowbit.train.flips)
        precision = Precision(cfg.run.precision, dev)  # autocast; fp16: loss scaling (lowbit.train.precision)
        data_gen = torch.Generator().manual_seed(cfg.run.seed)  # data order (CPU: randperm)
        aug_gen = torch.Generator(device=dev).manual_seed(cfg.run.seed + 1)  # augmentation and mixup
        generators = {"data": data_gen, "augment": aug_gen}

        # ---- the run directory (rank 0 makes it and holds its lock; the other ranks learn its name)
        if state is None and main and not resumed:
            if run_dir is None:
                run_dir = create_run_dir(cfg.run_name, runs_dir)
                hold_run_lock(run_dir)
            else:
                run_dir = prepare_run_dir(run_dir)
                hold_run_lock(run_dir)
                if checkpoint_path(run_dir).exists():
                    raise ValueError(f"{str(run_dir)!r} already holds a checkpoint; resume it or choose another run_dir")
        if state is None and main:  # a fresh run, or a resumed one that stopped before its first checkpoint
            write_run_files(run_dir, cfg)
            _write_model_info(run_dir, setup)
            if setup.init_info is not None:
                import yaml

                atomic_write_text(run_dir / "init_from.yaml", yaml.safe_dump({"init_from": cfg.run.init_from, **setup.init_info}))
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
            for name in (GRAD_STATS_FILE, GRAD_HIST_FILE, STORAGE_FILE):
                (run_dir / name).unlink(missing_ok=True)
            if cfg.quant:
                from lowbit.nn import storage_records

                RecordWriter(run_dir / STORAGE_FILE).write_many(storage_records(model))
        if rank is not None:
            run_dir = rank.broadcast_text(str(run_dir) if main else "")
        run_dir = Path(run_dir)
        ckpt_file = checkpoint_path(run_dir)
        kept = KeptCheckpoint(ckpt_file)
        if log is not None:
            log(
                f"{'resuming' if state else 'run'} {run_dir}: {cfg.model.name} ({setup.num_params:,} parameters) on "
                f"{cfg.data.dataset} ({setup.train_images.shape[0]} train / {setup.test_images.shape[0]} test images), "
                f"{cfg.run.epochs} epochs x {setup.steps_per_epoch} steps, {dev.type}"
                + (f", {describe_compile(cfg.run.compile, cfg.run.compile_backend)}: the first step compiles"
                   if cfg.run.compile_mode else "")
            )

        # ---- where to start: fresh, or exactly where the checkpoint left off
        step, start_epoch, position = 0, 0, 0
        perm: Optional[torch.Tensor] = None
        sums = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
        history: List[Dict[str, Any]] = []
        if state is not None:
            kept.saved(int(state["epoch"]), int(state["step"]), int(state["position"]))
            load_model_state(model, state["model"], ckpt_file)
            optimizer.load_state_dict(state["optimizer"])
            step, start_epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
            perm = state["perm"].to(dev) if state["perm"] is not None else None
            sums = dict(state["epoch_sums"])
            history = list(state["metrics"])
            restore_rng(state["rng"], generators)
            _restore_quantizer_schedules(model, state.get("quantizer_schedules", {}))
            if setup.distiller is not None:
                setup.distiller.load_state_dict(state.get("distill"), model)
            if flips is not None:
                flips.track_new_layers()  # the layers a restored stage 2 made binary
                flips.load_state_dict(state.get("flip_ratio"))
            precision.load_state_dict(state.get("grad_scaler"))  # fp16: the loss scale S and its counter
            if main:
                _rewrite_metrics(run_dir / METRICS_FILE, history)
                _keep_grad_stats_before(run_dir, step)
                (run_dir / STOP_FILE).unlink(missing_ok=True)  # a run stopped early by on_epoch continues
        metrics_writer = RecordWriter(run_dir / METRICS_FILE) if main else None
        resume_step = step if state is not None else (0 if resumed else None)  # no checkpoint yet: from the start
        trackers = _open_trackers(cfg, run_dir, resumed, log, resume_step) if main else Trackers()  # rank 0 alone logs
        log_every = cfg.run.log_every if trackers else 0
        if grad_probe is not None and main:  # measures at initialisation, or picks up after the resumed epoch
            grad_probe.begin(run_dir, start_epoch, resumed=state is not None)

        # Gradient statistics: GradientStats is attached only for the forward/backward of every
        # stats_every-th global step (no hooks at all on the other steps), so the samples fall on the
        # same steps in a resumed run. It draws no random numbers; rows are flushed before every checkpoint.
        stats_every = cfg.grad_stats_every if main else 0  # rank 0's share of the batch stands for all
        stats = None
        if stats_every:
            from lowbit.nn import GradientStats

            stats = GradientStats(model, every=1)

        def flush_stats() -> None:
            if stats is None or not stats.records:
                return
            spe = setup.steps_per_epoch
            RecordWriter(run_dir / GRAD_STATS_FILE).write_many(
                {"epoch": r["step"] // spe + 1, **r} for r in stats.records
            )
            RecordWriter(run_dir / GRAD_HIST_FILE).write_many(
                {"epoch": h["step"] // spe + 1, **h} for h in stats.histograms
            )
            stats.records, stats.histograms = [], []

        def checkpoint(epoch: int, position: int, perm: Optional[torch.Tensor], complete: bool = False) -> None:
            # only a finite model is saved (lowbit.train.guards): the check names the update that broke it;
            # every rank checks (their weights are equal), so all stop together
            check_checkpointable(model, epoch=epoch if position else epoch - 1, step=step,
                                 batch=position or setup.steps_per_epoch, steps_per_epoch=setup.steps_per_epoch,
                                 test_loss=None, kept=kept, run_dir=run_dir, lr=cfg.optim.lr,
                                 grad_clip=cfg.optim.grad_clip)
            if not main:
                return
            trackers.flush()  # before the checkpoint: a kill after it then loses no point it counts as logged
            save_checkpoint(
                ckpt_file,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "perm": perm,
                    "epoch_sums": dict(sums),
                    "rng": capture_rng(generators),
                    "metrics": history,
                    "complete": complete,
                    "num_params": setup.num_params,
                    "config": to_dict(cfg),
                    "quantizer_schedules": _quantizer_schedules(model),
                    "flip_ratio": flips.state_dict() if flips is not None else None,
                    "distill": setup.distiller.state_dict() if setup.distiller is not None else None,
                    "grad_scaler": precision.state_dict(),  # fp16's loss scale; None otherwise
                },
            )
            kept.saved(epoch, step, position)

        interrupt_at = int(os.environ[INTERRUPT_ENV]) if os.environ.get(INTERRUPT_ENV) else None
        autocast = precision.autocast
        n_train, batch = setup.train_images.shape[0], cfg.data.batch_size
        stop = _StopFlag()
        stopped_early = False  # on_epoch asked to stop (recorded in stopped.yaml)
        try:
            with _handle_signals(stop):
                for epoch in range(start_epoch, cfg.run.epochs):
                    if perm is None:  # a new epoch (not one resumed mid-way)
                        perm = torch.randperm(n_train, generator=data_gen).to(dev)  # (N,)
                        position = 0
                        sums = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
                    if setup.distiller is not None:
                        setup.distiller.on_epoch_start(epoch, model)  # Real-to-Binary's stage 2, when due
                        if flips is not None:
                            flips.track_new_layers()  # stage 2's binarised layers, from their first binary step
                    model.train()
                    t0 = time.perf_counter()
                    bar = tqdm(
                        total=setup.steps_per_epoch,
                        initial=position,
                        desc=f"epoch {epoch + 1}/{cfg.run.epochs}",
                        disable=not progress,
                        leave=False,
                        dynamic_ncols=True,
                    )
                    for i in range(position, setup.steps_per_epoch):
                        idx = perm[i * batch : (i + 1) * batch]  # (B,)
                        x = setup.augment(setup.train_images[idx], generator=aug_gen)  # (B, C, H, W) float32
                        y = setup.train_labels[idx]  # (B,)
                        target: torch.Tensor = y
                        if cfg.augment.mixup_alpha > 0:
                            x, target = mixup(x, y, setup.num_classes, cfg.augment.mixup_alpha, generator=aug_gen)
                        if rank is not None:  # every rank drew the whole batch's randomness; it keeps its part
                            part = rank.local_part(idx)
                            x, y, target = x[part], y[part], target[part]
                        if cfg.model.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        lr = setup.lr_at(step)
                        set_learning_rate(optimizer, lr)  # times a group's lr_scale (optim.groups)
                        if setup.surrogate is not None:
                            setup.surrogate.apply(step)

                        sampled = stats is not None and step % stats_every == 0
                        if sampled:
                            stats.step = step  # optimizer steps before this one (0-based)
                            stats.loss_scale = precision.loss_scale  # fp16: the hooks see S times each gradient
                            stats.attach()
                        # GradientStats' hooks, attached for this step only, are invisible to a compiled graph
                        # (dynamo does not guard on hooks): a sampled step runs eagerly, the same numbers
                        with autocast(), compile_errors(cfg.run, step, run_dir):
                            logits = (eager_forward if sampled else forward)(x)  # (B, K); B / world_size under torchrun
                            loss = setup.loss_fn(logits.float(), target)
                            if setup.distiller is not None:
                                loss = setup.distiller.loss(x, logits.float(), loss)
                        # this step's numbers (all-reduced under torchrun): loss sum, correct, count, non-finite, stop
                        numbers = [loss.item() * y.shape[0], int((logits.detach().argmax(1) == y).sum()), y.shape[0],
                                   float(not torch.isfinite(loss)), float(stop.signum is not None)]
                        if rank is not None:
                            numbers = rank.sum(numbers, dev)
                        if numbers[3]:
                            value = float("nan") if torch.isfinite(loss) else loss.item()  # finite here: another rank's
                            raise TrainingDiverged(_divergence_message(value, epoch, i, step, cfg, kept, model), run_dir)
                        optimizer.zero_grad(set_to_none=True)
                        with compile_errors(cfg.run, step, run_dir):  # AOTAutograd compiles the backward at its first call
                            precision.backward(loss)  # fp16: (S loss).backward(), every gradient times S
                        if sampled:
                            stats.detach()
                        if cfg.optim.grad_clip is not None:
                            precision.unscale(optimizer)  # clip the true gradient, not S times it
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                        precision.step(optimizer)  # fp16: skipped when a gradient overflowed (S halves)
                        clip_latent_weights_(model)  # binary layers' weight_clip (model.weight_clip); else nothing
                        if flips is not None:
                            flips.update()
                        step += 1

                        sums["loss"] += numbers[0]
                        sums["correct"] += int(numbers[1])
                        sums["count"] += int(numbers[2])
                        if log_every and step % log_every == 0:  # this step's batch (all ranks'), x = optimizer steps
                            trackers.log_scalars({"step/train_loss": numbers[0] / numbers[2], "step/lr": lr}, step)
                        bar.update(1)
                        if progress and (i % 10 == 0):
                            bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.4f}", lr=f"{lr:.3g}")
                        if interrupt_at is not None and step == interrupt_at:
                            signal.raise_signal(signal.SIGINT)  # the handler runs before raise_signal returns
                        stopping = stop.signum is not None if rank is None else bool(numbers[4])  # every rank alike
                        if stopping:  # mid-epoch checkpoint, then stop
                            sums["seconds"] += time.perf_counter() - t0
                            bar.close()
                            flush_stats()
                            checkpoint(epoch, i + 1, perm)
                            raise TrainingInterrupted(run_dir, epoch + 1, step)
                    bar.close()

                    # eager even under run.compile: eval-mode BatchNorm, the eval batch and the last partial batch
                    # would each compile another graph (minutes under max-autotune) for a pass without a backward
                    test_loss, test_acc = evaluate(setup, autocast, rank)
                    check_checkpointable(model, epoch=epoch, step=step, batch=setup.steps_per_epoch,
                                         steps_per_epoch=setup.steps_per_epoch, test_loss=test_loss, kept=kept,
                                         run_dir=run_dir, lr=cfg.optim.lr, grad_clip=cfg.optim.grad_clip)
                    sums["seconds"] += time.perf_counter() - t0
                    record = {
                        "epoch": epoch + 1,
                        "step": step,
                        "lr": setup.lr_at(step - 1),
                        "train_loss": sums["loss"] / sums["count"],
                        "train_acc": sums["correct"] / sums["count"],
                        "test_loss": test_loss,
                        "test_acc": test_acc,
                        "seconds": sums["seconds"],
                        **_sparsity_columns(setup.optimizer),
                        **(flips.epoch_columns() if flips is not None else {}),
                        **(setup.surrogate.columns(step - 1) if setup.surrogate is not None else {}),
                        **(setup.distiller.columns() if setup.distiller is not None else {}),
                    }
                    history.append(record)
                    if metrics_writer is not None:
                        metrics_writer.write(record)
                    trackers.log_scalars(_epoch_scalars(record), epoch + 1)
                    if log is not None:
                        log(_epoch_line(record, cfg.run.epochs))
                    perm, position = None, 0
                    flush_stats()
                    if grad_probe is not None and main:  # rank 0 measures; the others wait at the next step
                        grad_probe.after_epoch(epoch + 1)
                    checkpoint(epoch + 1, 0, None, complete=epoch + 1 == cfg.run.epochs)
                    stopping = stop.signum is not None if rank is None else rank.any(stop.signum is not None, dev)
                    if stopping and epoch + 1 < cfg.run.epochs:
                        raise TrainingInterrupted(run_dir, epoch + 2, step)
                    # after the checkpoint, so that a kill inside on_epoch (a tuner ending the trial) keeps it
                    reason = _ask_callback(on_epoch, record) if main and on_epoch is not None else None
                    # every rank joins (whether or not it was given on_epoch): rank 0's answer stops them all
                    if rank is not None and rank.any(reason is not None, dev) and reason is None:
                        reason = "on_epoch on rank 0"
                    if reason is not None and epoch + 1 < cfg.run.epochs:  # after the last epoch: nothing to stop
                        if main:
                            write_stop_record(run_dir, epoch + 1, cfg.run.epochs, step, reason)
                        stopped_early = True
                        break
        except BaseException as error:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "diverged" if isinstance(error, TrainingDiverged) else "failed"
            if isinstance(error, (TrainingInterrupted, TrainingDiverged, CompileFailed)):
                with contextlib.suppress(Exception):
                    flush_stats()  # rows past the last checkpoint are dropped again on resume
                if history and main:  # a report of what the run has so far
                    with contextlib.suppress(Exception):
                        write_train_report(run_dir)
            with contextlib.suppress(Exception):
                _finish_trackers(trackers, history, cfg, status)
            raise
        finally:
            if stats is not None:
                stats.detach()
        _finish_trackers(trackers, history, cfg, "stopped" if stopped_early else "complete")
    if main:
        write_train_report(run_dir)
    return run_dir


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (its own parameters, shared; checkpoints keep saving ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _write_model_info(run_dir: Path, setup: Setup) -> None:
    """``model.yaml``: what the summary table needs without rebuilding the model."""
    import yaml

    info = {
        "name": setup.config.model.name,
        "num_params": setup.num_params,
        "param_bytes": sum(p.numel() * p.element_size() for p in setup.model.parameters()),
        "in_channels": int(setup.train_images.shape[1]),
        "num_classes": setup.num_classes,
        "image_shape": list(setup.train_images.shape[1:]),
        "train_images": int(setup.train_images.shape[0]),
        "test_images": int(setup.test_images.shape[0]),
        "steps_per_epoch": setup.steps_per_epoch,
    }
    atomic_write_text(run_dir / "model.yaml", yaml.safe_dump(info, sort_keys=False))


def _epoch_line(r: Dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>3}/{epochs}  lr {r['lr']:.3g}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}"
        f"  test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}  {r['seconds']:.1f}s"
    )


def _divergence_message(value: float, epoch: int, i: int, step: int, cfg: TrainConfig, kept: KeptCheckpoint,
                        model: nn.Module) -> str:
    bad = nonfinite_tensor(model.state_dict()) if step > 0 else None
    cause = f" (the update of step {step} made {bad[0]!r} {bad[1]})" if bad is not None else ""
    return (
        f"training diverged: the loss is {value} at epoch {epoch + 1}, step {step + 1} (batch {i + 1} of the epoch)"
        f"{cause}; stopped without saving, {kept.describe()}. {divergence_fix(cfg.optim.lr, cfg.optim.grad_clip)}"
    )


__all__ = [
    "Setup",
    "StopTraining",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build",
    "check_baseline",
    "check_names",
    "evaluate",
    "resolve_device",
    "train",
]
