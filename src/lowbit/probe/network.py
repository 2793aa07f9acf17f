"""Probing real networks: a zoo model on a fixed batch of real images.

The notes of 2021-05-17 and 2021-06-16 move the gradient study from the toy
to real networks: CDG on a thin XNOR-ResNet-18 (first width 8 or 16), STE
variants and windows compared with it per layer, at initialisation and on a
pretrained model. A :class:`NetworkTask` provides what the probe runner needs:

- the model: ``create_model(name, **kwargs)`` at seed ``seed`` (optionally
  pretrained here for ``pretrain_epochs`` with Adam), or the weights of a
  ``lowbit train`` run directory (its config rebuilds the same model,
  quantization included, and fixes the data set and image size);
- the data: the split's images, normalised as in training
  (``(x/255 − mean)/std`` with the train split's statistics), in a seeded
  order; batch b is images ``[b·B, (b+1)·B)`` of that order. Digits are 8×8:
  ``image_size: 32`` (the default) **upsamples** them bilinearly to the 32×32
  input the CIFAR models are built for (``lowbit.data.resize_images``);
  ``image_size: null`` keeps 8×8 (the zoo's ResNets are fully convolutional,
  16× cheaper);
- ``objective(layer, batch)``: a :class:`~lowbit.estimators.GraphObjective`
  for that layer's weight: the mean cross-entropy on the batch with
  BatchNorm normalising by batch statistics (``use_batch_statistics``), i.e.
  the loss a training step on that batch differentiates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.estimators.layers import probe_layers, studied_weight


@dataclass
class NetworkConfig:
    """A zoo model on real images (set ``network:`` in a probe config to probe it instead of the toy)."""

    # Zoo name plus create_model keywords; the notes' thin XNOR-ResNet-18 (first width 8 or 16).
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "xnor_resnet18", "width": 8})
    dataset: str = "digits"  # digits (ships with scikit-learn) | mnist | cifar10 | cifar100 (local archives)
    data_dir: Optional[str] = None  # folder with the archives; None: $LOWBIT_DATA, else ./data
    split: str = "train"  # the images the measured batches come from
    image_size: Optional[int] = 32  # pixels; digits 8x8 upsampled to the models' 32x32 input; null: native
    batch_size: int = 256  # images per measured batch (the fixed batch the loss is computed on)
    # A `lowbit train` run directory (or its checkpoints/last.pt): probe its trained weights. Its config
    # fixes the model, quantization, data set and image size (the keys above are then ignored).
    checkpoint: Optional[str] = None
    pretrain_epochs: int = 0  # >0: train here first (Adam, batch statistics), "after pretraining" in the notes
    pretrain_lr: float = 3e-3  # Adam step size, as configs/train-digits-xnor.yaml
    pretrain_batch_size: int = 64
    prune_unchanged: bool = True  # GraphObjective's exact early exit; false only to check it

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.model, dict) or not isinstance(self.model.get("name"), str):
            errors.append(f"network.model must be a mapping with a 'name' key (a zoo model), got {self.model!r}")
        for name in ("batch_size", "pretrain_batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"network.{name} must be >= 1, got {getattr(self, name)}")
        if self.pretrain_epochs < 0:
            errors.append(f"network.pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.pretrain_lr <= 0:
            errors.append(f"network.pretrain_lr must be > 0, got {self.pretrain_lr}")
        if self.image_size is not None and self.image_size < 1:
            errors.append(f"network.image_size must be >= 1 or null, got {self.image_size}")
        if self.split not in ("train", "test"):
            errors.append(f"network.split must be 'train' or 'test', got {self.split!r}")
        if self.checkpoint is not None and self.pretrain_epochs:
            errors.append("network.checkpoint and network.pretrain_epochs exclude each other: set one of them")
        if errors:
            raise ValueError("; ".join(errors))


def _resolve_checkpoint(path: str) -> Tuple[Path, Optional[Path]]:
    """(checkpoint file, run directory or None) for a run directory or a .pt file."""
    p = Path(path)
    if p.is_dir():
        candidate = p / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise FileNotFoundError(f"network.checkpoint: {str(p)!r} has no checkpoints/last.pt; is it a `lowbit train` run directory?")
        return candidate, p
    if not p.is_file():
        raise FileNotFoundError(f"network.checkpoint: no run directory or checkpoint file at {str(p)!r}")
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, run_dir


class NetworkTask:
    """A zoo model and a data split, ready to hand out per-layer objectives (module docstring)."""

    def __init__(self, config: NetworkConfig, seed: int = 0, check_only: bool = False, device: Any = "cpu") -> None:
        from lowbit.data import load_dataset
        from lowbit.models import create_model

        self.config = config
        self.seed = seed
        self.device = torch.device(device)  # the model and the images; every objective's batch lives here
        model_spec = dict(config.model)
        dataset, data_dir, image_size = config.dataset, config.data_dir, config.image_size
        quant = None
        state = None
        if config.checkpoint is not None:
            from lowbit.config import load_config
            from lowbit.train.checkpoint import load_checkpoint
            from lowbit.train.config import TrainConfig

            path, run_dir = _resolve_checkpoint(config.checkpoint)
            if run_dir is None or not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(
                    f"network.checkpoint: {str(path)!r} is not inside a `lowbit train` run directory with a config.yaml "
                    "(the config rebuilds the model); give the run directory"
                )
            train_config = load_config(TrainConfig, run_dir / "config.yaml")
            model_spec = {"name": train_config.model.name, **train_config.model.create_kwargs()}
            dataset, image_size = train_config.data.dataset, train_config.data.image_size
            data_dir = config.data_dir or train_config.data.data_dir
            quant = train_config.quant
            state = None if check_only else load_checkpoint(path)["model"]
        self.model_spec = model_spec
        self.dataset = dataset
        data = load_dataset(dataset, config.split, data_dir=data_dir, image_size=image_size)
        self.data = data
        name = model_spec.pop("name")
        kwargs = model_spec
        torch.manual_seed(seed)  # the initial weights
        self.model = create_model(name, num_classes=data.num_classes, in_channels=data.in_channels, **kwargs)
        self.model_spec = {"name": name, **kwargs}
        if quant:
            from lowbit.nn import apply_quant_config

            self.model = apply_quant_config(self.model, quant)
        if state is not None:
            self.model.load_state_dict(state)
        self.model.to(self.device)
        from lowbit.data import normalize

        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        self.images = normalize(data.images[order], data.mean, data.std).to(self.device)  # (N, C, H, W) float32
        self.labels = data.labels[order].to(self.device)
        self.pretrain_log: List[Dict[str, float]] = []
        if config.pretrain_epochs and not check_only:
            self.pretrain()
        from lowbit.estimators import use_batch_statistics

        use_batch_statistics(self.model)
        self.model.eval()  # dropout off; BatchNorm normalises by batch statistics (no buffers)
        for p in self.model.parameters():
            p.requires_grad_(True)

    @property
    def num_batches(self) -> int:
        return len(self.labels) // self.config.batch_size

    def batch(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Measured batch ``index``: images ``[index·B, (index+1)·B)`` of the seeded order."""
        b = self.config.batch_size
        if not 0 <= index < self.num_batches:
            raise ValueError(
                f"batch {index} does not exist: the {self.config.split} split has {len(self.labels)} images, "
                f"{self.num_batches} batches of network.batch_size={b}; lower probe.batches or the batch size"
            )
        return self.images[index * b : (index + 1) * b], self.labels[index * b : (index + 1) * b]

    def objective(self, layer: str, batch: int = 0):
        """A GraphObjective for ``layer``'s weight on measured batch ``batch`` (mean cross-entropy)."""
        from lowbit.estimators import GraphObjective

        name = studied_weight(self.model, layer)
        return GraphObjective(
            self.model, self.batch(batch), loss_fn=F.cross_entropy, params=[name], prune_unchanged=self.config.prune_unchanged
        )

    def accuracy(self, batch: int = 0) -> float:
        x, y = self.batch(batch)
        with torch.no_grad():
            return float((self.model(x).argmax(1) == y).double().mean())

    def pretrain(self) -> None:
        """``pretrain_epochs`` of Adam on the split (batch statistics in BatchNorm), seeded by ``seed``."""
        from tqdm.auto import tqdm

        c = self.config
        model = self.model
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=c.pretrain_lr)
        generator = torch.Generator().manual_seed(self.seed + 7919)  # a stream of its own
        n = len(self.labels)
        steps = max(1, n // c.pretrain_batch_size)
        for epoch in tqdm(range(c.pretrain_epochs), desc="pretrain", unit="epoch", leave=False):
            order = torch.randperm(n, generator=generator)
            total, correct = 0.0, 0
            for step in range(steps):
                idx = order[step * c.pretrain_batch_size : (step + 1) * c.pretrain_batch_size]
                logits = model(self.images[idx])
                loss = F.cross_entropy(logits, self.labels[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"pretraining loss is {float(loss)} at epoch {epoch} step {step}: lower network.pretrain_lr "
                        f"(now {c.pretrain_lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == self.labels[idx]).sum())
            seen = steps * c.pretrain_batch_size
            self.pretrain_log.append({"epoch": epoch, "loss": total / seen, "accuracy": correct / seen})


__all__ = ["NetworkConfig", "NetworkTask", "probe_layers", "studied_weight"]
