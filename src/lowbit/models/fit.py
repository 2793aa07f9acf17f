"""Does a model fit the images it is given?  One check, before any training step.

A model built by :func:`lowbit.models.create_model` may declare:

- ``input_shape`` (C, H, W): the image shape it is built for;
- ``fixed_input_size = True``: it only runs on exactly H x W (a classifier
  sized for it: LeNet-5's ``input_size``, the AlexNets);
- ``min_input_size``: the smallest side it runs on meaningfully, its total
  downsampling (e.g. 32 for a 7x7 stride-2 stem + max pool + three stride-2
  stages: anything smaller leaves the last stage convolving padding);
- ``stem_name`` / ``small_stem``: its stem option and the stride-1 alternative,
  named in the error.

:func:`check_model_fits` compares those with the data's image shape, then runs
one forward pass on a zero batch (eval mode, no gradients, the RNG state
restored) to catch what a declaration missed. It raises a ``ValueError`` naming
the model, its stem and the image size, with the fix.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn


def _stem_words(model: nn.Module) -> str:
    stem = getattr(model, "stem_name", None)
    return f" with stem {stem!r}" if stem is not None else ""


def check_model_fits(
    model: nn.Module,
    name: str,
    image_shape: Sequence[int],
    data_hint: Optional[str] = None,
    keys: Tuple[str, str] = ("data.image_size", "model"),
) -> None:
    """Raise ``ValueError`` if ``model`` (registry ``name``) cannot take images of ``image_shape`` (C, H, W).

    ``data_hint`` describes the data in the message (e.g. "digits, data.image_size=null");
    ``keys`` = (the image-size key, the model section) the fixes name, as the command's config spells them.
    """
    size_key, model_key = keys
    channels, height, width = (int(d) for d in image_shape)
    where = f"{height}x{width} images" + (f" ({data_hint})" if data_hint else "")
    declared = tuple(getattr(model, "input_shape", ()))
    stem = _stem_words(model)
    if len(declared) == 3 and declared[0] != channels:
        raise ValueError(f"model {name!r} is built for {declared[0]} input channels, the data have {channels}")
    if len(declared) == 3 and getattr(model, "fixed_input_size", False) and declared[1:] != (height, width):
        h, w = declared[1:]
        raise ValueError(
            f"model {name!r}{stem} is built for {h}x{w} images, not {where}; set {size_key}: {h}, "
            f"or build the model for this size ({model_key}.input_size: {height})"
        )
    minimum = getattr(model, "min_input_size", None)
    if minimum is not None and min(height, width) < minimum:
        small = getattr(model, "small_stem", None)
        other = f", or use its stride-1 stem ({model_key}.stem: {small})" if small and small != getattr(model, "stem_name", None) else ""
        raise ValueError(
            f"model {name!r}{stem} downsamples its input {minimum}x and needs images of at least "
            f"{minimum}x{minimum}, got {where}; resize them ({size_key}: {minimum}){other}"
        )
    was_training = {m: m.training for m in model.modules()}
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            model(torch.zeros(2, channels, height, width, device=device))  # (2, C, H, W): BatchNorm-safe
    except RuntimeError as exc:
        raise ValueError(f"model {name!r}{stem} does not run on {where}: {exc}") from exc
    finally:
        for m, mode in was_training.items():
            m.training = mode


__all__ = ["check_model_fits"]
