"""Checkpoints that resume a run exactly, mid-epoch included.

A checkpoint (``RUN_DIR/checkpoints/last.pt``) is a dict of tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``:

- ``model``, ``optimizer``: state dicts,
- ``step``: optimizer steps taken (the schedule is a function of it),
- ``epoch``, ``position``: the epoch being trained (0-based) and the next batch in it,
- ``perm``: that epoch's data order (N,) int64, drawn before the checkpoint,
- ``epoch_sums``: the running training sums of the unfinished epoch,
- ``rng``: every random state the run uses, as tensors (data order and augmentation
  generators, torch's global CPU and CUDA generators, Python's ``random``, numpy's),
- ``metrics``: the per-epoch records so far (metrics.csv is rewritten from them on resume),
- ``complete``: whether training finished; ``num_params``; ``config`` (plain types),
- ``quantizer_schedules``: per gradient quantizer of a low-bit run, the clip schedule
  (``clip_interval``: backward passes seen, last clip fraction), which is not in the state dict.

It is written through a temporary file and a rename (``atomic_torch_save``),
so an interrupt during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from lowbit.runs import atomic_torch_save

FORMAT = 1  # bump when the layout changes; load_checkpoint rejects other formats

PathLike = Union[str, Path]


def checkpoint_path(run_dir: PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def capture_rng(generators: Dict[str, torch.Generator]) -> Dict[str, torch.Tensor]:
    """Every random state as a tensor: the given generators, torch, CUDA, random, numpy."""
    state: Dict[str, torch.Tensor] = {f"gen.{name}": g.get_state() for name, g in generators.items()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    version, mt, gauss = random.getstate()  # (3, 625 ints < 2**32, None | float)
    state["python"] = torch.tensor(mt, dtype=torch.int64)
    state["python_version"] = torch.tensor(version)
    state["python_gauss"] = torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64)
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # ('MT19937', (624,) uint32, ...)
    state["numpy"] = torch.from_numpy(keys.astype(np.int64))
    state["numpy_extra"] = torch.tensor([pos, has_gauss, cached], dtype=torch.float64)
    return state


def restore_rng(state: Dict[str, torch.Tensor], generators: Dict[str, torch.Generator]) -> None:
    """Inverse of ``capture_rng``."""
    for name, g in generators.items():
        g.set_state(state[f"gen.{name}"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    gauss = float(state["python_gauss"][0])
    random.setstate(
        (int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()), None if gauss != gauss else gauss)
    )
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Atomically save ``state`` (plus the format number) to ``path``."""
    atomic_torch_save({"format": FORMAT, **state}, path)


def _torch_load(path: Path, what: str, map_location: Optional[Union[str, torch.device]] = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values only; nothing in the file is executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{what}: cannot read {str(path)!r} as a PyTorch checkpoint of tensors ({type(error).__name__}: {first}); "
            "it is corrupt, truncated or holds objects other than tensors (which are never unpickled)"
        ) from error


def load_checkpoint(path: PathLike, map_location: Optional[Union[str, torch.device]] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    state = _torch_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"{str(path)!r} is not a lowbit training checkpoint (no 'model' state dict)")
    if state.get("format", FORMAT) != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} has format {state.get('format')}, this lowbit reads {FORMAT}")
    return state


def first_mismatch(own: Dict[str, torch.Tensor], weights: Dict[str, Any]) -> Optional[str]:
    """The first tensor that differs between a model's state dict and a checkpoint's, in words."""
    for name, tensor in own.items():
        if name not in weights:
            return f"{name!r} {tuple(tensor.shape)} of the model is not in the checkpoint"
        other = weights[name]
        if not isinstance(other, torch.Tensor):
            return f"{name!r} is a {type(other).__name__} in the checkpoint, not a tensor"
        if tuple(other.shape) != tuple(tensor.shape):
            return f"{name!r} is {tuple(other.shape)} in the checkpoint but {tuple(tensor.shape)} in the model"
    extra = [k for k in weights if k not in own]
    if extra:
        return f"{extra[0]!r} {tuple(getattr(weights[extra[0]], 'shape', ()))} of the checkpoint is not in the model"
    return None


def load_model_state(model: torch.nn.Module, weights: Dict[str, Any], path: PathLike) -> None:
    """``model.load_state_dict(weights)``, or a one-line error naming the first tensor that does not fit."""
    problem = first_mismatch(model.state_dict(), weights)
    if problem is not None:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the model: {problem}; was config.yaml (model, data or quant) "
            "changed since the checkpoint was written?"
        )
    model.load_state_dict(weights)


def load_matching_weights(model: torch.nn.Module, path: PathLike) -> Dict[str, list]:
    """Copy the tensors of checkpoint ``path`` whose name and shape match ``model`` (``run.init_from``).

    Mismatches (e.g. a CIFAR-100 head when fine-tuning on CIFAR-10) are skipped
    and returned as ``{"loaded": [...], "skipped": [...], "missing": [...]}``.
    Accepts a training checkpoint or a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run.init_from: no checkpoint at {str(path)!r}")
    state = _torch_load(path, "run.init_from")
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"run.init_from: {str(path)!r} holds no state dict (a mapping of names to tensors)")
    own = model.state_dict()
    loaded = [k for k, v in weights.items() if k in own and tuple(own[k].shape) == tuple(v.shape)]
    skipped = [k for k in weights if k not in loaded]
    if not loaded:
        raise ValueError(
            f"run.init_from: no tensor of {str(path)!r} matches the model (first difference: "
            f"{first_mismatch(own, weights)}); is it the same architecture?"
        )
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(weights[k])
    return {"loaded": loaded, "skipped": skipped, "missing": [k for k in own if k not in loaded]}
