"""Every check of a training config that needs no data: run before any file is read or folder made.

``check_config(config)`` raises one ``ValueError`` listing every problem it
finds, so a bad recipe costs a second, not a data load and a run directory:

- registry names (model, dataset, optimizer, schedule, loss, ``run.trackers`` and their packages), ``run.baseline``,
  the device, and the run name (one folder name, :func:`lowbit.runs.check_run_name`);
- ranges that no run can use: ``run.epochs`` at most :data:`MAX_EPOCHS`,
  batches at most :data:`MAX_BATCH`, warm-up no longer than the run, crop padding and cutout no larger than the
  image (the side comes from the data set's registered spec and ``data.image_size``);
- the model as the run would build it, but on PyTorch's ``meta`` device (shapes
  only, no memory, no data): ``model.*`` keywords and ``model.kwargs``, ``quant``,
  the optimizer with ``optim.extra``, the loss, the schedule, the augmentation
  (``augment.erasing`` included);
- ``run.init_from``: the file loads with ``weights_only=True`` and at least one
  of its tensors fits that model (else the first difference is named).

A batch larger than the training set is allowed (it is one step per epoch,
as documented); one beyond :data:`MAX_BATCH` is refused.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from lowbit.config import check_threads
from lowbit.plugins import import_plugins
from lowbit.runs import check_run_name
from lowbit.train.config import TrainConfig
from lowbit.train.guards import nonfinite_tensor

__all__ = ["MAX_BATCH", "MAX_EPOCHS", "check_config", "image_side", "meta_model"]

MAX_EPOCHS = 1_000_000  # far beyond any run (a million epochs of digits is ~4 CPU-months); catches 1e20
MAX_BATCH = 1 << 20  # images per batch: 20x CIFAR's whole training set; a larger one is a typo (1e12)


def image_side(config: TrainConfig) -> Optional[int]:
    """The side of the images the model sees: ``data.image_size``, else the data set's native side."""
    from lowbit.data import dataset_spec

    if config.data.image_size is not None:
        return config.data.image_size
    return dataset_spec(config.data.dataset).image_side


def meta_model(config: TrainConfig) -> torch.nn.Module:
    """The run's model (``quant`` applied) with ``meta`` tensors: every shape, no storage, no data."""
    from lowbit.data import dataset_spec
    from lowbit.models import create_model

    spec = dataset_spec(config.data.dataset)
    with torch.device("meta"):  # the same steps as lowbit.train.loop.build, without the data
        model = create_model(
            config.model.name,
            num_classes=spec.num_classes,
            in_channels=spec.channels or 3,
            **config.model.create_kwargs(),
        )
        side = image_side(config)
        if side is not None and spec.channels is not None:
            from lowbit.models import check_model_fits

            size = "null" if config.data.image_size is None else config.data.image_size
            check_model_fits(model, config.model.name, (spec.channels, side, side),
                             f"{config.data.dataset}, data.image_size={size}")
        if config.binarize is not None or config.model.weight_clip is not None:
            from lowbit.train.binarize import prepare_binary_model

            prepare_binary_model(model, config)  # (the dead-sign check needs data: it runs in build)
        if config.quant:
            from lowbit.nn import apply_quant_config

            model = apply_quant_config(model, config.quant)
    return model


def model_memory_problem(model: torch.nn.Module) -> Optional[str]:
    """Why a (meta) model cannot be trained here: its weights, gradients and optimizer state exceed the memory."""
    from lowbit.data.limits import available_memory

    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = 4 * weight_bytes  # weights, gradients and two optimizer moments (Adam); SGD needs 3x
    free = available_memory()
    if free is not None and needed > free:
        return (f"has {weight_bytes // 4:,} weights ({weight_bytes / 2**30:.1f} GiB); training needs ~{needed / 2**30:.1f} GiB, "
                f"more than the {free / 2**30:.1f} GiB free: choose a smaller width")
    return None


