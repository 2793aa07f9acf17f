"""Binary networks in ``lowbit train``: the ``binarize:`` section and ``model.weight_clip``.

``binarize:`` converts any zoo model with :func:`lowbit.nn.binarize` (its
filters included) right after it is built, before ``run.init_from`` loads
weights and before the optimizer is built; the dead-sign check runs on the
first training batch (un-augmented). ``model.weight_clip`` then sets Larq's
latent-weight clipping on every binary layer, whether ``binarize`` made it or
the zoo model has it (``xnor_resnet18``); the loop clips after every
optimizer step (:func:`lowbit.nn.clip_latent_weights_`).
"""

from __future__ import annotations

from typing import Any, List, Optional

from torch import nn

from lowbit.train.config import BinarizeConfig, TrainConfig


def apply_binarize_config(model: nn.Module, cfg: Optional[BinarizeConfig], example_input: Any = None) -> List[str]:
    """Binarize ``model`` in place as the section says; the converted layer names ([] without a section)."""
    if cfg is None:
        return []
    from lowbit.nn import binarize

    try:
        return binarize(
            model,
            input_quantizer=cfg.input_quantizer,
            weight_quantizer=cfg.weight_quantizer,
            keep_first_last=cfg.keep_first_last,
            include=cfg.include,
            exclude=cfg.exclude,
            subclasses=cfg.subclasses,
            example_input=example_input,
        )
    except ValueError as error:
        raise ValueError(f"binarize: {error}".replace("binarize: binarize", "binarize")) from None


def prepare_binary_model(model: nn.Module, config: TrainConfig, example_input: Any = None) -> List[str]:
    """``binarize:`` then ``model.weight_clip``, as ``lowbit train`` applies them; the converted layer names."""
    converted = apply_binarize_config(model, config.binarize, example_input)
    if config.model.weight_clip is not None:
        from lowbit.nn import set_weight_clip

        try:
            set_weight_clip(model, config.model.weight_clip)
        except ValueError as error:
            raise ValueError(f"model.weight_clip: {error}") from None
    return converted


__all__ = ["apply_binarize_config", "prepare_binary_model"]
