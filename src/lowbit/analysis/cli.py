"""``lowbit analyze {bn-smoothness,landscape,attribution,weights} [CONFIG] [key=value ...]``.

Each sub-subcommand reads its config (``configs/analyze-*.yaml``; none: the
built-in quick digits recipe), checks it, creates ``RUNS_DIR/<name>-<time>/``
with ``config.yaml`` and ``meta.yaml``, runs the analysis (records as CSV),
and writes ``summary.yaml`` (timings), ``plots/*.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import yaml

from lowbit.cli_args import IntermixedParser, split_config_and_overrides
from lowbit.config import load_config

# name -> (config class name, runner "module:function", one-line help)
ANALYSES: Dict[str, Tuple[str, str, str]] = {
    "bn-smoothness": (
        "BNSmoothnessConfig",
        "lowbit.analysis.bn_experiment:run_bn_smoothness",
        "VGG with/without BatchNorm: loss landscape, gradient predictiveness, effective beta-smoothness (Santurkar et al. 2018)",
    ),
    "landscape": (
        "LandscapeConfig",
        "lowbit.analysis.landscape_experiment:run_landscape",
        "2-D filter-normalised loss landscape (Li et al. 2018) and 1-D interpolation of a checkpoint",
    ),
    "attribution": (
        "AttributionConfig",
        "lowbit.analysis.attribution:run_attribution",
        "saliency, integrated gradients and guided backprop heatmaps (captum) for chosen images",
    ),
    "weights": (
        "WeightsConfig",
        "lowbit.analysis.weights:run_weights",
        "a layer's weights as pictures, one per optimizer or checkpoint",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True, parser_class=IntermixedParser)
    for name, (_, _, help_text) in ANALYSES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", nargs="?", help=f"YAML config (configs/analyze-*.yaml); default: the built-in quick {name} recipe on digits")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 probe.every=5")
        p.add_argument("--runs-dir", default="runs", help="where run directories are created (default: runs)")
        p.add_argument("--data-dir", default=None, help="folder with the data set archives (default: $LOWBIT_DATA, else ./data)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
        p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _runner(spec: str) -> Callable[..., Dict[str, Any]]:
    import importlib

    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def run(args: argparse.Namespace) -> int:
    import torch

    from lowbit import analysis
    from lowbit.analysis.report import SUMMARY_FILE, write_analysis_report
    from lowbit.runs import atomic_write_text, create_run_dir, write_run_files

    config_name, runner_spec, _ = ANALYSES[args.analysis]
    config_path, overrides = split_config_and_overrides(args.config, args.overrides)
    config = load_config(getattr(analysis, config_name), config_path, overrides)
    if getattr(config, "threads", None):
        torch.set_num_threads(config.threads)
    log = None if args.quiet else (lambda line: print(f"lowbit analyze {args.analysis}: {line}", file=sys.stderr))
    run_dir = create_run_dir(config.name, args.runs_dir)
    write_run_files(run_dir, config)
    print(f"lowbit analyze {args.analysis}: writing to {run_dir}", file=sys.stderr)
    start = time.perf_counter()
    summary = _runner(runner_spec)(config, run_dir, data_dir=args.data_dir, progress=not args.quiet, log=log)
    summary = {"analysis": args.analysis, "seconds_total": time.perf_counter() - start, **summary}
    atomic_write_text(run_dir / SUMMARY_FILE, yaml.safe_dump(_plain(summary), sort_keys=False))
    report = write_analysis_report(run_dir)
    print(f"lowbit analyze {args.analysis}: done in {summary['seconds_total']:.0f} s; report: {report}", file=sys.stderr)
    return 0


def _plain(value: Any) -> Any:
    """YAML-safe plain types (str subclasses such as torch's version string, tuples, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
