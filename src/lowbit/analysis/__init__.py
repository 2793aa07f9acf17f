"""Optimisation analyses: BatchNorm smoothness, 2-D loss landscapes, attributions, weight pictures.

    lowbit analyze bn-smoothness [configs/analyze-bn-digits.yaml] [key=value ...]
    lowbit analyze landscape     [configs/analyze-landscape-digits.yaml] [source.checkpoint=RUN_DIR]
    lowbit analyze attribution   [configs/analyze-attribution-digits.yaml] [source.checkpoint=RUN_DIR]
    lowbit analyze weights       [configs/analyze-weights-digits.yaml]

The building blocks are usable on their own:

>>> probe = probe_gradient_direction(model, x, y, F.cross_entropy, etas=[0.05, 0.1])
>>> probe.beta, probe.loss_band                      # effective β-smoothness, (min, max) of L(w − ηg)
>>> d = random_direction(dict(model.named_parameters()), torch.Generator().manual_seed(0))
>>> losses, accs = evaluate_affine(model, theta, [d1, d2], coords, images, labels)
>>> attr, delta = attribute(model, images, targets, "integrated_gradients")

Formulas, the BatchNorm choices and measured times: ``docs/analysis.md``.
"""

from __future__ import annotations

from lowbit.analysis.attribution import attribute, attribute_all, heatmap, run_attribution
from lowbit.analysis.bn_experiment import batch_indices, build_bn_model, run_bn_smoothness
from lowbit.analysis.config import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    BNModelSpec,
    BNSmoothnessConfig,
    DataSpec,
    DirectionSpec,
    EvalSpec,
    GridSpec,
    InterpolationSpec,
    LandscapeConfig,
    LrBandSpec,
    ProbeSpec,
    SmoothnessTrainSpec,
    SourceSpec,
    WeightsConfig,
)
from lowbit.analysis.directions import filter_norms, normalize_direction, random_direction
from lowbit.analysis.functional import buffers_of, loss_and_grad, loss_at, params_of, tree_norm
from lowbit.analysis.landscape import (
    evaluate_affine,
    grid_coordinates,
    model_state,
    recompute_bn_statistics,
    state_difference,
)
from lowbit.analysis.landscape_experiment import run_landscape
from lowbit.analysis.report import is_analysis_run, write_analysis_report
from lowbit.analysis.smoothness import GradientProbe, probe_gradient_direction, step_sizes
from lowbit.analysis.source import TrainedModel, load_trained, obtain_model, resolve_checkpoint
from lowbit.analysis.weights import resolve_layer, run_weights, weight_stats

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionConfig",
    "BNModelSpec",
    "BNSmoothnessConfig",
    "DataSpec",
    "DirectionSpec",
    "EvalSpec",
    "GradientProbe",
    "GridSpec",
    "InterpolationSpec",
    "LandscapeConfig",
    "LrBandSpec",
    "ProbeSpec",
    "SmoothnessTrainSpec",
    "SourceSpec",
    "TrainedModel",
    "WeightsConfig",
    "attribute",
    "attribute_all",
    "batch_indices",
    "buffers_of",
    "build_bn_model",
    "evaluate_affine",
    "filter_norms",
    "grid_coordinates",
    "heatmap",
    "is_analysis_run",
    "load_trained",
    "loss_and_grad",
    "loss_at",
    "model_state",
    "normalize_direction",
    "obtain_model",
    "params_of",
    "probe_gradient_direction",
    "random_direction",
    "recompute_bn_statistics",
    "resolve_checkpoint",
    "resolve_layer",
    "run_attribution",
    "run_bn_smoothness",
    "run_landscape",
    "run_weights",
    "state_difference",
    "step_sizes",
    "tree_norm",
    "weight_stats",
    "write_analysis_report",
]
