"""Layers built from quantizers: binary (XNOR) and k-bit Linear/Conv2d, MaxDropout.

>>> layer = BinaryConv2d(16, 32, 3, padding=1)          # sign inputs, XNOR weights
>>> layer = BinaryLinear(64, 10, input_quantizer={"name": "ste_clipped", "clip": 0.5})
>>> layer = QuantConv2d(16, 32, 3, weight_bits=4, act_bits=4)
>>> model = binarize(float_model)                       # first and last layer stay float

Quantizers are given by spec: a ``lowbit.quant`` registry name, a dict
``{"name": ..., **params}``, a module, or None (float). The binary and k-bit
layers subclass ``nn.Linear`` / ``nn.Conv2d``: ``.weight`` is the latent float
weight; ``input_quantizer`` / ``weight_quantizer`` are submodules.
"""

from __future__ import annotations

from lowbit.nn.binary import (
    BinaryConv2d,
    BinaryLinear,
    QuantizedWeightLayer,
    binary_weight_parts,
    is_sign_quantizer,
    set_exact_eval,
)
from lowbit.nn.convert import binarize
from lowbit.nn.dropout import MaxDropout, max_dropout
from lowbit.nn.quantized import QuantConv2d, QuantLinear, SignedUniformActivation, signed_uniform_quantize
from lowbit.nn.quantize_model import (
    QUANT_CONFIG_KEYS,
    GradientStats,
    apply_quant_config,
    plot_gradient_histograms,
    quantize_model,
    storage_records,
    storage_table,
)
from lowbit.nn.quantized import LowBitTrainingLayer
from lowbit.nn.spec import (
    FLOAT_BITS,
    QuantizerSpec,
    fresh_quantizer,
    make_quantizer,
    quantizer_bits,
    quantizer_name,
)

__all__ = [
    "FLOAT_BITS",
    "BinaryConv2d",
    "BinaryLinear",
    "MaxDropout",
    "QuantConv2d",
    "QuantLinear",
    "QuantizedWeightLayer",
    "QuantizerSpec",
    "SignedUniformActivation",
    "binarize",
    "binary_weight_parts",
    "is_sign_quantizer",
    "fresh_quantizer",
    "make_quantizer",
    "max_dropout",
    "quantizer_bits",
    "quantizer_name",
    "set_exact_eval",
    "signed_uniform_quantize",
    # low-bit training (quantize_model.py)
    "QUANT_CONFIG_KEYS",
    "GradientStats",
    "LowBitTrainingLayer",
    "apply_quant_config",
    "plot_gradient_histograms",
    "quantize_model",
    "storage_records",
    "storage_table",
]
