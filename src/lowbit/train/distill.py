"""Distillation: a frozen teacher's outputs (and feature maps) as extra targets for the student.

A ``distill:`` section of a training config names the teacher and the losses.
With z_s, z_t the student and teacher logits on the same (augmented) batch,
L_task the run's own loss (``loss:``), p = softmax:

    L = (1 - alpha) L_task + alpha L_out + (beta / 2) sum_j L_att^j

- ``loss: kd`` (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network", 2015): L_out = T^2 KL( p(z_t / T) || p(z_s / T) ), T = ``temperature``;
  the T^2 keeps the gradient scale independent of T.
- ``loss: distribution`` (ReActNet's distributional loss; Liu et al., ECCV 2020,
  eq. 6): L_out = -sum_c p_c(z_t) log p_c(z_s), the cross-entropy to the
  teacher's output distribution (T = 1). ReActNet trains with it alone:
  ``alpha: 1``.
- attention transfer (Zagoruyko & Komodakis, "Paying More Attention to
  Attention", ICLR 2017; Real-to-Binary's attention matching, Martinez et al.,
  ICLR 2020, eq. 3): for each pair j of matched layers (``attention_layers`` in
  the student, ``teacher_attention_layers`` in the teacher) with outputs A of
  shape (N, C, H, W), Q = sum_c A_c^2 flattened to (N, H W), and
      L_att^j = mean_n || Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2 ||_2;
  beta = ``attention_weight`` (0: off). Channel counts may differ, H x W must match.

Real-to-Binary's two-stage schedule in one run: the student is built with
binary activations and real weights (``weight_quantizer: none``); from epoch
``binarize_weights_at`` every such binary layer binarises its weights too
(``weight_quantizer`` here), and with ``stage2_teacher: student`` the stage-1
student, frozen at that moment, becomes the teacher (the paper's choice; with
``teacher`` the original teacher stays). Deviation: one learning-rate schedule
spans both stages (the paper restarts it; use ``schedule.name: cyclic`` with
``cycles: 2`` for one cycle per stage).

The teacher is a ``lowbit train`` run directory (``teacher``: its
``config.yaml`` builds the model, ``checkpoints/last.pt`` holds the weights;
a glob such as ``runs/fmnist-float-*`` picks the newest finished run, and the
student's saved config records which), or a zoo model and a checkpoint (``teacher_model`` {name, **create_model
keywords} with ``teacher_checkpoint``). It is frozen, in eval mode (BatchNorm
running statistics), and sees exactly the student's input batch.

Exact resume: the stage is a function of the epoch, and the checkpoint carries
the stage-1 snapshot when it is the teacher (``distill`` entry), so a resumed
run equals an uninterrupted one. ``metrics.csv`` gains ``distill/stage``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a `lowbit train` run directory (config.yaml + checkpoints/last.pt)
    teacher_model: Optional[Dict[str, Any]] = None  # or a zoo model {name: ..., **create_model keywords} ...
    teacher_checkpoint: Optional[str] = None  # ... with its weights (a run's last.pt, or a bare state dict)
    loss: Literal["kd", "distribution"] = "kd"  # the output term: Hinton's KD or ReActNet's distributional loss
    alpha: float = 0.9  # weight of the output term; 1 - alpha weighs the run's own loss (ReActNet: 1)
    temperature: float = 4.0  # kd: softmax temperature T (Hinton: 2-20; 4 is common for CIFAR-size nets)
    attention_weight: float = 0.0  # beta of attention transfer (Zagoruyko & Komodakis: 1000); 0: off
    attention_layers: List[str] = field(default_factory=list)  # student module names whose outputs are matched
    teacher_attention_layers: List[str] = field(default_factory=list)  # the teacher's; []: the same names
    binarize_weights_at: Optional[float] = None  # epoch where Real-to-Binary's stage 2 starts; None: one stage
    weight_quantizer: Any = "ste_clipped"  # stage 2: the weight quantizer spec of the binarised layers
    stage2_teacher: Literal["student", "teacher"] = "student"  # stage 2's teacher: the stage-1 student, or as is

    def __post_init__(self) -> None:
        errors = []
        by_run, by_model = self.teacher is not None, self.teacher_model is not None or self.teacher_checkpoint is not None
        if by_run == by_model:
            errors.append(
                "distill needs one teacher: distill.teacher=RUN_DIR, or distill.teacher_model={name: ...} with "
                "distill.teacher_checkpoint=PATH"
            )
        elif by_model and (self.teacher_model is None or self.teacher_checkpoint is None):
            errors.append("distill.teacher_model and distill.teacher_checkpoint go together")
        if self.teacher_model is not None and not isinstance(self.teacher_model.get("name"), str):
            errors.append(f"distill.teacher_model needs a 'name' (a zoo model), got {self.teacher_model!r}")
        if not 0.0 <= self.alpha <= 1.0:
            errors.append(f"distill.alpha must be in [0, 1], got {self.alpha}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            errors.append(f"distill.temperature must be > 0, got {self.temperature}")
        if self.attention_weight < 0:
            errors.append(f"distill.attention_weight must be >= 0, got {self.attention_weight}")
        if self.attention_weight > 0 and not self.attention_layers:
            errors.append("distill.attention_weight > 0 needs distill.attention_layers (student module names)")
        if self.teacher_attention_layers and len(self.teacher_attention_layers) != len(self.attention_layers):
            errors.append(
                f"distill.teacher_attention_layers has {len(self.teacher_attention_layers)} names, "
                f"attention_layers {len(self.attention_layers)}: they are matched pairwise"
            )
        if self.binarize_weights_at is not None and self.binarize_weights_at <= 0:
            errors.append(f"distill.binarize_weights_at must be an epoch > 0 or null, got {self.binarize_weights_at}")
        if errors:
            raise ValueError("; ".join(errors))


# --- the losses (pure functions) ---------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(z_t / T) || softmax(z_s / T)), mean over the batch; logits (N, K)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """-sum_c softmax(z_t)_c log softmax(z_s)_c, mean over the batch (ReActNet's distributional loss)."""
    return -(F.softmax(teacher_logits, dim=1) * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Q = sum_c A_c^2, flattened and L2-normalised per example: (N, C, H, W) -> (N, H W)."""
    q = features.to(torch.promote_types(features.dtype, torch.float32)).pow(2).sum(dim=1).flatten(1)  # (N, H W)
    return F.normalize(q, p=2, dim=1)


def attention_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """mean_n || Q_s / ||Q_s|| - Q_t / ||Q_t|| ||_2 for one pair of layers."""
    return (attention_map(student_features) - attention_map(teacher_features)).norm(p=2, dim=1).mean()


# --- the teacher ---------------------------------------------------------------------------


def _checkpoint_weights(path: Path, what: str) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint at {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{what}: {str(path)!r} holds no state dict")
    return weights


def _load_strict(model: nn.Module, weights: Dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what}: the checkpoint does not fit the teacher model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shapes {wrong[:5]}); is it the same architecture and options?"
        )
    model.load_state_dict(weights)


def resolve_teacher(config: DistillConfig) -> DistillConfig:
    """``config`` with a glob in ``teacher`` (``runs/fmnist-float-*``) replaced by the newest finished run it matches.

    "Finished": the run's ``checkpoints/last.pt`` says ``complete``. Newest: the
    last in name order (run directories end in their start time). The concrete
    path is what the student's ``config.yaml`` saves, so a resume uses the same teacher.
    """
    import dataclasses
    import glob

    if config.teacher is None or not glob.has_magic(config.teacher):
        return config
    from lowbit.train.checkpoint import load_checkpoint

    finished = []
    for path in sorted(glob.glob(config.teacher)):
        checkpoint = Path(path) / "checkpoints" / "last.pt"
        if (Path(path) / "config.yaml").is_file() and checkpoint.is_file() and load_checkpoint(checkpoint).get("complete"):
            finished.append(path)
    if not finished:
        raise FileNotFoundError(
            f"distill.teacher={config.teacher!r} matches no finished `lowbit train` run (relative to the working "
            "directory); train the teacher first, or give its run directory"
        )
    return dataclasses.replace(config, teacher=finished[-1])


def build_teacher(config: DistillConfig, num_classes: int, in_channels: int, dataset: str) -> Tuple[nn.Module, str]:
    """The frozen teacher and a description of where it came from; raises on a missing or foreign source."""
    from lowbit.config import load_config
    from lowbit.models import create_model

    if config.teacher is not None:
        from lowbit.train.config import TrainConfig

        run = Path(config.teacher)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(
                f"distill.teacher={config.teacher!r}: no config.yaml there; give a `lowbit train` run directory "
                "(e.g. the float run of the same data), or distill.teacher_model + distill.teacher_checkpoint"
            )
        teacher_config = load_config(TrainConfig, run / "config.yaml")
        if teacher_config.data.dataset != dataset:
            raise ValueError(
                f"distill.teacher={config.teacher!r} was trained on {teacher_config.data.dataset!r}, the student "
                f"on {dataset!r}: a teacher must know the same classes"
            )
        teacher = create_model(
            teacher_config.model.name, num_classes=num_classes, in_channels=in_channels,
            **teacher_config.model.create_kwargs(),
        )
        if teacher_config.quant:
            from lowbit.nn import apply_quant_config

            teacher = apply_quant_config(teacher, teacher_config.quant)
        checkpoint = run / "checkpoints" / "last.pt"
        source = f"run {config.teacher} ({teacher_config.model.name})"
    else:
        spec = dict(config.teacher_model or {})
        name = spec.pop("name")
        teacher = create_model(name, num_classes=num_classes, in_channels=in_channels, **spec)
        checkpoint = Path(str(config.teacher_checkpoint))
        source = f"{name} from {config.teacher_checkpoint}"
    _load_strict(teacher, _checkpoint_weights(checkpoint, "distill teacher"), "distill teacher")
    return freeze(teacher), source


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's ``requires_grad`` off."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --- the distiller the loop calls -------------------------------------------------------------


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: List[str], what: str) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            hint = ", ".join(n for n in list(modules)[1:12])
            raise ValueError(f"distill: {what} has no module {missing} (its modules start: {hint}, ...)")
        self.names = list(names)
        self.outputs: Dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = output

        return hook

    def take(self) -> List[torch.Tensor]:
        out = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _binary_layers_without_weight_quantizer(model: nn.Module) -> List[nn.Module]:
    from lowbit.nn import QuantizedWeightLayer

    return [
        m for m in model.modules()
        if isinstance(m, QuantizedWeightLayer) and m.input_quantizer is not None and m.weight_quantizer is None
    ]


class Distiller:
    """Holds the teacher and the feature hooks; ``loss`` adds the distillation terms to the task loss."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, student: nn.Module, source: str, steps_per_epoch: int):
        self.config, self.teacher, self.source = config, teacher, source
        self.steps_per_epoch = steps_per_epoch
        self.stage = 1
        self.snapshot: Optional[nn.Module] = None  # the stage-1 student, when it is stage 2's teacher
        layers = list(config.attention_layers) if config.attention_weight > 0 else []
        teacher_layers = list(config.teacher_attention_layers) or layers
        self.student_hooks = _Capture(student, layers, "the student")
        self.teacher_hooks = _Capture(teacher, teacher_layers, "the teacher")
        self.stage2_layers = _binary_layers_without_weight_quantizer(student)
        if config.binarize_weights_at is not None:
            from lowbit.nn import make_quantizer

            make_quantizer(config.weight_quantizer)  # a bad spec fails here, before training
            if not self.stage2_layers:
                raise ValueError(
                    "distill.binarize_weights_at: the student has no binary layer with real weights to binarise; "
                    "build it with binary activations and real weights (e.g. model.kwargs.weight_quantizer: none)"
                )

    @property
    def active_teacher(self) -> nn.Module:
        return self.snapshot if self.snapshot is not None else self.teacher

    def check_shapes(self, student: nn.Module, example: torch.Tensor) -> None:
        """One forward of both on ``example`` (eval, no grad): logits and matched maps must agree in shape."""
        modes = {m: m.training for m in student.modules()}
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                student.eval()
                zs, zt = student(example), self.teacher(example)
                fs, ft = self.student_hooks.take(), self.teacher_hooks.take()
        finally:
            for m, mode in modes.items():
                m.training = mode
        if zs.shape != zt.shape:
            raise ValueError(f"distill: teacher logits {tuple(zt.shape)} vs student {tuple(zs.shape)}: not the same classes")
        for (ns, a), (nt, b) in zip(zip(self.student_hooks.names, fs), zip(self.teacher_hooks.names, ft)):
            if a.dim() != 4 or b.dim() != 4 or a.shape[2:] != b.shape[2:]:
                raise ValueError(
                    f"distill: attention maps need (C, H, W) outputs of one size H x W; student {ns!r} gives "
                    f"{tuple(a.shape[1:])}, teacher {nt!r} {tuple(b.shape[1:])}"
                )

    def on_epoch_start(self, epoch: int, student: nn.Module) -> None:
        """Enter stage 2 at epoch ``binarize_weights_at`` (0-based epoch index >= it); idempotent."""
        at = self.config.binarize_weights_at
        if self.stage == 1 and at is not None and epoch >= at:
            self._enter_stage2(student, snapshot=self.config.stage2_teacher == "student")

    def _enter_stage2(self, student: nn.Module, snapshot: bool) -> None:
        from lowbit.nn import fresh_quantizer

        if snapshot and self.snapshot is None:
            # Copy the student without this distiller's hooks (a copied hook would feed the student's capture),
            # then hook the copy, which has the student's own module names.
            names = self.student_hooks.names
            self.student_hooks.remove()
            self.teacher_hooks.remove()
            self.snapshot = freeze(copy.deepcopy(student))
            self.student_hooks = _Capture(student, names, "the student")
            self.teacher_hooks = _Capture(self.snapshot, names, "the stage-1 student")
        for layer in self.stage2_layers:
            layer.weight_quantizer = fresh_quantizer(self.config.weight_quantizer)
        self.stage = 2

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor, task_loss: torch.Tensor) -> torch.Tensor:
        """The total loss of one training step; ``x`` is the batch the student just saw."""
        c = self.config
        with torch.no_grad():
            teacher_logits = self.active_teacher(x).float()  # (B, K)
        student_features = self.student_hooks.take()
        teacher_features = self.teacher_hooks.take()
        if c.loss == "kd":
            out = kd_loss(student_logits, teacher_logits, c.temperature)
        else:
            out = distribution_loss(student_logits, teacher_logits)
        total = (1.0 - c.alpha) * task_loss + c.alpha * out
        if c.attention_weight > 0:
            att = sum(attention_loss(a, b) for a, b in zip(student_features, teacher_features))
            total = total + (c.attention_weight / 2.0) * att
        return total

    def columns(self) -> Dict[str, float]:
        return {"distill/stage": float(self.stage)}

    def state_dict(self) -> Dict[str, Any]:
        """Checkpoint state: the stage, and the stage-1 snapshot's weights when it is the teacher."""
        return {"stage": self.stage, "snapshot": None if self.snapshot is None else self.snapshot.state_dict()}

    def load_state_dict(self, state: Optional[Dict[str, Any]], student: nn.Module) -> None:
        """Restore from a checkpoint, after the student's own weights are loaded."""
        if not state or int(state.get("stage", 1)) == 1:
            return
        snapshot = state.get("snapshot") is not None
        self._enter_stage2(student, snapshot=snapshot)
        if snapshot:
            self.snapshot.load_state_dict(state["snapshot"])


def build_distiller(
    config: Optional[DistillConfig], student: nn.Module, example: torch.Tensor, num_classes: int, dataset: str,
    steps_per_epoch: int,
) -> Optional[Distiller]:
    """The distiller for ``student`` (None without a ``distill:`` section); checks everything before training."""
    if config is None:
        return None
    teacher, source = build_teacher(config, num_classes, example.shape[1], dataset)
    reference = next(student.parameters(), None)
    if reference is not None:
        teacher = teacher.to(reference.device)
    distiller = Distiller(config, teacher, student, source, steps_per_epoch)
    distiller.check_shapes(student, example)
    return distiller


__all__ = [
    "DistillConfig",
    "Distiller",
    "attention_loss",
    "attention_map",
    "build_distiller",
    "build_teacher",
    "distribution_loss",
    "resolve_teacher",
    "kd_loss",
]
