"""``lowbit analyze bn-smoothness``: VGG with and without BatchNorm, probed while it trains.

Reproduces Figure 4 of Santurkar et al., "How Does Batch Normalization Help
Optimization?", NeurIPS 2018, and the simpler variant of the research notes
(section 2.2). Two experiments, both written as flat records:

1. **Probed training** (``bn_probes.csv``, ``bn_train.csv``). ``vgg_a(bn=False)``
   and ``vgg_a(bn=True)`` are built from the same seed (BatchNorm layers draw
   no random numbers, so every conv/linear weight starts identical), trained
   in lock-step on the *same* batches with the same optimizer and constant lr.
   Every ``probe.every`` steps, before the step, each model is probed along its
   gradient on that step's batch (:func:`~lowbit.analysis.smoothness.probe_gradient_direction`):
   loss L(w − ηg), gradient change ‖∇L(w − ηg) − ∇L(w)‖ and their ratio to the
   distance moved, for η ∈ ``probe.eta_range`` × lr.
2. **Loss band across learning rates** (``bn_lr_band.csv``). For each lr in
   ``lr_band.lrs`` both models are trained separately (same init, same batch
   order, Adam by default as in the notes); the per-step training loss band
   (min, max over the lrs) shows how sensitive each model is to the lr. Each
   row also holds ‖g_t − g_{t−1}‖, the notes' consecutive-step gradient change
   (section 2.3), which mixes in batch-to-batch noise.

The training loop is deliberately a plain one here (no dependence on
``lowbit.train``'s internals): constant lr, cross-entropy, no augmentation,
inputs normalised with the training set's per-channel mean/std. A model whose
loss becomes NaN/Inf stops (recorded in ``bn_final.csv`` as ``diverged_step``);
the other goes on.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.analysis.config import BNModelSpec, BNSmoothnessConfig
from lowbit.analysis.smoothness import probe_gradient_direction, step_sizes
from lowbit.runs import RecordWriter

__all__ = ["PROBES_FILE", "TRAIN_FILE", "LR_BAND_FILE", "FINAL_FILE", "build_bn_model", "batch_indices", "run_bn_smoothness"]

PROBES_FILE = "bn_probes.csv"
TRAIN_FILE = "bn_train.csv"
LR_BAND_FILE = "bn_lr_band.csv"
FINAL_FILE = "bn_final.csv"


def build_bn_model(spec: BNModelSpec, bn: bool, num_classes: int, in_channels: int, seed: int) -> nn.Module:
    """The zoo model ``spec.name`` with ``bn=bn``, its weights drawn after ``torch.manual_seed(seed)``.

    ``width_mult != 1`` builds VGG-A with every conv's channels scaled (at least 1);
    the 512-unit hidden classifier of the zoo's VGG-A is kept. ``init="kaiming"``
    re-initialises as torchvision's VGG does: conv weights Kaiming-normal
    (fan_out, ReLU gain), linear weights N(0, 0.01²), biases 0; BatchNorm layers
    keep weight 1, bias 0. BatchNorm draws no random numbers, so the models
    with and without BN get identical conv/linear weights from the same seed.
    """
    from lowbit.models import VGG, create_model

    torch.manual_seed(seed)
    if spec.name == "vgg_a" and spec.width_mult != 1.0:
        from lowbit.models.vgg import VGG_A_CONFIG

        channels = [c if c == "M" else max(1, round(c * spec.width_mult)) for c in VGG_A_CONFIG]
        model = VGG(num_classes, in_channels, bn=bn, config=channels)
    else:
        model = create_model(spec.name, num_classes=num_classes, in_channels=in_channels, bn=bn, **spec.kwargs)
    if spec.init == "kaiming":
        _kaiming_init(model)
    return model


def _kaiming_init(model: nn.Module) -> None:
    """torchvision's VGG initialisation (``torchvision.models.vgg.VGG.__init__``)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def batch_indices(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of indices: a fresh seeded permutation per epoch, the last partial batch dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)  # a set smaller than one batch is one (short) batch
    while True:
        perm = torch.randperm(n, generator=gen)  # (n,)
        for i in range(per_epoch):
            yield perm[i * batch_size : (i + 1) * batch_size]


def _optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")


def _label(bn: bool) -> str:
    return "BN" if bn else "no BN"


class _Data:
    """Training images (uint8, in memory) and their normalisation; batches come out as float."""

    def __init__(self, config: BNSmoothnessConfig, data_dir: Optional[str], device: torch.device):
        from lowbit.data import load_dataset

        d = config.data
        where = data_dir or d.data_dir  # the command line's --data-dir wins over the config
        self.train = load_dataset(d.dataset, "train", data_dir=where, image_size=d.image_size)
        if d.train_subset is not None:
            self.train = self.train.subset(slice(0, d.train_subset))
        self.test = load_dataset(d.dataset, "test", data_dir=where, image_size=d.image_size)
        self.device = device

    def batch(self, idx: torch.Tensor, split: str = "train"):
        from lowbit.data import normalize

        ds = self.train if split == "train" else self.test
        x = normalize(ds.images[idx].to(self.device), self.train.mean, self.train.std)  # (B, C, H, W)
        return x, ds.labels[idx].to(self.device)  # (B,)


@torch.no_grad()
def _evaluate(model: nn.Module, data: _Data, batch_size: int = 500) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, n = 0.0, 0, len(data.test)
    for start in range(0, n, batch_size):
        x, y = data.batch(torch.arange(start, min(n, start + batch_size)), "test")
        logits = model(x)  # (B, K)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return loss_sum / n, correct / n


