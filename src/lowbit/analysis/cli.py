"""``lowbit analyze {bn-smoothness,landscape,attribution,weights} [CONFIG] [key=value ...]``.

Each sub-subcommand reads its config (``configs/analyze-*.yaml``; none: the
built-in quick digits recipe), checks it, creates ``RUNS_DIR/<name>-<time>/``
with ``config.yaml`` and ``meta.yaml``, runs the analysis (records as CSV),
and writes ``summary.yaml`` (timings), ``plots/*.png`` and ``report.md``
(:func:`lowbit.analysis.command.run_analysis`).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from lowbit.analysis.command import ANALYSES, load_analysis_config, run_analysis
from lowbit.cli_args import IntermixedParser, split_config_and_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True, parser_class=IntermixedParser)
    for name, (_, _, help_text) in ANALYSES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", nargs="?", help=f"YAML config: a file, or a built-in name (`lowbit configs analyze`); default: the built-in quick {name} recipe on digits")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 probe.every=5")
        p.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
        p.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="run a stopped analysis again into its own folder, from its config.yaml (it starts over)")
        p.add_argument("--force", action="store_true",
                       help="with --resume: accept a config.yaml edited since the run started")
        p.add_argument("--data-dir", default=None, help="folder with the data set archives (default: $LOWBIT_DATA, else ./data)")
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N: overrides the config's device")
        p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
        p.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from lowbit.analysis.report import SUMMARY_FILE

    config_path, overrides = split_config_and_overrides(args.config, args.overrides, ("analyze-",))
    if args.resume and (config_path or overrides):
        raise ValueError("--resume takes the run's own config.yaml: give no config file or overrides with it")
    if args.force and not args.resume:
        raise ValueError("--force only applies to --resume RUN_DIR (it accepts an edited config.yaml)")
    device_override = [f"device={args.device}"] if args.device else []
    config = None if args.resume else load_analysis_config(args.analysis, config_path, overrides + device_override)
    prefix = f"lowbit analyze {args.analysis}"
    log = None if args.quiet else (lambda line: print(f"{prefix}: {line}", file=sys.stderr))
    run_dir = run_analysis(
        args.analysis, config, resume=args.resume, runs_dir=args.runs_dir, data_dir=args.data_dir,
        progress=not args.quiet, log=log, force=args.force, device=args.device if args.resume else None,
    )  # fmt: skip
    seconds = yaml.safe_load((run_dir / SUMMARY_FILE).read_text())["seconds_total"]
    print(f"{prefix}: done in {seconds:.0f} s; report: {run_dir / 'report.md'}", file=sys.stderr)
    return 0
