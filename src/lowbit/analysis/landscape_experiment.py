"""``lowbit analyze landscape``: a trained model's 2-D loss landscape and a 1-D interpolation.

1. The model: a ``lowbit train`` checkpoint, or one trained on the spot
   (:mod:`lowbit.analysis.source`).
2. Two Gaussian directions from ``torch.Generator().manual_seed(directions.seed)``,
   filter-normalised against the trained weights (:mod:`lowbit.analysis.directions`).
3. The loss and accuracy on the first ``eval.num_images`` images of
   ``eval.split`` at every grid point α, β (:func:`~lowbit.analysis.landscape.evaluate_affine`,
   in chunks of ``eval.points_per_batch`` points, vmapped if ``eval.vmap``) -> ``landscape.csv``.
4. The interpolation θ(t) = (1−t)·start + t·end between the run's initial weights
   (rebuilt from its seed) or a checkpoint and the trained weights or another
   checkpoint, on the train and test images -> ``interpolation.csv``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from lowbit.analysis.config import LandscapeConfig
from lowbit.analysis.directions import random_direction
from lowbit.analysis.functional import tree_dot, tree_norm
from lowbit.analysis.landscape import evaluate_affine, grid_coordinates, model_state, state_difference
from lowbit.runs import RecordWriter

__all__ = ["INTERPOLATION_FILE", "LANDSCAPE_FILE", "run_landscape"]

LANDSCAPE_FILE = "landscape.csv"
INTERPOLATION_FILE = "interpolation.csv"


def _end_state(which: str, trained: Any, data_dir: Optional[str], device: str) -> Dict[str, torch.Tensor]:
    """The weights (and buffers) named by an interpolation end: init, final, or a checkpoint path."""
    from lowbit.analysis.source import load_trained

    if which == "init":
        return model_state(trained.initial)
    if which == "final":
        return model_state(trained.model)
    other = load_trained(which, data_dir, device)
    mine, theirs = model_state(trained.model), model_state(other.model)
    if {k: tuple(v.shape) for k, v in mine.items()} != {k: tuple(v.shape) for k, v in theirs.items()}:
        raise ValueError(f"interpolation end {which!r} is a different architecture from the source model")
    return theirs


def run_landscape(
    config: LandscapeConfig,
    run_dir: Path,
    *,
    data_dir: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Evaluate the grid and the interpolation; return timings and facts for the report."""
    from lowbit.analysis.source import describe, obtain_model

    run_dir = Path(run_dir)
    data_dir = data_dir or config.source.data_dir  # the command line's --data-dir wins over the config
    trained = obtain_model(config.source, run_dir, data_dir=data_dir, progress=progress, log=log, device=config.device,
                           plugins=config.plugins)  # fmt: skip
    e = config.eval
    images, labels = trained.images(e.split, limit=e.num_images)  # (N, C, H, W), (N,)
    bn_images = trained.images("train", limit=e.bn_batches * e.batch_size)[0] if e.bn == "recompute" else None
    model = trained.model.eval()

    # ---- 2-D landscape around the trained weights
    start = time.perf_counter()
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(config.directions.seed)
    d1 = random_direction(theta, gen, config.directions.norm, config.directions.one_d)
    d2 = random_direction(theta, gen, config.directions.norm, config.directions.one_d)
    xs, ys, coords = grid_coordinates(config.grid.x_range, config.grid.y_range, config.grid.resolution)
    if log:
        log(
            f"landscape: {coords.shape[0]} points x {images.shape[0]} {e.split} images, "
            f"{'vmap over ' + str(e.points_per_batch) + ' points' if e.vmap and e.bn != 'recompute' else 'point by point'}, "
            f"BN statistics: {e.bn}"
        )
    losses, accs = evaluate_affine(
        model, theta, [d1, d2], coords, images, labels,
        batch_size=e.batch_size, points_per_batch=e.points_per_batch, bn=e.bn, bn_images=bn_images, vmap_points=e.vmap,
        progress=progress, desc="landscape grid",
    )  # fmt: skip
    res = config.grid.resolution
    RecordWriter(run_dir / LANDSCAPE_FILE).write_many(
        {"i": p % res, "j": p // res, "alpha": float(coords[p, 0]), "beta": float(coords[p, 1]), "loss": float(losses[p]), "acc": float(accs[p])}
        for p in range(coords.shape[0])
    )
    seconds_grid = time.perf_counter() - start
    facts: Dict[str, Any] = {
        "source": describe(trained),
        "seconds_grid": seconds_grid,
        "num_points": int(coords.shape[0]),
        "num_images": int(images.shape[0]),
        "theta_norm": tree_norm(theta),
        "d1_norm": tree_norm(d1),
        "d2_norm": tree_norm(d2),
        "cos_d1_d2": tree_dot(d1, d2) / max(1e-30, tree_norm(d1) * tree_norm(d2)),
    }

    # ---- 1-D interpolation between two states
    if config.interpolation.enabled:
        start = time.perf_counter()
        i = config.interpolation
        a = _end_state(i.start, trained, data_dir, config.device)
        b = _end_state(i.end, trained, data_dir, config.device)
        # eval mode: the running statistics move along with the weights, so each end keeps its own
        names = list(a) if e.bn == "eval" else [n for n, _ in model.named_parameters()]
        direction = state_difference(a, b, names)
        ts = torch.linspace(i.t_range[0], i.t_range[1], i.points, dtype=torch.float64)  # (T,)
        for t01 in (0.0, 1.0):  # the two ends exactly: snap a near miss of linspace, else add the point
            near = (ts - t01).abs() < 1e-9
            ts = torch.where(near, torch.full_like(ts, t01), ts) if bool(near.any()) else torch.cat([ts, ts.new_tensor([t01])])
        ts = torch.sort(ts).values.reshape(-1, 1)  # (T, 1)
        writer = RecordWriter(run_dir / INTERPOLATION_FILE)
        for split in ("train", "test"):
            x, y = (images, labels) if split == e.split else trained.images(split, limit=e.num_images)
            loss_t, acc_t = evaluate_affine(
                model, a, [direction], ts, x, y,
                batch_size=e.batch_size, points_per_batch=e.points_per_batch, bn=e.bn, bn_images=bn_images, vmap_points=e.vmap,
                progress=progress, desc=f"interpolation ({split})",
            )  # fmt: skip
            writer.write_many(
                {"split": split, "t": float(ts[k, 0]), "loss": float(loss_t[k]), "acc": float(acc_t[k]), "start": i.start, "end": i.end}
                for k in range(ts.shape[0])
            )
        facts["seconds_interpolation"] = time.perf_counter() - start
        facts["distance_start_end"] = tree_norm({n: direction[n] for n in direction if n in theta})
    return facts
