"""``lowbit analyze weights``: a layer's weights as a picture, to compare optimizers.

The picture itself is :func:`lowbit.optim.weight_picture` (rows = filters /
output units, columns = inputs; a conv weight (out, in, kh, kw) is an out × in
grid of kh × kw tiles) drawn side by side by
:func:`lowbit.optim.plot_weight_pictures` -- the pictures of the notes'
section 3.1, where DessiLBI's ``conv3`` is mostly black (zero) and SGD's is
grey everywhere at the same accuracy. This module picks the models (given
checkpoints, or the same recipe trained once per optimizer) and the layers,
and writes the numbers behind each picture: the fraction of exactly-zero
weights and of all-zero filters, norms, and each model's test accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from lowbit.analysis.config import SourceSpec, WeightsConfig
from lowbit.registry import nearest
from lowbit.runs import RecordWriter

__all__ = ["WEIGHTS_FILE", "resolve_layer", "run_weights", "weight_stats"]

WEIGHTS_FILE = "weights.csv"


def resolve_layer(model: nn.Module, name: str) -> str:
    """The parameter name for ``name``: a parameter (``fc1.weight``) or a module with a weight (``conv3``)."""
    params = dict(model.named_parameters())
    if name in params:
        return name
    if f"{name}.weight" in params:
        return f"{name}.weight"
    candidates = [n[: -len(".weight")] for n in params if n.endswith(".weight")]
    hint = nearest(name, candidates + list(params))
    raise KeyError(
        f"layer {name!r} is neither a parameter nor a module with a weight"
        f"{f'; did you mean {hint!r}?' if hint else ''} (layers: {', '.join(candidates)})"
    )


def weight_stats(weight: torch.Tensor) -> Dict[str, Any]:
    """Plain numbers about one weight tensor: zeros, all-zero filters (first dim), norms."""
    w = weight.detach().double()
    per_filter = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)  # (filters, fan_in)
    return {
        "shape": "x".join(str(s) for s in weight.shape),
        "numel": w.numel(),
        "frac_zero": float((w == 0).double().mean()),
        "frac_zero_filters": float((per_filter.abs().sum(1) == 0).double().mean()),
        "l2": float(w.norm()),
        "mean_abs": float(w.abs().mean()),
        "max_abs": float(w.abs().max()),
    }


@torch.no_grad()
def _test_accuracy(trained: Any, batch_size: int = 500) -> float:
    x, y = trained.images("test")
    model = trained.model.eval()
    correct = sum(int((model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum()) for s in range(0, len(y), batch_size))
    return correct / max(1, len(y))


def run_weights(
    config: WeightsConfig,
    run_dir: Path,
    *,
    data_dir: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Load or train the models, draw each layer's pictures and write ``weights.csv``."""
    from lowbit.analysis.source import obtain_model
    from lowbit.optim import plot_weight_pictures

    run_dir = Path(run_dir)
    data_dir = data_dir or config.data_dir  # the command line's --data-dir wins over the config
    if config.checkpoints:
        sources = {label: SourceSpec(checkpoint=path) for label, path in config.checkpoints.items()}
    else:
        sources = {
            label: SourceSpec(checkpoint=None, train_config=config.train_config, train_overrides=list(o))
            for label, o in config.train.items()
        }
    models = {
        label: obtain_model(src, run_dir, data_dir=data_dir, progress=progress, log=log, subdir=f"train-{label}",
                            device=config.device, plugins=config.plugins)
        for label, src in sources.items()
    }
    start = time.perf_counter()
    writer = RecordWriter(run_dir / WEIGHTS_FILE)
    accuracy = {label: _test_accuracy(t) for label, t in models.items()}
    plots: List[str] = []
    for layer in config.layers:
        weights: Dict[str, torch.Tensor] = {}
        for label, trained in models.items():
            param = resolve_layer(trained.model, layer)
            weights[label] = dict(trained.model.named_parameters())[param].detach().cpu()  # pictures: on the CPU
            cfg = trained.train_config
            writer.write(
                {
                    "label": label,
                    "layer": layer,
                    "param": param,
                    "model": cfg.model.name,
                    "optimizer": cfg.optim.name,
                    "lr": cfg.optim.lr,
                    "epochs": cfg.run.epochs,
                    "test_acc": accuracy[label],
                    "checkpoint": str(trained.checkpoint),
                    **weight_stats(weights[label]),
                }
            )
        safe = layer.replace(".", "_").replace("/", "_")
        path = plot_weight_pictures(
            weights,
            run_dir / "plots" / f"weights_{safe}.png",
            absolute=config.absolute,
            shared_scale=config.shared_scale,
            pad=config.pad,
            title=f"{layer}: {'|W|' if config.absolute else 'W'} per optimizer",
        )
        plots.append(path.name)
    return {"seconds": time.perf_counter() - start, "plots": plots}
