"""What ``train(resume=RUN_DIR)`` continues from: the run's config, checked, and its checkpoint, checked.

The config is ``RUN_DIR/config.yaml``; it must be the config the finished part
of the run was trained with (the checkpoint's ``config``, or, before the first
checkpoint, ``.started-config.yaml``) except for the keys a resume may change,
``data.data_dir`` and ``run.device`` (the ``--data-dir`` and ``--device``
flags). Anything else changed is refused with the changed keys named, unless
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

CHANGEABLE_ON_RESUME = ("data.data_dir", "run.device")


def load_resume_state(
    run_dir: Path, data_dir: Optional[str] = None, device: Optional[str] = None, force: bool = False
) -> Tuple[TrainConfig, Optional[Dict[str, Any]]]:
    """``(config, checkpoint state or None)`` of a run to resume; raises on an edited config or a bad checkpoint."""
    config = load_config(TrainConfig, run_dir / "config.yaml")
    path = checkpoint_path(run_dir)
    state = load_checkpoint(path) if path.exists() else None
    if state is not None:
        bad = nonfinite_tensor(state["model"])
        if bad is not None:
            raise ValueError(
                f"checkpoint {str(path)!r} holds non-finite weights ({bad[0]!r} = {bad[1]}), so it cannot be "
                "continued; start a new run (lower optim.lr or set optim.grad_clip)"
            )
    started = state.get("config") if state is not None and isinstance(state.get("config"), dict) else started_config(run_dir)
    check_resume_config(run_dir, config, started, "train", changeable=CHANGEABLE_ON_RESUME, force=force)
    return config, state
