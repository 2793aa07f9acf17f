"""Classification losses compared in the notes (CIFAR-10 project, section 1.5).

Every loss takes ``logits`` (N, K) and targets that are either class indices
(N,) int64 or soft targets (N, K) float (mixup). Index targets are turned into
one-hot rows first, then label smoothing ``y' = (1 - eps) * y + eps / K``:

- ``cross_entropy``:  L = -(1/N) sum_n sum_k y'_nk log softmax(z_n)_k
- ``smooth_l1``:      L = (1/(N K)) sum_nk huber_beta(z_nk - y'_nk),
  huber_beta(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta
  (on the raw logits, as ``nn.SmoothL1Loss()(logits, onehot)`` in the notes)
- ``bce``:            L = -(1/(N K)) sum_nk [y' log s(z) + (1 - y') log(1 - s(z))],  s = sigmoid
  (``nn.BCEWithLogitsLoss()(logits, onehot)``)

Register another with ``@register_loss("name")`` on ``factory(cfg) -> fn(logits, targets)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lowbit.registry import Registry
from lowbit.train.config import LossConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = Registry("loss")


def register_loss(name: str):
    return LOSSES.register(name)


def list_losses() -> list[str]:
    return LOSSES.names()


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(N,) indices or (N, K) probabilities -> (N, K) float, label-smoothed."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes).float()
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / num_classes
    return targets


@register_loss("cross_entropy")
def cross_entropy(cfg: LossConfig) -> LossFn:
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # F.cross_entropy takes indices or probabilities and applies the same smoothing formula
        return F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)

    return loss


@register_loss("smooth_l1")
def smooth_l1(cfg: LossConfig) -> LossFn:
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = soft_targets(targets, logits.shape[1], cfg.label_smoothing).to(logits.dtype)
        return F.smooth_l1_loss(logits, y, beta=cfg.smooth_l1_beta)

    return loss


@register_loss("bce")
def bce(cfg: LossConfig) -> LossFn:
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = soft_targets(targets, logits.shape[1], cfg.label_smoothing).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, y)

    return loss


def build_loss(cfg: LossConfig) -> LossFn:
    """The configured loss as ``fn(logits (N, K), targets (N,) or (N, K)) -> scalar``."""
    return LOSSES.get(cfg.name)(cfg)
