"""Quantizers: sign with every common surrogate gradient, XNOR scaling, ternary, k-bit uniform.

Each quantizer is a small ``nn.Module`` over a functional form built on one
``torch.autograd.Function`` (forward = quantization, backward = surrogate
derivative; ``torch.func.vmap`` and ``torch.func.grad`` work through it).
Create them by name:

>>> q = get_quantizer("swish_sign", beta=5.0)
>>> "ste_clipped" in list_sign_quantizers()
True
>>> type(get_quantizer("ste_sign", clip_value=0.5)).__name__   # Larq's name and keyword
'ClippedSignSTE'

Conventions: sign(0) = +1; any shape; output dtype = input dtype (float32,
bfloat16); device-agnostic. Random quantizers (``stochastic_sign``,
``uniform_weight(stochastic=True)``, ``stochastic_round``) need
``torch.func.vmap(..., randomness="different")`` (or ``"same"``).
"""

from __future__ import annotations

from lowbit.quant.base import (
    QUANTIZERS,
    Quantizer,
    get_quantizer,
    list_quantizers,
    list_sign_quantizers,
    register_quantizer,
)
from lowbit.quant.aliases import ALIASES, list_quantizer_aliases
from lowbit.quant.functional import hard_sign, quantize_with_surrogate, round_half_away
from lowbit.quant.fused import fused_available, set_fused, use_fused
from lowbit.quant.sign import (
    ApproxSign,
    ClippedSignSTE,
    SignSTE,
    SteepSignSTE,
    SwishSign,
    VariantSignSTE,
    sign_ste,
    sign_surrogates,
)
from lowbit.quant.step import SteHeaviside, SteTern, Step01, ste_heaviside, ste_tern, step01
from lowbit.quant.stochastic import StochasticSign, stochastic_sign
from lowbit.quant.uniform import (
    DoReFa,
    UniformActivation,
    UniformWeight,
    dorefa,
    stochastic_round,
    uniform_act,
    uniform_weight,
)
from lowbit.quant.lowbit_training import (
    CLIPS,
    DEFAULT_CLIP_FRACTIONS,
    ROUNDINGS,
    SCALES,
    GradientQuantizer,
    UniformGridQuantizer,
    cosine_distance,
    deviation_lr_scale,
    direction_clip,
    direction_clip_search,
    grid_step,
    is_power_of_two,
    quantize_backward,
    quantize_tensor,
    quantize_tensor_with_step,
    round_to_grid,
    step_for_range,
    uniform_grid,
)
from lowbit.quant.windowed import WindowedApproxSign, approx_sign_window
from lowbit.quant.weights import (
    MagnitudeAwareSign,
    XNORWeight,
    magnitude_aware_sign,
    mean_abs,
    xnor_weight,
)

__all__ = [
    # registry
    "QUANTIZERS",
    "Quantizer",
    "get_quantizer",
    "list_quantizers",
    "list_sign_quantizers",
    "register_quantizer",
    # Larq / bitorch names (aliases.py)
    "ALIASES",
    "list_quantizer_aliases",
    # modules
    "ApproxSign",
    "ClippedSignSTE",
    "DoReFa",
    "MagnitudeAwareSign",
    "SignSTE",
    "SteHeaviside",
    "SteTern",
    "SteepSignSTE",
    "Step01",
    "StochasticSign",
    "SwishSign",
    "UniformActivation",
    "UniformWeight",
    "VariantSignSTE",
    "WindowedApproxSign",
    "XNORWeight",
    # functional forms
    "approx_sign_window",
    "dorefa",
    "fused_available",
    "hard_sign",
    "magnitude_aware_sign",
    "mean_abs",
    "quantize_with_surrogate",
    "round_half_away",
    "set_fused",
    "sign_ste",
    "sign_surrogates",
    "ste_heaviside",
    "ste_tern",
    "step01",
    "stochastic_round",
    "stochastic_sign",
    "uniform_act",
    "uniform_weight",
    "use_fused",
    "xnor_weight",
    # low-bit training: W, A, G, E grids (lowbit_training.py)
    "CLIPS",
    "DEFAULT_CLIP_FRACTIONS",
    "ROUNDINGS",
    "SCALES",
    "GradientQuantizer",
    "UniformGridQuantizer",
    "cosine_distance",
    "deviation_lr_scale",
    "direction_clip",
    "direction_clip_search",
    "grid_step",
    "is_power_of_two",
    "quantize_backward",
    "quantize_tensor",
    "quantize_tensor_with_step",
    "round_to_grid",
    "step_for_range",
    "uniform_grid",
]
