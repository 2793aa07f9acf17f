"""Run under torchrun with 2 ranks: one training run with TensorBoard per-step points and an on_epoch callback
given to rank 0 only, which stops the run after epoch 2 of 3. Writes OUT/rank<r>.json (the callback's calls)."""

import json
import os
import sys
from pathlib import Path

from lowbit.train import load_train_config, train

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
calls = []


def stop_after_two(metrics):
    calls.append(metrics["epoch"])
    return "rank 0 says stop" if metrics["epoch"] == 2 else None


config = load_train_config(None, [
    "data.train_subset=128", "data.test_subset=96", "data.batch_size=32", "run.epochs=3", "run.threads=1",
    "augment.crop_padding=2", "schedule.warmup_epochs=0.5", "run.trackers=[tensorboard]", "run.log_every=1",
])  # 4 steps per epoch
run_dir = train(config, run_dir=out / "run", on_epoch=stop_after_two if rank == 0 else None)
(out / f"rank{rank}.json").write_text(json.dumps({"calls": calls, "run_dir": str(run_dir)}))
