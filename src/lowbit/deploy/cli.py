"""``lowbit export RUN_DIR --format onnx|packed``: a trained run as an inference artefact, checked.

    lowbit export runs/xnor_resnet18-digits-20260101-120000                  # ONNX, checked in onnxruntime
    lowbit export runs/xnor_resnet18-digits-20260101-120000 --format packed  # bits + popcount kernels

Writes ``RUN_DIR/export/model.onnx`` or ``RUN_DIR/export/model.packed.pt`` (or
``--output``), then runs it on the run's test split against eager PyTorch and
prints the agreement (predictions and the largest logit difference); the packed
format also prints its weight memory. Exit code 1 if predictions differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a `lowbit train` run directory (config.yaml and checkpoints/last.pt)")
    parser.add_argument(
        "--format",
        choices=["onnx", "packed"],
        default="onnx",
        help="onnx: torch.onnx.export(dynamo=True), checked in onnxruntime; packed: lowbit.deploy's bit-packed model",
    )
    parser.add_argument("--output", default=None, help="file to write (default: RUN_DIR/export/model.onnx | model.packed.pt)")
    parser.add_argument("--test-subset", type=int, default=None, help="check on the first N test images only")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from lowbit.deploy.export import check_onnx, check_packed, export_onnx, load_packed, load_run, save_packed
    from lowbit.deploy.pack import pack_model
    from lowbit.deploy.summary import format_packed_summary, packed_summary

    if args.test_subset is not None and args.test_subset < 1:
        raise ValueError(f"--test-subset must be >= 1, got {args.test_subset}")
    loaded = load_run(args.run_dir, test_subset=args.test_subset)
    suffix = "model.onnx" if args.format == "onnx" else "model.packed.pt"
    output = Path(args.output) if args.output else loaded.run_dir / "export" / suffix
    if args.format == "onnx":
        try:
            import onnxruntime  # noqa: F401  (checked before the export's work)
        except ImportError:
            raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'lowbit[export]'") from None
        path = export_onnx(loaded.model, loaded.inputs[:2], output)
        agreement = check_onnx(path, loaded.model, loaded.inputs)
        name = "onnxruntime vs eager"
    else:
        packed = pack_model(loaded.model)  # raises naming every layer it cannot pack, before writing anything
        path = save_packed(output, packed, loaded.spec, loaded.mean, loaded.std)
        packed, _ = load_packed(path)  # what a user of the file gets
        print(format_packed_summary(packed_summary(loaded.model, packed)))
        agreement = check_packed(packed, loaded.model, loaded.inputs)
        name = "packed vs eager (exact eval form)"
    print(f"wrote {path} ({path.stat().st_size / 1024:,.1f} KiB)")
    print(agreement.line(name))
    return 0 if agreement.same_predictions == agreement.samples else 1
