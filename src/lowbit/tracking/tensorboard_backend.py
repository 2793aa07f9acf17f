"""The ``tensorboard`` tracker: event files in ``RUN_DIR/tensorboard/`` (``tensorboard --logdir runs``).

Scalars go to ``SummaryWriter.add_scalar`` under their own names. The run's
parameters and final numbers become one row of TensorBoard's HParams
dashboard, written into the run's own event directory (torch's
``add_hparams`` would make a second, time-stamped run beside it): the
parameters as given to ``log_params`` plus ``status`` (complete, stopped,
interrupted, ...), the metrics as given to ``log_summary``, each also written
as a scalar so the dashboard finds its value.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from lowbit.tracking.base import TrackingContext, register_tracker


@register_tracker("tensorboard")
class TensorBoardTracker:
    """TensorBoard event files of one run (``torch.utils.tensorboard``; needs the ``tensorboard`` package)."""

    @staticmethod
    def missing() -> Optional[str]:
        try:
            import torch.utils.tensorboard  # noqa: F401 - raises when the tensorboard package is missing
        except Exception:  # noqa: BLE001 - ImportError, or a tensorboard too old for this torch
            return "torch.utils.tensorboard does not import here: pip install tensorboard (the lowbit[tensorboard] extra)"
        return None

    def __init__(self, context: TrackingContext):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = context.run_dir / "tensorboard"
        self.writer = SummaryWriter(str(self.log_dir))
        self.params: Dict[str, Any] = {}
        self.summary: Dict[str, float] = {}
        self.last_step = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.last_step = max(self.last_step, step)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self.summary.update(metrics)

    def close(self, status: str = "complete") -> None:
        from torch.utils.tensorboard.summary import hparams

        try:
            if self.params or self.summary:
                experiment, start, end = hparams({**self.params, "status": status}, dict(self.summary))
                for summary in (experiment, start, end):
                    self.writer.file_writer.add_summary(summary, self.last_step)
                for tag, value in self.summary.items():
                    self.writer.add_scalar(tag, value, self.last_step)
        finally:
            self.writer.close()
