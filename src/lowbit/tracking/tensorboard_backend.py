"""The ``tensorboard`` tracker: event files in ``RUN_DIR/tensorboard/`` (``tensorboard --logdir runs``).

Scalars go to ``SummaryWriter.add_scalar`` under their own names. The run's
parameters and final numbers become one row of TensorBoard's HParams
dashboard, written into the run's own event directory (torch's
``add_hparams`` would make a second, time-stamped run beside it): the
parameters as given to ``log_params`` plus ``status`` (complete, stopped,
interrupted, ...), the metrics as given to ``log_summary``, each also written
as a scalar so the dashboard finds its value.

A resumed training run logs again the per-step points after its checkpoint
(step S) that a killed attempt may have written: the writer starts with
``purge_step=S + 1``, at which TensorBoard's reader drops every earlier-written
event of step > S, so each step shows once. The per-epoch scalars (x = the
epoch, never above S) keep theirs; only a kill between an epoch's scalars and
its checkpoint leaves that epoch's point twice (the same numbers but
``seconds``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from lowbit.tracking.base import TrackingContext, register_tracker


def _wait_to_sort_last(log_dir: Path) -> None:
    """Wait (under a second) until an event file made now sorts after those in ``log_dir``.

    TensorBoard reads a folder's event files in name order, and a name is
    ``events.out.tfevents.<second>.<host>.<pid>...``: a resumed run's file made in
    the same second as the killed attempt's could sort first (by pid) and be read
    before it, so that its purge would act on nothing.
    """
    seconds = [int(m.group(1)) for f in log_dir.glob("events.out.tfevents.*")
               if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", f.name))]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


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
        # purge_step: a SessionLog START at which TensorBoard's reader drops the events of every tag from that
        # step on, written earlier (the killed attempt's steps after the checkpoint, logged again now)
        purge = None if context.resume_step is None else context.resume_step + 1
        _wait_to_sort_last(self.log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
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

    def flush(self) -> None:
        """The queued events to the event file (SummaryWriter writes every 10 events or 120 s otherwise)."""
        self.writer.flush()

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
