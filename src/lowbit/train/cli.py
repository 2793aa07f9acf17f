"""``lowbit train``: train a zoo model from a YAML recipe plus key=value overrides.

    lowbit train                                   # the built-in digits recipe (TrainConfig())
    lowbit train configs/train-digits-xnor.yaml
    lowbit train configs/train-xnor-resnet18-cifar10.yaml model.width=96 optim.weight_decay=1e-5
    lowbit train --resume runs/lenet5-digits-20240101-120000
    torchrun --nproc_per_node 2 -m lowbit train configs/train-digits.yaml   # one run, two processes

Ctrl-C (or SIGTERM) saves a checkpoint at the next step and exits with 130;
``--resume`` continues it exactly.
"""

from __future__ import annotations

import argparse
import os
import sys

from lowbit.cli_args import record_imports, split_config_and_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML recipe: a file, or a built-in name such as digits-xnor (`lowbit configs train`); default: the built-in digits recipe",
    )
    parser.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides, e.g. optim.lr=0.1")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted run from its last checkpoint")
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue even though config.yaml was edited since the run started "
        "(the run then mixes two configs; its report no longer describes one recipe)",
    )
    parser.add_argument("--data-dir", default=None, help="folder with the data archives (default: $LOWBIT_DATA, else ./data)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N: overrides run.device")
    parser.add_argument(
        "--compile",
        default=None,
        metavar="MODE",
        help="false, true or a torch.compile mode (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs): "
        "overrides run.compile, also with --resume",
    )
    parser.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lowbit.train.compiler import CompileFailed, parse_compile_flag
    from lowbit.train.config import load_train_config
    from lowbit.train.loop import TrainingDiverged, TrainingInterrupted, train
    from lowbit.train.summary import run_summary, summary_table

    config_path, overrides = split_config_and_overrides(args.config, args.overrides, ("train-",))
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    progress = not args.quiet and sys.stderr.isatty()
    log = None if args.quiet else tqdm.write
    try:
        compile_mode = None if args.compile is None else parse_compile_flag(args.compile)
        common = dict(data_dir=args.data_dir, device=args.device, compile=compile_mode, progress=progress, log=log)
        if args.resume:
            if config_path or overrides:
                raise ValueError("--resume continues a run with its saved config.yaml; give no config or overrides")
            run_dir = train(resume=args.resume, force=args.force, **common)
        else:
            if args.force:
                raise ValueError("--force only applies to --resume RUN_DIR (it accepts an edited config.yaml)")
            config = record_imports(load_train_config(config_path, overrides), args.imports)
            run_dir = train(config, runs_dir=args.runs_dir, **common)
    except TrainingInterrupted as stop:
        if not main:
            return 130
        print(
            f"lowbit train: interrupted; checkpoint saved at epoch {stop.epoch}, step {stop.step}. "
            f"Continue with: lowbit train --resume {stop.run_dir}",
            file=sys.stderr,
        )
        return 130
    except (TrainingDiverged, CompileFailed) as error:
        if args.debug:
            raise
        if main:
            print(f"lowbit train: {error}", file=sys.stderr)
        return 1
    if not main:
        return 0
    row = run_summary(run_dir)
    print(summary_table([row]))
    print(f"run directory: {run_dir}  (report: {run_dir / 'report.md'})")
    return 0
