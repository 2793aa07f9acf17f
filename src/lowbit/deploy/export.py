"""Export a trained run: ONNX (the dynamo exporter, checked in onnxruntime) or the packed format.

- :func:`load_run` rebuilds a ``lowbit train`` run's model from its ``config.yaml``
  and ``checkpoints/last.pt`` (the same construction as training: zoo model, then
  the ``quant:`` section) in eval mode, with its test split normalised as the
  training loop evaluates it.
- :func:`export_onnx` writes ``model.onnx`` with ``torch.onnx.export(...,
  dynamo=True)`` and a dynamic batch dimension; :func:`check_onnx` runs it in an
  onnxruntime session on the test data and compares with eager PyTorch.
- :func:`save_packed` / :func:`load_packed`: the packed format, a
  ``torch.save`` dict of plain values and tensors (loads with
  ``weights_only=True``): ``format``, ``version``, the zoo ``model`` spec, input
  ``mean`` / ``std``, and the packed model's ``state_dict`` (binary weights as
  int64 words, everything else as in the source model). Loading rebuilds the zoo
  model, packs it (the structure), then loads the state.

Binary models are exported in their exact eval form (``lowbit.nn.set_exact_eval``):
integer accumulations and one scaling, the same in every backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from lowbit.deploy.pack import PackedModel, pack_model
from lowbit.nn import set_exact_eval

PathLike = Union[str, Path]
PACKED_FORMAT = "lowbit.packed"
PACKED_VERSION = 1
CHECK_BATCH = 256  # test images per forward pass in the checks (memory only)


@dataclass
class RunModel:
    """A trained run's model (eval mode, exact eval form) and its normalised test split."""

    run_dir: Path
    model: nn.Module
    spec: Dict[str, Any]  # {"name", "num_classes", "in_channels", "kwargs", "quant"}: rebuilds the architecture
    inputs: torch.Tensor  # (M, C, H, W) float32, normalised as the training loop evaluates
    labels: torch.Tensor  # (M,) int64
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def load_run(run_dir: PathLike, test_subset: Optional[int] = None) -> RunModel:
    """The model of ``lowbit train`` run ``run_dir`` with its last checkpoint's weights, and its test data."""
    from lowbit.config import load_config
    from lowbit.data import normalize
    from lowbit.train.checkpoint import checkpoint_path, load_checkpoint
    from lowbit.train.config import TrainConfig
    from lowbit.train.loop import build

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no config.yaml: give a `lowbit train` run directory")
    config = load_config(TrainConfig, run_dir / "config.yaml")
    state = load_checkpoint(checkpoint_path(run_dir))
    # The architecture and the data only: no baseline run or init_from checkpoint is needed to export.
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, baseline=None, init_from=None, device="cpu"),
        data=dataclasses.replace(config.data, test_subset=test_subset or config.data.test_subset),
    )
    setup = build(config, torch.device("cpu"))
    model = setup.model
    model.load_state_dict(state["model"])
    model.eval()
    set_exact_eval(model)
    spec = {
        "name": config.model.name,
        "num_classes": setup.num_classes,
        "in_channels": int(setup.test_images.shape[1]),
        "kwargs": config.model.create_kwargs(),
        "quant": dict(config.quant) if config.quant else None,
    }
    inputs = normalize(setup.test_images, setup.mean, setup.std)  # (M, C, H, W)
    return RunModel(run_dir, model, spec, inputs, setup.test_labels, tuple(setup.mean), tuple(setup.std))


def build_from_spec(spec: Dict[str, Any]) -> nn.Module:
    """The untrained architecture a spec names (zoo model, then its ``quant`` section), eval mode."""
    from lowbit.models import create_model

    model = create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], **spec["kwargs"])
    if spec.get("quant"):
        from lowbit.nn import apply_quant_config

        model = apply_quant_config(model, spec["quant"])
    return set_exact_eval(model.eval())


def batches(inputs: torch.Tensor, size: int = CHECK_BATCH) -> Iterator[torch.Tensor]:
    for start in range(0, inputs.shape[0], size):
        yield inputs[start : start + size]


