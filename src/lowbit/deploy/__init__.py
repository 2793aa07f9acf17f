"""Deployment: binary models packed to bits with XNOR-popcount kernels, and export.

>>> packed = pack_model(model)                 # eval-mode copy, binary layers on bits
>>> packed(x)                                  # = set_exact_eval(model.eval())(x), bit for bit
>>> print(format_packed_summary(packed_summary(model, packed)))

See docs/deploy.md: the packed format, ONNX export, the support matrix and speed.
"""

from lowbit.deploy.kernels import available_kernels, current_kernel, resolved_kernel, set_kernel, use_kernel
from lowbit.deploy.layers import PackedBinaryConv2d, PackedBinaryLinear
from lowbit.deploy.pack import PackError, PackedModel, pack_model, packing_problems

__all__ = [
    "PackError",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "PackedModel",
    "available_kernels",
    "current_kernel",
    "pack_model",
    "packing_problems",
    "resolved_kernel",
    "set_kernel",
    "use_kernel",
]
