"""``lowbit models [NAME key=value ...]``: the model zoo as a table, or one model layer by layer.

Without a name: every model's parameters, size, precision and MACs. With a
name: that model's per-layer summary (the layer names are what
``probe.layers`` of a network probe takes), built with the given keywords and
summarised on its own ``input_shape`` unless ``--input-shape`` says otherwise,
e.g. ``lowbit models xnor_resnet18 width=8 --input-shape 1,32,32`` or
``lowbit models birealnet18 num_classes=1000`` (224x224, the published counts).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a model name: print its layers (default: the table of every model)")
    parser.add_argument("kwargs", nargs="*", help="create_model keywords for NAME, e.g. width=8")
    parser.add_argument(
        "--input-shape",
        default=None,
        help="C,H,W of one input image for the MAC count (default: 3,32,32 for the table; with NAME the "
        "model's own input shape, e.g. 3,224,224 for an ImageNet stem; toy_mlp uses its own dim)",
    )


def run(args: argparse.Namespace) -> int:
    from lowbit.models.table import models_table

    shape = None
    if args.input_shape is not None:
        try:
            shape = tuple(int(x) for x in args.input_shape.split(","))
        except ValueError:
            raise ValueError(f"--input-shape must be C,H,W integers like 3,32,32, got {args.input_shape!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"--input-shape must be three positive integers C,H,W, got {args.input_shape!r}")
    if args.name is not None and "=" in args.name:  # keywords without a name
        args.kwargs, args.name = [args.name, *args.kwargs], None
    if args.name is None:
        if args.kwargs:
            raise ValueError(f"keywords {args.kwargs} need a model name first, e.g. lowbit models xnor_resnet18 width=8")
        print(models_table(input_shape=shape or (3, 32, 32)))
        return 0
    print(_one_model(args.name, args.kwargs, shape))
    return 0


def _one_model(name: str, pairs: list, shape: tuple | None) -> str:
    """One model's summary, on ``shape`` or (None) on the model's own ``input_shape``."""
    import yaml

    from lowbit.models import create_model, format_summary, summary

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"model keywords are key=value, got {pair!r}")
        kwargs[key] = yaml.safe_load(value)
    if shape is not None:
        kwargs.setdefault("in_channels", shape[0])
    model = create_model(name, **kwargs)
    own = tuple(getattr(model, "input_shape", shape or (3, 32, 32)))
    return format_summary(summary(model, shape if shape is not None and len(own) == len(shape) else own))
