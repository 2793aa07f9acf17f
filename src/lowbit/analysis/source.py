"""The trained model an analysis looks at: from a ``lowbit train`` checkpoint, or trained on the spot.

A ``lowbit train`` checkpoint (``RUN_DIR/checkpoints/last.pt``, read with
``torch.load(weights_only=True)``) holds the weights under ``"model"`` and the
resolved training config under ``"config"``. From that config
``lowbit.train.build`` rebuilds the data set (same name, image size and
subsets) and the model; because ``build`` seeds torch with ``run.seed``
right before creating the model, the model it returns holds exactly the
run's **initial** weights -- the "init" end of a 1-D interpolation -- and the
checkpoint's weights are then loaded into a copy for the "final" end.

With no checkpoint, :func:`obtain_model` first trains one with
``lowbit.train.train`` on ``TrainConfig()`` (LeNet-5 on digits) plus the
given overrides, into ``<analysis run dir>/source-train/``, so the analysis
keeps the full evidence of the model it studied.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from lowbit.devices import resolve_device

__all__ = ["TrainedModel", "describe", "load_trained", "obtain_model", "quick_train", "resolve_checkpoint"]

PathLike = Union[str, Path]


def resolve_checkpoint(path: PathLike) -> Path:
    """A run directory becomes its ``checkpoints/last.pt``; a file is taken as is."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise FileNotFoundError(f"{str(path)!r} is a folder without checkpoints/last.pt: is it a `lowbit train` run directory?")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (give a `lowbit train` run directory or its checkpoints/last.pt)")
    return path


@dataclass
class TrainedModel:
    """A trained model (eval mode) with the data and recipe it was trained with."""

    model: nn.Module  # the checkpoint's weights, eval mode
    initial: nn.Module  # the same architecture at the run's initial weights
    train_config: Any  # lowbit.train.TrainConfig
    checkpoint: Path
    setup: Any  # lowbit.train.loop.Setup: images (uint8), labels, mean, std, num_classes

    def images(self, split: str, indices: Optional[Sequence[int]] = None, limit: Optional[int] = None):
        """Normalised images and labels of ``split``: (N, C, H, W) float32, (N,) int64."""
        from lowbit.data import normalize

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        images = self.setup.train_images if split == "train" else self.setup.test_images
        labels = self.setup.train_labels if split == "train" else self.setup.test_labels
        if indices is not None:
            bad = [i for i in indices if not 0 <= i < images.shape[0]]
            if bad:
                raise ValueError(f"image indices {bad} are out of range for the {split} split of {images.shape[0]} images")
            idx = torch.as_tensor(list(indices), dtype=torch.long)
            images, labels = images[idx], labels[idx]
        elif limit is not None:
            images, labels = images[:limit], labels[:limit]
        return normalize(images, self.setup.mean, self.setup.std), labels

    def raw_images(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        """The uint8 images (N, C, H, W), for display."""
        images = self.setup.train_images if split == "train" else self.setup.test_images
        return images[torch.as_tensor(list(indices), dtype=torch.long)]


def load_trained(checkpoint: PathLike, data_dir: Optional[str] = None, device: str = "cpu") -> TrainedModel:
    """Rebuild the model and data of a ``lowbit train`` checkpoint on ``device``."""
    from lowbit.config import from_dict
    from lowbit.train import TrainConfig, build, load_checkpoint

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"checkpoint {str(path)!r} holds no training config; it was not written by `lowbit train`")
    config = from_dict(TrainConfig, state["config"])
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(data_dir)))
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, device=device))
    setup = build(config, resolve_device(device))  # seeds torch with run.seed right before creating the model
    initial = setup.model.eval()
    model = copy.deepcopy(initial)
    model.load_state_dict(state["model"])  # copies the checkpoint's CPU tensors onto the model's device
    return TrainedModel(model=model.eval(), initial=initial, train_config=config, checkpoint=path, setup=setup)


def quick_train(
    overrides: Sequence[str],
    run_dir: PathLike,
    *,
    train_config: Optional[PathLike] = None,
    data_dir: Optional[str] = None,
    device: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    plugins: Sequence[str] = (),
) -> Path:
    """Train ``train_config`` (a YAML; default ``TrainConfig()``) + ``overrides`` into ``run_dir``; return its checkpoint.

    ``device`` (if given) replaces the recipe's ``run.device``. ``plugins`` (the
    analysis' own) join the training run's, so its ``config.yaml`` rebuilds the
    model on its own (a later ``source.checkpoint`` of it, ``lowbit export``).
    """
    from lowbit.config import load_config
    from lowbit.plugins import merge_plugins
    from lowbit.train import TrainConfig, train

    config = load_config(TrainConfig, train_config, list(overrides))
    config.plugins = merge_plugins(config.plugins, plugins)
    out = train(config, run_dir=run_dir, data_dir=data_dir, device=device, progress=progress, log=log)
    return resolve_checkpoint(out)


def obtain_model(
    source: Any,
    run_dir: PathLike,
    *,
    data_dir: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    subdir: str = "source-train",
    device: str = "cpu",
    plugins: Sequence[str] = (),
) -> TrainedModel:
    """The model of ``source`` (a :class:`~lowbit.analysis.config.SourceSpec`) on ``device``, training one if needed.

    ``plugins``: the analysis' modules, recorded in a model trained here (:func:`quick_train`).
    """
    data_dir = data_dir or source.data_dir  # the command line's --data-dir wins over the config
    checkpoint = source.checkpoint
    if checkpoint is None:
        if log:
            log(
                f"no source.checkpoint: training {source.train_config or 'TrainConfig()'} + "
                f"{' '.join(source.train_overrides) or 'no overrides'} into {Path(run_dir) / subdir}"
            )
        checkpoint = quick_train(
            source.train_overrides, Path(run_dir) / subdir, train_config=source.train_config,
            data_dir=data_dir, device=device, progress=progress, log=log, plugins=plugins,
        )  # fmt: skip
    return load_trained(checkpoint, data_dir, device)


def describe(trained: TrainedModel) -> Dict[str, Any]:
    """Plain facts about the model for records and reports."""
    cfg = trained.train_config
    return {
        "checkpoint": str(trained.checkpoint),
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "image_size": cfg.data.image_size,
        "train_seed": cfg.run.seed,
        "num_params": sum(p.numel() for p in trained.model.parameters()),
    }
