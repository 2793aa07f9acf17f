"""``lowbit analyze NAME`` as a function: config, run directory, analysis, summary and report.

``run_analysis("landscape", config)`` is exactly what ``lowbit analyze
landscape CONFIG key=value ...`` does once the config is loaded, so a sweep
cell (``lowbit.sweep``) and a run by hand make the same run directory.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import yaml

from lowbit.config import load_config
from lowbit.devices import resolve_device, set_tf32
from lowbit.files import check_writable
from lowbit.registry import UnknownNameError, unknown_name_message
from lowbit.runs import (
    atomic_write_text,
    check_resume_config,
    clear_run_dir,
    create_run_dir,
    hold_run_lock,
    holds_run_locks,
    open_resumed_run,
    prepare_run_dir,
    started_config,
    write_run_files,
)

PathLike = Union[str, Path]

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

# the key a sweep's `seeds:` sets, per analysis (None: the analysis draws no random numbers of its own)
SEED_KEYS: Dict[str, Optional[str]] = {
    "bn-smoothness": "seed",
    "landscape": "directions.seed",
    "attribution": None,
    "weights": None,
}


def analysis_config_class(name: str) -> type:
    from lowbit import analysis

    if name not in ANALYSES:
        raise UnknownNameError(unknown_name_message("analysis", name, ANALYSES))
    return getattr(analysis, ANALYSES[name][0])


def load_analysis_config(name: str, path: Optional[PathLike] = None, overrides: Sequence[str] = (), base: Optional[Dict[str, Any]] = None) -> Any:
    """The config ``lowbit analyze NAME [PATH] [key=value ...]`` runs (no file: the built-in recipe)."""
    return load_config(analysis_config_class(name), path, overrides, base=base)


@holds_run_locks
def run_analysis(
    name: str,
    config: Any = None,
    run_dir: Optional[PathLike] = None,
    *,
    resume: Optional[PathLike] = None,
    runs_dir: PathLike = "runs",
    data_dir: Optional[str] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
    force: bool = False,
    device: Optional[str] = None,
) -> Path:
    """Run the analysis ``name`` on ``config`` into a run directory; return it.

    ``run_dir`` (created if missing) replaces the default ``runs_dir/<config.name>-<time>``.
    ``resume``: a run directory of this analysis that stopped (a kill, a full
    disk) to run again, from its own ``config.yaml`` and into the same folder;
    analyses are deterministic, so it ends as an uninterrupted run would. (An
    analysis has no checkpoints: it starts over, its outputs are replaced.) A
    ``config.yaml`` edited since the run started is refused unless ``force``
    (``device``, the ``--device`` flag, may change on resume). ``device`` (if given)
    replaces ``config.device``, for a new run as for a resumed one.
    Every check of :mod:`lowbit.analysis.preflight` runs before the run directory
    is made. Writes ``config.yaml``, ``meta.yaml``, the analysis' records and
    plots, ``summary.yaml`` and ``report.md``.
    """
    import torch

    from lowbit.analysis.preflight import check_analysis
    from lowbit.analysis.report import SUMMARY_FILE, write_analysis_report

    config_class = analysis_config_class(name)  # a clear error for an unknown name
    _, runner_spec, _ = ANALYSES[name]
    if resume is not None:
        run_dir = open_resumed_run(resume, config, run_dir, f"analyze {name}")
        config = load_config(config_class, run_dir / "config.yaml")
        if device is not None:
            config = dataclasses.replace(config, device=device)
        check_resume_config(run_dir, config, started_config(run_dir), f"analyze {name}", changeable=("device",), force=force)
        resolve_device(config.device)  # no such device: one line, before anything is cleared
        check_analysis(name, config)
        clear_run_dir(run_dir, keep=("config.yaml",))
    else:
        if config is None:
            config = config_class()
        if device is not None:
            config = dataclasses.replace(config, device=device)
        resolve_device(config.device)  # no such device: one line, before the run directory exists
        check_analysis(name, config)  # before the run directory exists
        check_writable(run_dir if run_dir is not None else runs_dir)
        if run_dir is None:
            run_dir = create_run_dir(config.name, runs_dir)
        else:
            run_dir = prepare_run_dir(run_dir)
        hold_run_lock(run_dir)
    (Path(run_dir) / "plots").mkdir(exist_ok=True)
    set_tf32(False)  # the landscapes and probes are compared point by point: full fp32 matmuls
    if getattr(config, "threads", None):
        torch.set_num_threads(config.threads)
    write_run_files(run_dir, config)
    if log is not None:
        log(f"writing to {run_dir}")
    start = time.perf_counter()
    module, _, function = runner_spec.partition(":")
    runner = getattr(importlib.import_module(module), function)
    summary = runner(config, run_dir, data_dir=data_dir, progress=progress, log=log)
    summary = {"analysis": name, "seconds_total": time.perf_counter() - start, **summary}
    atomic_write_text(run_dir / SUMMARY_FILE, yaml.safe_dump(plain(summary), sort_keys=False))
    write_analysis_report(run_dir)
    return run_dir


def plain(value: Any) -> Any:
    """YAML-safe plain types (str subclasses such as torch's version string, tuples, numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
