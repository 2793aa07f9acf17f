"""Training: a flat loop over in-memory image data, schedules, losses, checkpoints, summaries.

    from lowbit.train import TrainConfig, train
    run_dir = train(TrainConfig())               # the quick digits recipe
    train(resume=run_dir)                        # continue an interrupted run exactly
    train(config, on_epoch=lambda m: m["test_acc"] < 0.5 and m["epoch"] >= 3)   # stop a hopeless run early
    print(sweep_table(run_dirs))                 # one row per run, sorted by the keys that differ

See docs/training.md for the recipes in configs/train-*.yaml.
"""

from __future__ import annotations

from lowbit.train.checkpoint import load_checkpoint, load_matching_weights
from lowbit.train.compiler import CompileFailed
from lowbit.train.config import (
    AugmentConfig,
    BinarizeConfig,
    BopConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OptimGroupConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    load_train_config,
)
from lowbit.train.flips import FlipRatio
from lowbit.train.distill import DistillConfig, attention_loss, distribution_loss, kd_loss
from lowbit.train.loop import StopTraining, TrainingDiverged, TrainingInterrupted, build, check_config, evaluate, train
from lowbit.train.losses import build_loss, list_losses, register_loss
from lowbit.train.optim import build_optimizer, list_optimizers, register_optimizer, set_learning_rate
from lowbit.train.schedules import list_schedules, make_schedule, register_schedule
from lowbit.train.summary import (
    SweepTable,
    read_stop_record,
    run_summary,
    summarize,
    summary_table,
    sweep_table,
    varied_keys,
    write_train_report,
)
from lowbit.train.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from lowbit.train.surrogate_schedule import SurrogateScheduleConfig, schedule_value

__all__ = [
    "AugmentConfig",
    "BinarizeConfig",
    "BopConfig",
    "CompileFailed",
    "DataConfig",
    "FlipRatio",
    "DistillConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OptimGroupConfig",
    "RunConfig",
    "ScheduleConfig",
    "StopTraining",
    "SurrogateScheduleConfig",
    "SweepTable",
    "SyncBatchNorm",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "attention_loss",
    "build",
    "build_loss",
    "check_config",
    "convert_sync_batchnorm",
    "build_optimizer",
    "distribution_loss",
    "evaluate",
    "kd_loss",
    "list_losses",
    "load_train_config",
    "list_optimizers",
    "list_schedules",
    "load_checkpoint",
    "load_matching_weights",
    "read_stop_record",
    "make_schedule",
    "register_loss",
    "register_optimizer",
    "register_schedule",
    "run_summary",
    "set_learning_rate",
    "schedule_value",
    "summarize",
    "summary_table",
    "sweep_table",
    "train",
    "varied_keys",
    "write_train_report",
]
