"""Low-bit training: k-bit W, A, G, E grids, stochastic rounding, direction-sensitive clipping, quantize_model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lowbit.nn import (
    QUANT_CONFIG_KEYS,
    GradientStats,
    QuantConv2d,
    QuantLinear,
    apply_quant_config,
    plot_gradient_histograms,
    quantize_model,
    quantizer_bits,
    storage_records,
    storage_table,
)
from lowbit.quant import (
    DEFAULT_CLIP_FRACTIONS,
    GradientQuantizer,
    cosine_distance,
    deviation_lr_scale,
    direction_clip,
    grid_step,
    is_power_of_two,
    quantize_backward,
    quantize_tensor,
    step_for_range,
    uniform_grid,
    uniform_weight,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- an independent reference quantizer (plain Python arithmetic on the range) --------


def ref_step(t: torch.Tensor, bits: int, scale: str, r: float | None = None) -> float:
    n = 2 ** (bits - 1) - 1
    r = float(t.detach().abs().max()) if r is None else r
    if r == 0:
        return 1.0  # an all-zero tensor is on every grid
    return r / n if scale == "maxabs" else 2.0 ** math.ceil(math.log2(r / n))


def ref_quant(t: torch.Tensor, bits: int, scale: str = "maxabs", r: float | None = None) -> torch.Tensor:
    """s clamp(round_half_away(t / s), -n, n)."""
    n = 2 ** (bits - 1) - 1
    s = ref_step(t, bits, scale, r)
    y = t.double() / s
    rounded = torch.sign(y) * torch.floor(y.abs() + 0.5)
    return (rounded.clamp(-n, n) * s).to(t.dtype)


def assert_on_grid(values: torch.Tensor, step: float, bits: int) -> None:
    n = 2 ** (bits - 1) - 1
    levels = values.detach().double() / step
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max() <= n + 1e-4


def error_observer(seen: list):
    def observe(quantizer, grad, quantized, step, r):
        seen.append((grad.detach().clone(), quantized.detach().clone(), float(step), float(r)))

    return observe


# --- the grids of W, A, G, E ---------------------------------------------------------


@pytest.mark.parametrize("scale", ["maxabs", "pow2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_w_a_g_e_lie_on_the_k_bit_grid(scale, bits):
    layer = QuantLinear(10, 6, w_bits=bits, a_bits=bits, g_bits=bits, e_bits=bits, scale=scale)
    seen_e: list = []
    layer.error_quantizer.observer = error_observer(seen_e)
    x = torch.randn(16, 10, requires_grad=True)
    out = layer(x)
    (out * torch.randn_like(out)).sum().backward()

    assert_on_grid(layer.quantized_weight(), ref_step(layer.weight, bits, scale), bits)  # W
    assert_on_grid(layer.quantize_input(x), ref_step(x, bits, scale), bits)  # A
    (_, e_q, e_step, _) = seen_e[0]
    assert_on_grid(e_q, e_step, bits)  # E
    # G = E_q^T A_q, then quantized with its own range.
    g_float = e_q.t() @ layer.quantize_input(x).detach()
    assert_on_grid(layer.weight.grad, ref_step(g_float, bits, scale), bits)  # G
    if bits > 2:  # at 2 bits the grid {-s, 0, s} can zero out E or A entirely
        assert layer.weight.grad.abs().max() > 0


def test_e_on_the_grid_through_the_functional_form():
    x = torch.randn(5, 7, requires_grad=True)
    upstream = torch.randn(5, 7)
    y = quantize_backward(x, 4, rounding="nearest")
    torch.testing.assert_close(y, x)  # identity forward
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, ref_quant(upstream, 4))


def test_maxabs_grid_is_uniform_weight():
    w = torch.randn(6, 5)
    torch.testing.assert_close(uniform_grid(w, 4, "maxabs"), uniform_weight(w, 4))
    torch.testing.assert_close(quantize_tensor(w, 4), ref_quant(w, 4))


# --- stochastic rounding -------------------------------------------------------------


def test_stochastic_rounding_is_unbiased():
    bits, draws = 4, 4000
    x = torch.linspace(-0.9, 0.9, 37)  # many fractional positions between grid points
    x = torch.cat([x, torch.tensor([1.0])])  # fixes max|x| = 1, so every row has the same step
    step = ref_step(x, bits, "maxabs")
    gen = torch.Generator().manual_seed(1)
    q = quantize_tensor(x.expand(draws, -1), bits, rounding="stochastic", generator=gen)  # (draws, 38)
    assert_on_grid(q, step, bits)
    standard_error = step * 0.5 / math.sqrt(draws)  # Bernoulli step: sd <= step / 2
    assert (q.mean(0) - x).abs().max() < 5 * standard_error
    # and not just nearest rounding in disguise
    assert (q.std(0) > 0).sum() > 30


def test_stochastic_g_in_backward_is_unbiased_and_float_accumulates():
    torch.manual_seed(3)
    layer = QuantLinear(4, 3, w_bits=None, a_bits=None, g_bits=3, g_rounding="stochastic")
    x = torch.randn(8, 4)
    reference = nn.Linear(4, 3)
    reference.load_state_dict(layer.state_dict())
    reference(x).square().sum().backward()
    draws = 400
    for _ in range(draws):  # .grad accumulates the quantized G in float32
        layer(x).square().sum().backward()
    g = reference.weight.grad
    step = ref_step(g, 3, "maxabs")
    assert (layer.weight.grad / draws - g).abs().max() < 5 * step * 0.5 / math.sqrt(draws)


# --- the hand-written reference: a 2x3 QuantLinear ------------------------------------


@pytest.mark.parametrize("scale", ["maxabs", "pow2"])
def test_quant_linear_gradients_match_hand_reference(scale):
    bits = dict(w=4, a=5, g=3, e=4)
    layer = QuantLinear(
        3, 2, w_bits=bits["w"], a_bits=bits["a"], g_bits=bits["g"], e_bits=bits["e"],
        scale=scale, g_rounding="nearest", e_rounding="nearest",
    )  # fmt: skip
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 2)  # dL/dy for L = sum(y * upstream)
    (layer(x) * upstream).sum().backward()

    w, b, x0 = layer.weight.detach(), layer.bias.detach(), x.detach()
    w_q, x_q = ref_quant(w, bits["w"], scale), ref_quant(x0, bits["a"], scale)
    e_q = ref_quant(upstream, bits["e"], scale)  # (4, 2): the error entering the layer
    g_q = ref_quant(e_q.t() @ x_q, bits["g"], scale)  # (2, 3)
    torch.testing.assert_close(layer(x0), x_q @ w_q.t() + b)
    torch.testing.assert_close(layer.weight.grad, g_q)
    torch.testing.assert_close(x.grad, e_q @ w_q)  # STE through Q_a
    torch.testing.assert_close(layer.bias.grad, e_q.sum(0))  # the bias gradient stays float


def test_stochastic_g_matches_reference_with_the_same_generator():
    layer = QuantLinear(
        3, 2, w_bits=None, a_bits=None, g_bits=4, e_bits=None, generator=torch.Generator().manual_seed(7)
    )
    x = torch.randn(4, 3)
    upstream = torch.randn(4, 2)
    (layer(x) * upstream).sum().backward()

    g = upstream.t() @ x  # float G of a plain Linear
    step = ref_step(g, 4, "maxabs")
    noise = torch.rand(g.shape, generator=torch.Generator().manual_seed(7))
    y = g / step
    expected = (torch.floor(y) + (noise < y - torch.floor(y)).float()).clamp(-7, 7) * step
    torch.testing.assert_close(layer.weight.grad, expected)


def test_quantized_g_survives_deepcopy_pickling_and_functional_call():
    import copy
    import io

    from torch.func import functional_call

    model = quantize_model(nn.Sequential(nn.Linear(4, 3)), g_rounding="nearest")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(model), torch.load(buffer, weights_only=False)]
    x = torch.randn(5, 4)
    for m in (model, *copies):
        m(x).square().sum().backward()
    for m in copies:
        torch.testing.assert_close(m[0].weight.grad, model[0].weight.grad, rtol=0, atol=0)
    # functional_call substitutes the weight: G is quantized on the substitute too (a hook would not fire)
    w = model[0].weight.detach().clone().requires_grad_()
    functional_call(model, {"0.weight": w, "0.bias": model[0].bias}, (x,)).square().sum().backward()
    torch.testing.assert_close(w.grad, model[0].weight.grad, rtol=0, atol=0)


def test_all_float_layer_matches_plain_linear_and_conv():
    lin = QuantLinear(3, 2, w_bits=None, a_bits=None)
    plain = nn.Linear(3, 2)
    plain.load_state_dict(lin.state_dict())
    x1 = torch.randn(4, 3, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    lin(x1).square().sum().backward()
    plain(x2).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, plain.weight.grad)
    torch.testing.assert_close(x1.grad, x2.grad)
    conv = QuantConv2d(2, 3, 3, w_bits=None, a_bits=None, g_bits=8, e_bits=8)
    assert isinstance(conv.grad_quantizer, GradientQuantizer) and conv.error_quantizer.rounding == "nearest"
    assert conv(torch.randn(2, 2, 5, 5)).shape == (2, 3, 3, 3)


# --- power-of-two scales -------------------------------------------------------------


def test_pow2_steps_are_powers_of_two_and_cover_the_range():
    ranges = torch.cat([torch.rand(200) * 10.0 ** torch.randint(-8, 4, (200,)).float(), torch.tensor([0.0, 127.0])])
    for bits in (2, 4, 8):
        n = 2 ** (bits - 1) - 1
        for r in ranges:
            s = step_for_range(r, bits, "pow2")
            assert bool(is_power_of_two(s)), (float(r), float(s))
            if r > 0:
                assert n / 2 < float(r) / float(s) <= n + 1e-6  # covers max|x|, loses at most one bit
    assert not bool(is_power_of_two(torch.tensor(3.0))) and bool(is_power_of_two(torch.tensor(0.125)))
    # in a layer: the G and E steps actually used are powers of two
    layer = QuantLinear(5, 4, g_bits=8, e_bits=8, scale="pow2")
    steps: list = []
    for quantizer in (layer.grad_quantizer, layer.error_quantizer):
        quantizer.observer = error_observer(steps)
    layer(torch.randn(3, 5)).square().sum().backward()
    assert len(steps) == 2 and all(bool(is_power_of_two(torch.tensor(s))) for _, _, s, _ in steps)
    assert bool(is_power_of_two(grid_step(layer.weight, 8, "pow2")))


# --- direction-sensitive clipping ----------------------------------------------------


def test_direction_clip_picks_the_min_cosine_distance_and_clips_an_outlier():
    bits = 4
    g = torch.cat([torch.randn(1000), torch.tensor([30.0])])  # one huge outlier
    c = float(direction_clip(g, bits))

    def distance(c_value: float) -> float:  # independent reference: clamp, quantize with range c, cosine
        q = ref_quant(g.clamp(-c_value, c_value), bits, "maxabs", r=c_value)
        return 1.0 - float(torch.dot(g.double(), q.double()) / (g.double().norm() * q.double().norm()))

    candidates = [f * 30.0 for f in DEFAULT_CLIP_FRACTIONS]
    best = min(candidates, key=distance)
    assert c == pytest.approx(best)
    assert c < 30.0  # the outlier is clipped
    assert distance(c) < distance(30.0) - 0.05
    q = quantize_tensor(g, bits, clip="direction")
    assert float(q.abs().max()) == pytest.approx(c, rel=1e-6)
    assert float(cosine_distance(g, q)) == pytest.approx(distance(c), abs=1e-6)


def test_clip_interval_reuses_the_clip_fraction():
    quantizer = GradientQuantizer(4, rounding="nearest", clip="direction", clip_interval=3)
    seen: list = []
    quantizer.observer = error_observer(seen)
    g = torch.cat([torch.randn(1000), torch.tensor([30.0])])
    searched = float(direction_clip(g, 4))
    for factor in (1.0, 2.0, 0.5, 3.0):  # a search on passes 0 and 3, the fraction reused on 1 and 2
        quantizer.quantize(g * factor)
    ranges = [r for _, _, _, r in seen]
    assert ranges == pytest.approx([searched, 2 * searched, 0.5 * searched, 3 * searched], rel=1e-5)
    assert "clip_interval=3" in repr(quantizer)


def test_clip_schedule_state_round_trip():
    """A resumed run continues the clip_interval schedule where the checkpoint left it (lowbit train saves it)."""
    gen = torch.Generator().manual_seed(1)

    def sharp(spike: float) -> torch.Tensor:  # a different optimal clip fraction for each spike height
        return torch.cat([torch.randn(1000, generator=gen), torch.tensor([spike])])

    passes = [sharp(s) for s in (30.0, 5.0, 3.0, 60.0, 8.0)]
    original = GradientQuantizer(4, rounding="nearest", clip="direction", clip_interval=3)
    for g in passes[:2]:  # a search, then one reuse: the next pass reuses the first fraction
        original.quantize(g)
    restored = GradientQuantizer(4, rounding="nearest", clip="direction", clip_interval=3)
    restored.load_schedule_state(original.schedule_state())
    fresh = GradientQuantizer(4, rounding="nearest", clip="direction", clip_interval=3)  # no state: searches now
    reused = original.quantize(passes[2])
    assert torch.equal(restored.quantize(passes[2]), reused)
    assert not torch.equal(fresh.quantize(passes[2]), reused)  # the state matters on this pass
    for g in passes[3:]:  # search, reuse: the same on both
        assert torch.equal(restored.quantize(g), original.quantize(g))


def test_clip_search_bin_sums_agree_on_both_paths():
    from lowbit.quant.lowbit_training import _below_edges

    magnitudes = (torch.randn(3000) * torch.rand(3000).pow(4)).abs().double()
    edges = torch.unique(torch.cat([torch.rand(200).double() * magnitudes.max(), magnitudes[:20]]))  # exact ties too
    fast, by_sort = _below_edges(magnitudes, edges, use_sort=False), _below_edges(magnitudes, edges, use_sort=True)
    for a, b in zip(fast, by_sort):
        torch.testing.assert_close(a, b)
    count, total = _below_edges(magnitudes, edges)
    assert count[0] == 0 and count[-1] == magnitudes.numel()
    assert count[5] == (magnitudes < edges[4]).sum() and total[-1] == pytest.approx(float(magnitudes.sum()))


def test_direction_clip_ties_keep_the_largest_range():
    g = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])  # any clip keeps the direction: no clipping needed
    assert float(direction_clip(g, 8)) == 1.0
    assert float(direction_clip(torch.zeros(4), 8)) == 0.0
    torch.testing.assert_close(quantize_tensor(torch.zeros(4), 8, clip="direction"), torch.zeros(4))


def test_deviation_lr_scale():
    assert deviation_lr_scale(0.0) == 1.0
    assert deviation_lr_scale(1.0) == pytest.approx(0.1)  # floored at beta
    assert deviation_lr_scale(0.01) == pytest.approx(math.exp(-0.2))


# --- options and errors --------------------------------------------------------------


def test_options_are_validated_together():
    with pytest.raises(ValueError) as info:
        QuantLinear(3, 2, g_bits=1, scale="log", e_rounding="up", e_clip="direction")
    message = str(info.value)
    for fragment in ("g_bits", "scale", "e_rounding", "e_clip"):
        assert fragment in message
    with pytest.raises(ValueError, match="clip_fractions"):
        GradientQuantizer(8, clip_fractions=(0.5, 2.0))
    layer = QuantLinear(3, 2, g_bits=32, e_bits=None)  # >= 32 bits is float
    assert layer.grad_quantizer is None and layer.error_quantizer is None
    assert quantizer_bits(QuantLinear(3, 2, g_bits=6).grad_quantizer) == 6


# --- quantize_model / apply_quant_config ---------------------------------------------


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
    )


def test_quantize_model_converts_convs_and_linears_keeps_weights_and_float_bn():
    model = small_net()
    params = {name: p for name, p in model.named_parameters()}
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(2, 1, 6, 6)
    assert quantize_model(model) is model
    assert [type(m).__name__ for m in model] == [
        "QuantConv2d", "BatchNorm2d", "ReLU", "QuantConv2d", "BatchNorm2d", "ReLU", "Flatten", "QuantLinear",
    ]  # fmt: skip
    assert all(model[i] is bn for i, bn in zip((1, 4), bns))  # the same BatchNorm modules, untouched
    for name, p in model.named_parameters():
        assert p is params[name] and p.dtype == torch.float32  # the same Parameter objects
    conv = model[0]
    assert (conv.w_bits, conv.a_bits, conv.g_bits, conv.e_bits) == (8, 8, 8, 8)
    assert conv.grad_quantizer.rounding == "stochastic" and conv.bias is None and conv.padding == (1, 1)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # BatchNorm parameters and statistics stay float (not on an 8-bit grid)
    assert bns[0].running_var.dtype == torch.float32 and bns[0].weight.grad.unique().numel() > 1


def test_quantize_model_keep_first_last_and_float_bits():
    model = quantize_model(small_net(), keep_first_last=True)
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear and isinstance(model[3], QuantConv2d)
    model = quantize_model(small_net(), w_bits=None, a_bits=None, g_bits=None, e_bits=8)
    assert model[0].weight_quantizer is None and model[0].grad_quantizer is None
    assert model[0].error_quantizer.bits == 8


def test_apply_quant_config():
    model = apply_quant_config(small_net(), {"w_bits": 2, "g_bits": 8, "scale": "pow2", "g_clip": "direction"})
    assert model[0].w_bits == 2 and model[0].grad_quantizer.clip == "direction" and model[0].scale == "pow2"
    assert type(apply_quant_config(small_net(), None)[0]) is nn.Conv2d
    clipped = apply_quant_config(small_net(), {"g_clip": "direction"})  # g_bits defaults to 8, as quantize_model
    assert clipped[0].g_bits == 8 and clipped[0].grad_quantizer.clip == "direction"
    with pytest.raises(ValueError) as info:
        apply_quant_config(small_net(), {"w_bit": 8, "e_rounding": "sideways"})
    assert "'w_bits'" in str(info.value) and "e_rounding" in str(info.value)


@pytest.mark.parametrize("name", ["train-digits-int8.yaml", "train-cifar10-int8.yaml"])
def test_int8_configs_have_a_valid_quant_section(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    quant = config["quant"]
    assert set(quant) <= set(QUANT_CONFIG_KEYS)
    assert (quant["w_bits"], quant["a_bits"], quant["g_bits"], quant["e_bits"]) == (8, 8, 8, 8)
    model = apply_quant_config(small_net(), quant)
    assert isinstance(model[3], QuantConv2d)


# --- storage -------------------------------------------------------------------------


def test_storage_records_and_table():
    model = quantize_model(small_net(), w_bits=4)
    records = storage_records(model)
    by_layer = {r["layer"]: r for r in records}
    assert by_layer["0"]["storage_bits"] == 36 * 4  # 4x1x3x3 weights at 4 bits, no bias
    assert by_layer["3"]["storage_bits"] == 144 * 4 + 4 * 32
    assert by_layer["1"]["storage_bits"] == 8 * 32 and by_layer["1"]["w_bits"] is None  # BatchNorm: float
    total = by_layer["(total)"]
    assert total["params"] == sum(p.numel() for p in model.parameters())
    assert total["storage_bits"] == sum(r["storage_bits"] for r in records[:-1])
    assert 0 < total["saving"] < 1 and total["compression"] == pytest.approx(total["fp32_bits"] / total["storage_bits"])
    table = storage_table(model)
    assert table.count("\n") == len(records) + 1 and "| 4/8/8/8 |" in table


# --- gradient statistics -------------------------------------------------------------


def test_gradient_stats_records_and_plot(tmp_path):
    model = quantize_model(small_net(), keep_first_last=True)  # float first/last: the hook path too
    stats = GradientStats(model, every=2, bins=16).attach()
    for step in range(4):
        stats.step = step
        model(torch.randn(4, 1, 6, 6)).square().sum().backward()
    stats.detach()
    model(torch.randn(4, 1, 6, 6)).sum().backward()  # detached: nothing more is recorded
    assert len(stats.records) == 3 * 2 * 2  # 3 layers x 2 kinds x passes 0 and 2
    assert {r["step"] for r in stats.records} == {0, 2}
    for r in stats.records:
        for key in ("frac_exact_zero", "frac_zero_nearest", "frac_zero_stochastic"):
            assert 0.0 <= r[key] <= 1.0
        assert r["frac_exact_zero"] <= r["frac_zero_nearest"] + 1e-12
        assert r["quantized"] == (r["layer"] == "3")
        if r["quantized"]:
            assert r["frac_zero_quantized"] is not None and r["cos_distance"] < 0.05
        else:
            assert r["rounding"] == "float" and r["bits"] == 8
    hist = [h for h in stats.histograms if h["layer"] == "3" and h["kind"] == "G" and h["step"] == 0]
    assert len(hist) == 16 and sum(h["count"] for h in hist) == 4 * 4 * 9
    path = plot_gradient_histograms(stats, tmp_path / "g.png")
    assert path.exists() and path.stat().st_size > 1000
    assert model[3].grad_quantizer.observer is None