def run_bn_smoothness(
    config: BNSmoothnessConfig,
    run_dir: Path,
    *,
    data_dir: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Run both experiments of the module docstring, writing the four CSV files into ``run_dir``.

    Returns ``{"seconds_probe": ..., "seconds_lr_band": ...}``.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    device = torch.device(config.device)
    data = _Data(config, data_dir, device)
    num_classes, in_channels = data.train.num_classes, data.train.in_channels
    t = config.train
    etas = step_sizes(t.lr, config.probe.eta_range, config.probe.num_steps, config.probe.spacing)
    probes, train_rows, final = RecordWriter(run_dir / PROBES_FILE), RecordWriter(run_dir / TRAIN_FILE), RecordWriter(run_dir / FINAL_FILE)

    # ---- 1. probed training, both models in lock-step on the same batches
    start = time.perf_counter()
    models = {bn: build_bn_model(config.model, bn, num_classes, in_channels, config.seed).to(device) for bn in (False, True)}
    if log:
        n_params = {bn: sum(p.numel() for p in m.parameters()) for bn, m in models.items()}
        log(
            f"{config.model.name} x{config.model.width_mult} ({n_params[False]:,} / {n_params[True]:,} parameters without / with BN) on "
            f"{config.data.dataset} ({len(data.train)} images): {t.steps} steps, probing every {config.probe.every} "
            f"at eta = {', '.join(f'{e:.3g}' for e in etas)}"
        )
    opts = {bn: _optimizer(t.optimizer, m.parameters(), t.lr, t.momentum, t.weight_decay) for bn, m in models.items()}
    diverged: Dict[bool, Optional[int]] = {False: None, True: None}
    seconds = {False: 0.0, True: 0.0}
    batches = batch_indices(len(data.train), config.data.batch_size, config.seed)
    for step in tqdm(range(t.steps), desc="bn-smoothness: probed training", disable=not progress, leave=False):
        x, y = data.batch(next(batches))
        for bn, model in models.items():
            if diverged[bn] is not None:
                continue
            tick = time.perf_counter()
            if step % config.probe.every == 0:
                probe = probe_gradient_direction(model, x, y, F.cross_entropy, etas, seed=config.seed + step)
                probes.write_many(
                    {"bn": bn, "model": _label(bn), "step": step, "lr": t.lr, "eta_mult": eta_mult, **r}
                    for eta_mult, r in zip((e / t.lr for e in etas), probe.records())
                )
            model.train()
            opts[bn].zero_grad(set_to_none=True)
            logits = model(x)  # (B, K)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss.detach()):
                diverged[bn] = step
                if log:
                    log(f"{_label(bn)}: loss {float(loss.detach())} at step {step}; this model stops here")
                continue
            loss.backward()
            grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
            opts[bn].step()
            seconds[bn] += time.perf_counter() - tick
            train_rows.write(
                {
                    "bn": bn,
                    "model": _label(bn),
                    "step": step,
                    "lr": t.lr,
                    "loss": float(loss.detach()),
                    "acc": float((logits.argmax(1) == y).float().mean()),
                    "grad_norm": grad_norm,
                }
            )
    for bn, model in models.items():
        test_loss, test_acc = _evaluate(model, data) if diverged[bn] is None else (math.nan, math.nan)
        final.write(
            {
                "bn": bn,
                "model": _label(bn),
                "optimizer": t.optimizer,
                "lr": t.lr,
                "steps": t.steps,
                "diverged_step": diverged[bn],
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds[bn],
                "num_params": sum(p.numel() for p in model.parameters()),
            }
        )
        if log:
            log(f"{_label(bn)}: test accuracy {test_acc:.4f}, {seconds[bn]:.0f} s (training + probes)")
    seconds_probe = time.perf_counter() - start
    del models, opts

    # ---- 2. per-step training loss band across separately trained learning rates
    start = time.perf_counter()
    band = RecordWriter(run_dir / LR_BAND_FILE)
    b = config.lr_band
    runs = [(lr, bn) for lr in b.lrs for bn in (False, True)]
    bar = tqdm(total=len(runs) * b.steps, desc="bn-smoothness: lr band", disable=not progress or not runs, leave=False)
    for lr, bn in runs:
        model = build_bn_model(config.model, bn, num_classes, in_channels, config.seed).to(device)
        opt = _optimizer(b.optimizer, model.parameters(), lr, b.momentum, t.weight_decay)
        batches = batch_indices(len(data.train), config.data.batch_size, config.seed)
        previous: Optional[List[torch.Tensor]] = None
        rows: List[Dict[str, Any]] = []
        for step in range(b.steps):
            x, y = data.batch(next(batches))
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                rows.append({"bn": bn, "model": _label(bn), "lr": lr, "step": step, "loss": float(loss.detach()), "grad_change": math.nan})
                bar.update(b.steps - step)
                break
            loss.backward()
            grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            change = (
                math.sqrt(sum(float((g - h).double().pow(2).sum()) for g, h in zip(grads, previous)))
                if previous is not None
                else math.nan
            )
            previous = grads
            opt.step()
            rows.append({"bn": bn, "model": _label(bn), "lr": lr, "step": step, "loss": float(loss.detach()), "grad_change": change})
            bar.update(1)
        band.write_many(rows)
    bar.close()
    seconds_lr_band = time.perf_counter() - start
    return {"seconds_probe": seconds_probe, "seconds_lr_band": seconds_lr_band}
