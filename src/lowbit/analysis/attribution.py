"""Gradient-based attributions through captum: saliency, integrated gradients, guided backprop.

For a class score S_c(x) (the logit of class c) and an input image x:

- **saliency** (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional
  Networks", ICLR workshop 2014): |∂S_c/∂x| (``captum.attr.Saliency``, abs=True);
- **integrated gradients** (Sundararajan, Taly & Yan, "Axiomatic Attribution
  for Deep Networks", ICML 2017):
  IG(x) = (x − x')·∫₀¹ ∂S_c(x' + a(x − x'))/∂x da, with baseline x'; it is
  *complete*: Σ IG = S_c(x) − S_c(x') (``captum.attr.IntegratedGradients``,
  Gauss–Legendre quadrature with ``ig_steps`` points; the gap to completeness
  is captum's convergence delta, recorded);
- **guided backprop** (Springenberg, Dosovitskiy, Brox & Riedmiller,
  "Striving for Simplicity: The All Convolutional Net", ICLR workshop 2015):
  the gradient with every ReLU's backward pass also zeroing negative incoming
  gradients (``captum.attr.GuidedBackprop``; it overrides ``nn.ReLU`` modules,
  so a model calling ``F.relu`` directly gets plain gradients there).

The attribution has the input's shape (N, C, H, W) and lives in the
*normalised* input space the model sees. The pictures show
:func:`heatmap`: max over channels of |attribution| (Simonyan et al.'s
reduction for colour images), one (H, W) map per image.

The notes (section 1.9) use the three methods on a CIFAR-10 "frog" to ask
*why* the model chose its class; ``lowbit analyze attribution`` draws the
same figure for any checkpoint and chosen images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lowbit.analysis.config import ATTRIBUTION_METHODS, AttributionConfig
from lowbit.runs import RecordWriter

__all__ = ["ATTRIBUTION_FILE", "attribute", "attribute_all", "heatmap", "run_attribution"]

ATTRIBUTION_FILE = "attribution.csv"


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    *,
    ig_steps: int = 50,
    baseline: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The attribution of ``method`` for ``inputs`` (N, C, H, W) and class ``targets`` (N,).

    Returns (attribution shaped like ``inputs``, convergence delta (N,) for
    integrated gradients else None). The model is put in eval mode; its weights
    and ``.grad`` are left as they were.
    """
    from captum.attr import GuidedBackprop, IntegratedGradients, Saliency

    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    model.eval()
    grads = {name: p.grad for name, p in model.named_parameters()}
    x = inputs.detach().clone().requires_grad_(True)
    targets = targets.long()
    delta = None
    if method == "saliency":
        out = Saliency(model).attribute(x, target=targets, abs=True)
    elif method == "guided_backprop":
        out = GuidedBackprop(model).attribute(x, target=targets)
    else:
        base = torch.zeros_like(x) if baseline is None else baseline.to(x.dtype).expand_as(x)
        out, delta = IntegratedGradients(model).attribute(
            x, baselines=base, target=targets, n_steps=ig_steps, return_convergence_delta=True
        )
        delta = delta.detach()
    for name, p in model.named_parameters():  # captum may touch .grad through backward hooks
        p.grad = grads[name]
    return out.detach(), delta


def attribute_all(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str] = ATTRIBUTION_METHODS,
    **kw: Any,
) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """{method: (attribution, delta)} for each method (see :func:`attribute`)."""
    return {m: attribute(model, inputs, targets, m, **kw) for m in methods}


def heatmap(attribution: torch.Tensor) -> torch.Tensor:
    """max over channels of |attribution|: (N, C, H, W) -> (N, H, W)."""
    return attribution.abs().amax(dim=1)


def _baseline(kind: str, mean: Sequence[float], std: Sequence[float], channels: int) -> torch.Tensor:
    """The IG baseline in normalised space: black pixels, or 0 (the data set's mean colour)."""
    if kind == "mean":
        return torch.zeros(1, channels, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return ((0.0 - m) / s).expand(1, channels, 1, 1)  # what a raw 0 pixel becomes after normalize()


def run_attribution(
    config: AttributionConfig,
    run_dir: Path,
    *,
    data_dir: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Attribute the chosen images of a trained model; write ``attribution.csv`` and the figure.

    Returns ``{"seconds": ..., "source": {...}}``; the heatmaps are saved in
    ``attribution.pt`` (original uint8 images and (N, H, W) heatmaps) for the report.
    """
    from lowbit.analysis.source import describe, obtain_model
    from lowbit.runs import atomic_torch_save

    run_dir = Path(run_dir)
    trained = obtain_model(config.source, run_dir, data_dir=data_dir, progress=progress, log=log, device=config.device,
                           plugins=config.plugins)  # fmt: skip
    start = time.perf_counter()
    model = trained.model.eval()
    x, labels = trained.images(config.split, indices=config.indices)  # (N, C, H, W), (N,)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)  # (N, K)
    preds = probs.argmax(1)
    targets = preds if config.target == "predicted" else labels
    baseline = _baseline(config.ig_baseline, trained.setup.mean, trained.setup.std, x.shape[1]).to(x.device)
    results = attribute_all(model, x, targets, config.methods, ig_steps=config.ig_steps, baseline=baseline)
    writer = RecordWriter(run_dir / ATTRIBUTION_FILE)
    rows: List[Dict[str, Any]] = []
    for method, (attr, delta) in results.items():
        flat = attr.abs().reshape(attr.shape[0], -1)  # (N, C*H*W)
        for n, index in enumerate(config.indices):
            top = flat[n].sort(descending=True).values
            k = max(1, top.numel() // 10)
            rows.append(
                {
                    "method": method,
                    "split": config.split,
                    "index": index,
                    "label": int(labels[n]),
                    "pred": int(preds[n]),
                    "target": int(targets[n]),
                    "prob_target": float(probs[n, targets[n]]),
                    "attr_sum": float(attr[n].sum()),
                    "abs_sum": float(top.sum()),
                    "abs_max": float(top[0]),
                    "top10_share": float(top[:k].sum() / top.sum()) if float(top.sum()) > 0 else float("nan"),
                    "ig_delta": float(delta[n]) if delta is not None else None,
                }
            )
    writer.write_many(rows)
    atomic_torch_save(
        {
            "indices": list(config.indices),
            "originals": trained.raw_images(config.split, config.indices).cpu(),
            "heatmaps": {m: heatmap(a).cpu() for m, (a, _) in results.items()},
        },
        run_dir / "attribution.pt",
    )
    return {"seconds": time.perf_counter() - start, "source": describe(trained)}
