"""``lowbit models``: the model zoo as a table (parameters, size, precision, MACs)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        default="3,32,32",
        help="C,H,W of one input image for the MAC count (default 3,32,32; toy_mlp uses its own dim)",
    )


def run(args: argparse.Namespace) -> int:
    from lowbit.models.table import models_table

    try:
        shape = tuple(int(x) for x in args.input_shape.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be C,H,W integers like 3,32,32, got {args.input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input-shape must be three positive integers C,H,W, got {args.input_shape!r}")
    print(models_table(input_shape=shape))
    return 0