def check_config(config: TrainConfig) -> None:
    """Raise ``ValueError`` listing every problem of ``config`` that shows without data (module docstring)."""
    from lowbit.train.loop import check_baseline, check_names, resolve_device

    import_plugins(config.plugins, "plugins: of the config")  # a config built in Python: its modules first
    errors: List[str] = []

    def attempt(what: str, check: Callable[[], object]) -> object:
        try:
            return check()
        except (ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError, RuntimeError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            errors.append(f"{what}: {message}" if what else str(message))
            return None

    check_names(config)  # these three raise their own errors, as `build` always did
    check_baseline(config)
    resolve_device(config.run.device)
    attempt("", lambda: check_run_name(config.run_name, "run.name"))
    attempt("", lambda: check_threads(config.run.threads, "run.threads"))
    attempt("", lambda: _check_trackers(config))
    errors += _ranges(config)
    errors += _schedule_names(config)
    errors += _built(config)
    if errors:
        flat = [line for e in errors for line in [e.replace("invalid config:\n  - ", "").replace("\n  - ", "; ")]]
        raise ValueError("invalid config:\n  - " + "\n  - ".join(flat))


def _check_trackers(config: TrainConfig) -> None:
    """``run.trackers``: known names whose packages import (the implicit TensorBoard may be missing)."""
    from lowbit.tracking import resolve_trackers

    names, explicit = config.run.requested_trackers()
    usable, _ = resolve_trackers(names, required=explicit)
    if "mlflow" in usable:
        from lowbit.tracking.mlflow_backend import check_store

        check_store(config.run.mlflow, "run.mlflow")


def _ranges(config: TrainConfig) -> List[str]:
    errors = []
    run, schedule, augment = config.run, config.schedule, config.augment
    if run.epochs > MAX_EPOCHS:
        errors.append(f"run.epochs={run.epochs} is beyond any feasible run (at most {MAX_EPOCHS:,})")
    for key in ("batch_size", "eval_batch_size"):
        value = getattr(config.data, key)
        if value > MAX_BATCH:
            errors.append(f"data.{key}={value} is beyond any batch lowbit can hold (at most {MAX_BATCH:,} images)")
    if schedule.warmup_epochs > run.epochs:
        errors.append(
            f"schedule.warmup_epochs={schedule.warmup_epochs:g} is longer than the run (run.epochs={run.epochs}); "
            f"use at most {run.epochs}"
        )
    side = _known_side(config)
    if side is not None:
        if augment.crop_padding > side:
            errors.append(f"augment.crop_padding={augment.crop_padding} is larger than the {side}x{side} images; use at most {side}")
        if augment.cutout is not None and augment.cutout > side:
            errors.append(f"augment.cutout={augment.cutout} is larger than the {side}x{side} images; use at most {side}")
    return errors


def _schedule_names(config: TrainConfig) -> List[str]:
    """Every schedule named anywhere in the config (``schedule``, ``optim.bop.*_schedule``), used or not: a typo is refused."""
    import dataclasses

    from lowbit.registry import unknown_name_message
    from lowbit.train.config import ScheduleConfig
    from lowbit.train.schedules import SCHEDULES

    errors: List[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, ScheduleConfig):
            if node.name not in SCHEDULES.names():
                errors.append(f"{where}.name: " + unknown_name_message("schedule", node.name, SCHEDULES.names()))
        elif dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{where}.{f.name}" if where else f.name)

    walk(config, "")
    return [e for e in errors if not e.startswith("schedule.name:")]  # the main schedule: check_names reports it


def _known_side(config: TrainConfig) -> Optional[int]:
    try:
        return image_side(config)
    except (KeyError, ValueError):  # an unknown data set: reported by check_names
        return None


def _built(config: TrainConfig) -> List[str]:
    """Build what the run builds, on the meta device; collect what fails."""
    from lowbit.data import BatchAugment, dataset_spec
    from lowbit.train.losses import build_loss
    from lowbit.train.optim import build_optimizer
    from lowbit.train.schedules import make_schedule

    errors: List[str] = []
    try:
        model = meta_model(config)
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError, OverflowError, MemoryError) as error:
        key = "quant" if config.quant else "model (model.* and model.kwargs)"
        return [f"{key}: cannot build model {config.model.name!r} with these settings: {_first_line(error)}"]
    problem = model_memory_problem(model)
    if problem is not None:
        return [f"model: {config.model.name!r} with these settings {problem}"]
    try:
        build_optimizer(model.parameters(), config.optim, model=model, steps=(max(1, config.run.epochs), 1))
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as error:
        errors.append(f"optim: {_first_line(error)}")
    try:
        build_loss(config.loss)
    except (ValueError, TypeError, KeyError) as error:
        errors.append(f"loss: {_first_line(error)}")
    try:
        make_schedule(config.schedule, config.optim.lr, total_steps=max(1, config.run.epochs), steps_per_epoch=1)
    except (ValueError, TypeError, KeyError) as error:
        errors.append(f"schedule: {_first_line(error)}")
    a = config.augment
    try:
        augment = BatchAugment(crop_padding=a.crop_padding, pad_mode=a.pad_mode, flip=a.flip, erasing=a.erasing, cutout=a.cutout)
        channels = dataset_spec(config.data.dataset).channels
        value = augment.erasing["value"] if augment.erasing else None
        if channels and isinstance(value, tuple) and len(value) not in (1, channels):
            errors.append(f"augment.erasing: 'value' needs 1 or {channels} numbers (one per channel), got {list(value)}")
    except (ValueError, TypeError) as error:
        errors.append(f"augment: {_first_line(error)}")
    if config.run.init_from:
        errors += _check_init_from(config.run.init_from, model)
    return errors


def _check_init_from(path: str, model: torch.nn.Module) -> List[str]:
    from lowbit.train.checkpoint import _torch_load, first_mismatch

    from pathlib import Path

    if not Path(path).is_file():
        return [f"run.init_from: no checkpoint at {path!r}; give a file such as RUN_DIR/checkpoints/last.pt"]
    try:
        state = _torch_load(Path(path), "run.init_from")
    except ValueError as error:
        return [str(error)]
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return [f"run.init_from: {path!r} holds no state dict (a mapping of names to tensors)"]
    own = model.state_dict()
    if not any(k in own and tuple(own[k].shape) == tuple(v.shape) for k, v in weights.items()):
        return [f"run.init_from: no tensor of {path!r} fits the model (first difference: {first_mismatch(own, weights)})"]
    bad = nonfinite_tensor(weights)
    if bad is not None:
        return [f"run.init_from: {path!r} holds non-finite weights ({bad[0]!r} = {bad[1]}); start from a finite checkpoint"]
    return []


def _first_line(error: BaseException) -> str:
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
    return text.replace("\n  - ", "; ").splitlines()[0] if text else type(error).__name__
