"""Every check of an analysis config that needs no data: run before the run directory exists.

``check_analysis(name, config)`` raises one ``ValueError`` listing every problem:

- the run name (one folder name);
- each model source: a ``source.checkpoint`` (or a ``checkpoints:`` entry of
  ``weights``) must load with ``weights_only=True`` and hold a valid training
  config; a model to train on the spot (``train_config`` + ``train_overrides``)
  must pass ``lowbit train``'s own checks (:func:`lowbit.train.check_config`);
- landscape: the interpolation ends that are checkpoint paths;
- bn-smoothness: the data set and model names, and the model built on the
  ``meta`` device (no memory) with ``model.kwargs``;
- weights: every layer in ``layers`` exists in every model (built on ``meta``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch

from lowbit.config import check_threads
from lowbit.plugins import import_plugins
from lowbit.runs import check_run_name

__all__ = ["check_analysis"]

_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError, RuntimeError)


def check_analysis(name: str, config: Any) -> None:
    """Raise ``ValueError`` listing every problem of the analysis ``name``'s ``config`` (module docstring)."""
    import_plugins(config.plugins, "plugins: of the config")  # a config built in Python: its modules first
    errors: List[str] = []
    _attempt(errors, "", lambda: check_run_name(config.name, "name"))
    _attempt(errors, "", lambda: check_threads(getattr(config, "threads", None), "threads"))
    if name in ("landscape", "attribution"):
        _check_source(errors, "source", config.source)
    if name == "landscape" and config.interpolation.enabled:
        from lowbit.analysis.config import SourceSpec

        for key in ("start", "end"):
            value = getattr(config.interpolation, key)
            if value not in ("init", "final"):
                _attempt(errors, f"interpolation.{key}", lambda value=value: _train_config(SourceSpec(checkpoint=value)))
    if name == "bn-smoothness":
        _check_bn(errors, config)
    if name == "weights":
        _check_weights(errors, config)
    if errors:
        raise ValueError("invalid analysis config:\n  - " + "\n  - ".join(errors))


def _attempt(errors: List[str], key: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except _ERRORS as error:
        text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
        text = text.replace("invalid config:\n  - ", "").replace("\n  - ", "; ")
        errors.append(f"{key}: {text}" if key else text)
        return None


def _train_config(source: Any) -> Any:
    """The ``TrainConfig`` a source stands for: its checkpoint's, or the one it would train."""
    from lowbit.config import from_dict, load_config
    from lowbit.train import TrainConfig, check_config

    if source.checkpoint is not None:
        from lowbit.analysis.source import resolve_checkpoint
        from lowbit.train import load_checkpoint

        from lowbit.train.guards import nonfinite_tensor

        path = resolve_checkpoint(source.checkpoint)
        state = load_checkpoint(path)
        if not isinstance(state.get("config"), dict):
            raise ValueError(f"checkpoint {str(path)!r} holds no training config; it was not written by `lowbit train`")
        bad = nonfinite_tensor(state["model"])
        if bad is not None:
            raise ValueError(f"checkpoint {str(path)!r} holds non-finite weights ({bad[0]!r} = {bad[1]}); give a finite one")
        return from_dict(TrainConfig, state["config"])
    config = load_config(TrainConfig, source.train_config, list(source.train_overrides))
    check_config(config)
    return config


def _check_source(errors: List[str], key: str, source: Any) -> Optional[Any]:
    if source.checkpoint is not None and source.train_config is not None:
        errors.append(f"{key}.train_config={source.train_config!r} is used only without {key}.checkpoint; remove one of them")
    where = f"{key}.checkpoint" if source.checkpoint is not None else f"{key}.train_overrides"
    return _attempt(errors, where, lambda: _train_config(source))


def _check_bn(errors: List[str], config: Any) -> None:
    from lowbit.analysis.bn_experiment import build_bn_model
    from lowbit.data import dataset_spec, list_datasets
    from lowbit.models import list_models
    from lowbit.registry import unknown_name_message

    if config.data.dataset not in list_datasets():
        errors.append(unknown_name_message("dataset", config.data.dataset, list_datasets()))
        return
    if config.model.name not in list_models():
        errors.append(unknown_name_message("model", config.model.name, list_models()))
        return
    spec = dataset_spec(config.data.dataset)

    def build() -> None:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            for bn in (False, True):
                build_bn_model(config.model, bn, spec.num_classes, spec.channels or 3, config.seed)

    _attempt(errors, "model", build)


def _check_weights(errors: List[str], config: Any) -> None:
    from lowbit.analysis.config import SourceSpec
    from lowbit.analysis.weights import resolve_layer
    from lowbit.train.preflight import meta_model

    if config.checkpoints:
        sources: Dict[str, Any] = {label: SourceSpec(checkpoint=path) for label, path in config.checkpoints.items()}
        kind = "checkpoints"
    else:
        sources = {
            label: SourceSpec(checkpoint=None, train_config=config.train_config, train_overrides=list(o))
            for label, o in config.train.items()
        }
        kind = "train"
    for label, source in sources.items():
        train_config = _attempt(errors, f"{kind}.{label}", lambda source=source: _train_config(source))
        if train_config is None:
            continue
        model = _attempt(errors, f"{kind}.{label}", lambda train_config=train_config: meta_model(train_config))
        if model is None:
            continue
        for layer in config.layers:
            _attempt(errors, f"layers ({label})", lambda layer=layer, model=model: resolve_layer(model, layer))
