"""The pruning table of a finished ``lowbit train`` run: its model and (DessiLBI) optimizer, rebuilt.

The notes' §3.1 table: test accuracy after zeroing p % of ``conv3`` (whole
filters) and of ``conv3`` + ``fc1``, ranked by Γ for a DessiLBI run, by |W| for
an SGD one. :func:`prune_run` rebuilds the run from its ``config.yaml``
(:func:`lowbit.train.loop.build`: the same data, model and optimizer), loads
``checkpoints/last.pt`` (weights and optimizer state, where Γ lives), and
calls :func:`lowbit.optim.pruning_table` with the test-split accuracy of
:func:`lowbit.train.loop.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from lowbit.optim.prune import DEFAULT_PERCENTS

PathLike = Union[str, Path]
NOTES_LAYER_SETS = {"conv3": ["conv3"], "conv3+fc1": ["conv3", "fc1"]}  # LeNet-5's layers in the notes' table


def prune_run(
    run_dir: PathLike,
    layer_sets: Mapping[str, Sequence[str]] = NOTES_LAYER_SETS,
    percents: Sequence[float] = DEFAULT_PERCENTS,
    by: Optional[str] = None,
    data_dir: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Pruning records of the run in ``run_dir`` (see :func:`lowbit.optim.pruning_table`).

    ``by``: "gamma" for a DessiLBI run, "magnitude" otherwise (None: chosen so).
    """
    import torch

    from lowbit.config import load_config
    from lowbit.optim import DessiLBI, leaf_optimizers, pruning_table
    from lowbit.train.checkpoint import checkpoint_path, load_checkpoint
    from lowbit.train.config import TrainConfig
    from lowbit.train.loop import _with, build, evaluate, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r}: no config.yaml there; is it a `lowbit train` run directory?")
    config = _with(load_config(TrainConfig, run_dir / "config.yaml"), data_dir, None)
    state = load_checkpoint(checkpoint_path(run_dir))
    with torch.random.fork_rng(devices=[]):
        setup = build(config, resolve_device(config.run.device))
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    dessilbi = next((o for o in leaf_optimizers(setup.optimizer) if isinstance(o, DessiLBI)), None)  # optim.groups too
    by = by or ("gamma" if dessilbi else "magnitude")
    if by == "gamma" and dessilbi is None:
        raise ValueError(f"{str(run_dir)!r} was trained with {config.optim.name!r}: it has no Gamma; use by='magnitude'")
    return pruning_table(
        setup.model,
        lambda model: evaluate(setup)[1],
        layer_sets,
        percents,
        by,
        source=dessilbi,
    )


__all__ = ["NOTES_LAYER_SETS", "prune_run"]