# --- ONNX ------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor, path: PathLike) -> Path:
    """``model`` (eval mode) to ONNX at ``path`` with the dynamo exporter, batch dimension dynamic.

    A packed model is refused (ValueError) before any tracing: its XNOR-popcount custom ops
    have no ONNX translation (``lowbit.deploy.ops``).
    """
    custom_ops = sorted({op for m in model.modules() for op in getattr(m, "custom_ops", ())})
    if custom_ops:
        raise ValueError(
            "custom op lowbit::binary_layer has no ONNX translation; export the float/binary model with "
            f"--format onnx instead\n(the packed model calls {', '.join(custom_ops)}; onnxruntime has no popcount "
            "op; torch.export and torch.compile run the packed model)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))
    return path


@dataclass
class Agreement:
    """How an exported model's outputs compare with eager PyTorch on the same inputs."""

    samples: int
    same_predictions: int  # argmax equal
    max_abs_diff: float  # over all logits
    identical: bool  # every logit bit for bit

    def line(self, name: str) -> str:
        status = "equal" if self.same_predictions == self.samples else "DIFFERENT"
        return (
            f"{name}: predictions {status} on {self.same_predictions}/{self.samples} test images; "
            f"max |logit difference| {self.max_abs_diff:.3g}{' (bit for bit)' if self.identical else ''}"
        )


def compare(reference: List[torch.Tensor], outputs: List[torch.Tensor]) -> Agreement:
    ref, out = torch.cat(reference), torch.cat(outputs)
    return Agreement(
        samples=int(ref.shape[0]),
        same_predictions=int((ref.argmax(1) == out.argmax(1)).sum()),
        max_abs_diff=float((ref - out).abs().max()) if ref.numel() else 0.0,
        identical=bool(torch.equal(ref, out)),
    )


def check_onnx(path: PathLike, model: nn.Module, inputs: torch.Tensor) -> Agreement:
    """Run the ONNX file in onnxruntime on ``inputs`` (in batches) against eager ``model``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    reference, outputs = [], []
    with torch.no_grad():
        for x in batches(inputs):
            reference.append(model(x))
            outputs.append(torch.from_numpy(session.run(None, {name: x.numpy()})[0]))
    return compare(reference, outputs)


# --- the packed format ---------------------------------------------------------------------


def save_packed(path: PathLike, packed: PackedModel, spec: Dict[str, Any], mean: Any = None, std: Any = None) -> Path:
    """Write ``packed`` (made from the zoo model ``spec`` names) in the packed format; see the module docstring."""
    if spec.get("quant"):
        raise ValueError("a model with a quant: section has k-bit layers, which are not packed; export it to ONNX")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": PACKED_FORMAT,
        "version": PACKED_VERSION,
        "model": {k: spec[k] for k in ("name", "num_classes", "in_channels", "kwargs")},
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "state_dict": packed.state_dict(),
    }
    torch.save(payload, path)
    return path


def load_packed(path: PathLike) -> Tuple[PackedModel, Dict[str, Any]]:
    """(packed model, the file's metadata: model spec, mean, std) from a file :func:`save_packed` wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no packed model at {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read {str(path)!r}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != PACKED_FORMAT:
        raise ValueError(f"{str(path)!r} is not a lowbit packed model (no format {PACKED_FORMAT!r})")
    if payload.get("version") != PACKED_VERSION:
        raise ValueError(f"{str(path)!r} is packed format version {payload.get('version')}; this lowbit reads {PACKED_VERSION}")
    spec = dict(payload["model"], quant=None)
    packed = pack_model(build_from_spec(spec))  # the structure; the values come from the file
    packed.load_state_dict(payload["state_dict"])
    return packed, {"model": payload["model"], "mean": payload["mean"], "std": payload["std"]}


def check_packed(packed: PackedModel, model: nn.Module, inputs: torch.Tensor) -> Agreement:
    """The packed model against eager ``model`` (exact eval form) on ``inputs``."""
    reference, outputs = [], []
    with torch.no_grad():
        for x in batches(inputs):
            reference.append(model(x))
            outputs.append(packed(x))
    return compare(reference, outputs)


__all__ = [
    "Agreement",
    "PACKED_FORMAT",
    "RunModel",
    "build_from_spec",
    "check_onnx",
    "check_packed",
    "compare",
    "export_onnx",
    "load_packed",
    "load_run",
    "save_packed",
]
