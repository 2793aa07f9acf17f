"""Deployment: binary models packed to bits with XNOR-popcount kernels, and export.

>>> packed = pack_model(model)                 # eval-mode copy, binary layers on bits
>>> packed(x)                                  # = set_exact_eval(model.eval())(x), bit for bit
>>> print(format_packed_summary(packed_summary(model, packed)))
>>> save_packed("model.packed.pt", packed, spec); load_packed("model.packed.pt")
>>> torch.export.export(packed, (x,))          # also torch.compile, torch.jit.trace: custom ops (ops.py)

``lowbit export RUN_DIR --format onnx|packed`` does it for a trained run. See
docs/deploy.md: how a packed layer computes, the kernels, the packed format, the
export support matrix.
"""

from lowbit.deploy.export import check_onnx, check_packed, export_onnx, load_packed, load_run, save_packed
from lowbit.deploy.kernels import available_kernels, current_kernel, resolved_kernel, set_kernel, use_kernel
from lowbit.deploy.layers import PackedBinaryConv2d, PackedBinaryLinear
from lowbit.deploy.pack import PackError, PackedModel, pack_model, packing_problems
from lowbit.deploy.summary import format_packed_summary, packed_summary
from lowbit.deploy.twin import float_twin

__all__ = [
    "PackError",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "PackedModel",
    "available_kernels",
    "check_onnx",
    "check_packed",
    "current_kernel",
    "export_onnx",
    "float_twin",
    "format_packed_summary",
    "load_packed",
    "load_run",
    "pack_model",
    "packed_summary",
    "packing_problems",
    "resolved_kernel",
    "save_packed",
    "set_kernel",
    "use_kernel",
]
