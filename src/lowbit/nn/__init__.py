"""Layers built from quantizers: binary (XNOR) and k-bit Linear/Conv2d, MaxDropout.

>>> layer = BinaryConv2d(16, 32, 3, padding=1)          # sign inputs, XNOR weights
>>> layer = BinaryLinear(64, 10, input_quantizer={"name": "ste_clipped", "clip": 0.5})
>>> layer = QuantConv2d(16, 32, 3, w_bits=4, a_bits=4)
>>> converted = binarize(float_model, exclude=["layer4"])  # first and last layer stay float; returns the names

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
from lowbit.nn.binary_conv import BinaryConv1d, BinaryConvTranspose2d
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
from lowbit.nn.latent import (
    binary_layers,
    binary_weights,
    check_weight_clip,
    clip_latent_weights_,
    is_binary_layer,
    set_weight_clip,
)
from lowbit.nn.select import select_modules, select_parameters
from lowbit.nn.sign_inputs import DeadSignWarning, constant_quantized_inputs, nonnegative_inputs
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
    "BinaryConv1d",
    "BinaryConv2d",
    "BinaryConvTranspose2d",
    "DeadSignWarning",
    "BinaryLinear",
    "MaxDropout",
    "QuantConv2d",
    "QuantLinear",
    "QuantizedWeightLayer",
    "QuantizerSpec",
    "SignedUniformActivation",
    "binarize",
    "binary_layers",
    "binary_weight_parts",
    "binary_weights",
    "check_weight_clip",
    "clip_latent_weights_",
    "constant_quantized_inputs",
    "is_binary_layer",
    "is_sign_quantizer",
    "nonnegative_inputs",
    "select_modules",
    "select_parameters",
    "set_weight_clip",
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
