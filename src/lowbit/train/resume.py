"""What ``train(resume=RUN_DIR)`` continues from: the run's config, checked, and its checkpoint, checked.

The config is ``RUN_DIR/config.yaml``; it must be the config the finished part
of the run was trained with (the checkpoint's ``config``, or, before the first
checkpoint, ``.started-config.yaml``) except for the keys a resume may change,
``data.data_dir``, ``run.device`` and ``run.compile`` (the ``--data-dir``, ``--device``
and ``--compile`` flags; compiling changes the numbers by float rounding only, as a
device does) and the tracking keys (``run.tensorboard``, ``run.trackers``,
``run.log_every``, ``run.mlflow``; they also let a run started before they
existed be resumed). Anything else changed is refused with the changed keys named, unless
``force``. The checkpoint is loaded with ``weights_only=True`` and must hold
finite weights (an older lowbit could save a diverged one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from lowbit.config import load_config
from lowbit.runs import check_resume_config, started_config
from lowbit.train.checkpoint import checkpoint_path, load_checkpoint
from lowbit.train.config import TrainConfig
from lowbit.train.guards import nonfinite_tensor

__all__ = ["CHANGEABLE_ON_RESUME", "load_resume_state"]

# where the run reads its data and runs (and whether torch.compile runs it), and how it is recorded (the
# trackers): not what it computes
CHANGEABLE_ON_RESUME = ("data.data_dir", "run.device", "run.compile", "run.compile_backend", "run.tensorboard",
                        "run.trackers", "run.log_every", "run.mlflow")


# what a resumable checkpoint holds (see lowbit.train.checkpoint), with the types the loop relies on
_STATE_TYPES = {
    "model": dict, "optimizer": dict, "step": int, "epoch": int, "position": int, "epoch_sums": dict,
    "rng": dict, "metrics": list,
}


def check_resume_state(state: Dict[str, Any], path: Path) -> None:
    """Raise ``ValueError`` naming the first entry a resumable checkpoint lacks or holds in the wrong type."""
    import torch

    for key, kind in _STATE_TYPES.items():
        if not isinstance(state.get(key), kind) or (kind is int and isinstance(state.get(key), bool)):
            got = "missing" if key not in state else type(state[key]).__name__
            raise ValueError(
                f"checkpoint {str(path)!r} cannot be resumed: its {key!r} entry is {got}, expected {kind.__name__}; "
                "it was not written by this lowbit's `train` (or was altered); start a new run"
            )
    if state.get("perm") is not None and not isinstance(state["perm"], torch.Tensor):
        raise ValueError(f"checkpoint {str(path)!r} cannot be resumed: its 'perm' entry is not a tensor; start a new run")
    bad = [k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"checkpoint {str(path)!r} cannot be resumed: its weight {bad[0]!r} is not a tensor; start a new run")


def load_resume_state(
    run_dir: Path, data_dir: Optional[str] = None, device: Optional[str] = None, force: bool = False
) -> Tuple[TrainConfig, Optional[Dict[str, Any]]]:
    """``(config, checkpoint state or None)`` of a run to resume; raises on an edited config or a bad checkpoint."""
    config = load_config(TrainConfig, run_dir / "config.yaml")
    path = checkpoint_path(run_dir)
    state = load_checkpoint(path) if path.exists() else None
    if state is not None:
        check_resume_state(state, path)
        bad = nonfinite_tensor(state["model"])
        if bad is not None:
            raise ValueError(
                f"checkpoint {str(path)!r} holds non-finite weights ({bad[0]!r} = {bad[1]}), so it cannot be "
                "continued; start a new run (lower optim.lr or set optim.grad_clip)"
            )
    started = state.get("config") if state is not None and isinstance(state.get("config"), dict) else started_config(run_dir)
    check_resume_config(run_dir, config, started, "train", changeable=CHANGEABLE_ON_RESUME, force=force)
    return config, state
