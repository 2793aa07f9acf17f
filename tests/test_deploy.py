"""lowbit.deploy: packed bits, the XNOR-popcount kernels and packed models, against independent references.

Kernels are checked against a float +-1 matrix product (an independent way to get the
same integers); packed layers and models against the simulated ``lowbit.nn`` layers in
their exact eval form, bit for bit, on every kernel this machine runs (AVX-512, AVX2,
portable C++) and on the pure-PyTorch fallback.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.deploy import PackError, available_kernels, pack_model, resolved_kernel, use_kernel
from lowbit.deploy import kernels
from lowbit.deploy.bits import pack_bits, popcount, unpack_bits
from lowbit.deploy.fold import sign_thresholds
from lowbit.deploy.twin import float_twin
from lowbit.models import create_model
from lowbit.nn import BinaryConv2d, BinaryLinear, QuantConv2d, set_exact_eval

ALL_KERNELS = ["avx512", "avx2", "portable", "torch"]


@pytest.fixture(params=ALL_KERNELS)
def kernel(request):
    if request.param not in available_kernels():
        pytest.skip(f"kernel {request.param} not available here ({kernels.build_error() or 'CPU'})")
    with use_kernel(request.param):
        yield request.param


def generator(seed):
    return torch.Generator().manual_seed(seed)


def random_words(*shape, seed=0):
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=generator(seed))


def simulated(layer, x):
    """The reference: the lowbit.nn layer in eval mode, exact eval form."""
    layer = set_exact_eval(layer.eval())
    with torch.no_grad():
        return layer(x)


def randomize_batchnorm(module, seed):
    g = generator(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 3)
            m.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
            m.weight.data[0] = -abs(m.weight.data[0]) - 0.5  # a decreasing channel
            if c > 2:
                m.weight.data[1] = 0.0  # a constant channel: its bit is the sign of beta


# --- bits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 130])
def test_pack_unpack_roundtrip(n):
    bits = torch.rand(3, 4, n, generator=generator(n)) < 0.5
    words = pack_bits(bits)
    assert words.shape == (3, 4, -(-n // 64)) and words.dtype == torch.int64
    assert torch.equal(unpack_bits(words, n), bits)
    # bit b of word w is entry 64 w + b: check one by hand
    one = torch.zeros(n, dtype=torch.bool)
    one[n - 1] = True
    expected = [0] * (-(-n // 64))
    expected[(n - 1) // 64] = (1 << ((n - 1) % 64)) - (1 << 64 if (n - 1) % 64 == 63 else 0)
    assert pack_bits(one).tolist() == expected


def test_popcount_matches_python():
    words = random_words(2000)
    expected = [bin(w & (2**64 - 1)).count("1") for w in words.tolist()]
    assert popcount(words).tolist() == expected
    assert popcount(torch.tensor([0, -1, -(2**63)])).tolist() == [0, 64, 1]


def float_popcount_reference(a, bt, n):
    """popcount(A XOR B) from +-1 float matrices: K - dot = 2 popcount (exact integers)."""
    groups, m, kw = a.shape
    out = []
    for g in range(groups):
        sa = unpack_bits(a[g], kw * 64).double() * 2 - 1  # (M, K)
        sb = unpack_bits(bt[g, :, :n].t().contiguous(), kw * 64).double() * 2 - 1  # (n, K)
        out.append(((kw * 64 - sa @ sb.t()) / 2).round().to(torch.int32))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("groups, m, kw, n", [(1, 1, 1, 1), (1, 7, 3, 5), (2, 13, 9, 40), (1, 50, 18, 64), (3, 31, 2, 33), (1, 6, 72, 96)])
def test_popcount_gemm_matches_float_reference(kernel, groups, m, kw, n):
    a = random_words(groups, m, kw, seed=1)
    padded = -(-n // 32) * 32
    bt = random_words(groups, kw, padded, seed=2)
    bt[:, :, n:] = 0  # the panel's padding columns
    assert torch.equal(kernels.popcount_gemm(a, bt, n), float_popcount_reference(a, bt, n))


@pytest.mark.parametrize("channels, groups", [(1, 1), (3, 1), (64, 1), (65, 1), (130, 2), (8, 4)])
def test_pack_signs_matches_reference(kernel, channels, groups):
    x = torch.randn(2, channels, 3, 5, generator=generator(channels))
    x.view(-1)[:6] = torch.tensor([math.nan, -0.0, 0.0, math.inf, -math.inf, -1e-45])
    words = kernels.pack_signs(x, groups)
    expected = pack_bits((x >= 0).permute(0, 2, 3, 1).reshape(2, 3, 5, groups, channels // groups))
    assert torch.equal(words, expected)


# --- packed layers against the simulated ones ------------------------------------------

CONV_CASES = [
    dict(cin=3, cout=5, k=3, stride=1, padding=1),
    dict(cin=16, cout=8, k=3, stride=2, padding=1, bias=True),
    dict(cin=70, cout=33, k=3, stride=1, padding=2, dilation=2),  # 70 channels: 2 words, 6 bits of padding
    dict(cin=8, cout=12, k=3, stride=1, padding=1, groups=4),
    dict(cin=6, cout=6, k=3, stride=1, padding=1, groups=6),  # depthwise
    dict(cin=130, cout=64, k=1, stride=1, padding=0),  # 1x1: im2col is a view
    dict(cin=4, cout=7, k=5, stride=3, padding=2, wq="magnitude_aware_sign"),
    dict(cin=9, cout=4, k=(3, 1), stride=(1, 2), padding=(1, 0), wq={"name": "xnor_weight", "per_channel": False}),
    dict(cin=5, cout=4, k=2, stride=1, padding="valid", wq="ste", act="swish_sign"),
    dict(cin=5, cout=4, k=3, stride=1, padding="same", act="stochastic_sign"),
]


def make_conv(case, seed=0):
    torch.manual_seed(seed)
    return BinaryConv2d(
        case["cin"], case["cout"], case["k"], stride=case["stride"], padding=case["padding"],
        dilation=case.get("dilation", 1), groups=case.get("groups", 1), bias=case.get("bias", False),
        input_quantizer=case.get("act", "ste_clipped"), weight_quantizer=case.get("wq", "xnor_weight"),
    )


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_packed_conv_equals_simulated_bit_for_bit(kernel, case):
    layer = make_conv(case)
    x = torch.randn(3, case["cin"], 9, 7, generator=generator(5))
    x[0, 0, :2, :2] = 0.0  # exact zeros: sign(0) = +1 in both
    packed = pack_model(nn.Sequential(layer))
    out = packed(x)
    expected = simulated(layer, x)
    assert out.shape == expected.shape and torch.equal(out, expected)
    # and the default (one-op) eval form is the same function up to float32 rounding
    layer.exact_eval = False
    with torch.no_grad():
        torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_simulated(kernel, bias):
    torch.manual_seed(1)
    layer = BinaryLinear(100, 13, bias=bias)
    x = torch.randn(2, 5, 100, generator=generator(1))  # extra leading dims
    assert torch.equal(pack_model(nn.Sequential(layer))(x), simulated(layer, x))


class ConvChain(nn.Module):
    """float -> BN -> sign -> conv1 -> BN -> sign -> grouped conv2 -> sign -> conv3 (no BN) -> float."""

    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(10)
        self.conv1 = BinaryConv2d(10, 12, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = BinaryConv2d(12, 8, 3, stride=2, padding=1, groups=2)
        self.conv3 = BinaryConv2d(8, 6, 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.bn1(self.conv1(self.bn0(x)))))


class LinearChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = BinaryLinear(70, 40)
        self.bn = nn.BatchNorm1d(40)
        self.fc2 = BinaryLinear(40, 9, bias=True)

    def forward(self, x):
        return self.fc2(self.bn(self.fc1(x)))


@pytest.mark.parametrize("make", [ConvChain, LinearChain])
def test_chains_stay_in_bits_and_equal_simulated(kernel, make):
    torch.manual_seed(2)
    model = make()
    randomize_batchnorm(model, seed=3)
    x = torch.randn(4, 10, 8, 8) if make is ConvChain else torch.randn(6, 70)
    packed = pack_model(model)
    layers = packed.layers()
    remaining = {name for name, m in packed.graph_module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if make is ConvChain:
        assert layers["conv1"].output_bits and not layers["conv1"].input_is_bits  # bn1 + conv2's sign folded
        assert layers["conv2"].input_is_bits and layers["conv2"].output_bits  # conv2 -> conv3 directly
        assert layers["conv3"].input_is_bits and not layers["conv3"].output_bits
        assert remaining == {"bn0"}  # bn0 feeds a float input: applied as is, then packed
    else:
        assert layers["fc1"].output_bits and layers["fc2"].input_is_bits and remaining == set()
    assert torch.equal(packed(x), simulated(model, x))


def test_sign_thresholds_match_brute_force():
    torch.manual_seed(4)
    c, k = 9, 37
    alpha = torch.rand(c) + 0.01
    alpha[2] = 0.0  # an all-zero weight channel: output constant
    bias = torch.randn(c)
    bn = nn.BatchNorm2d(c).eval()
    randomize_batchnorm(bn, seed=5)
    s, t = sign_thresholds(alpha, bias, bn, k, spatial=True)
    d = torch.arange(-k, k + 1, dtype=torch.float32)
    with torch.no_grad():
        z = bn(d.reshape(-1, 1, 1, 1) * alpha.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)).reshape(-1, c)
    expected = z >= 0
    got = s * d.int().reshape(-1, 1) >= t
    assert torch.equal(got, expected)
    assert s[0] == -1  # randomize_batchnorm made channel 0 decreasing


def test_trained_model_packed_equals_simulated_on_digits(kernel):
    """A small XNOR ResNet trained briefly on digits: packed logits = simulated, bit for bit."""
    from lowbit.data import load_dataset, normalize

    train = load_dataset("digits", "train", image_size=None)
    test = load_dataset("digits", "test", image_size=None)
    torch.manual_seed(0)
    model = create_model("xnor_resnet18", num_classes=10, in_channels=1, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_train = normalize(train.images[:512], train.mean, train.std)
    for step in range(16):
        idx = torch.arange(step * 32, step * 32 + 32) % 512
        loss = F.cross_entropy(model(x_train[idx]), train.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = normalize(test.images, test.mean, test.std)  # (360, 1, 8, 8)
    packed = pack_model(model)
    out = packed(x)
    assert torch.equal(out, simulated(model, x))
    set_exact_eval(model, False)
    with torch.no_grad():
        default = model(x)
    assert torch.equal(out.argmax(1), default.argmax(1))  # the default eval form predicts the same
    assert (out.argmax(1) == test.labels).float().mean() > 0.3  # it learned something (10 classes)


# --- errors, modes, fallback ----------------------------------------------------------------


def test_unpackable_layers_are_all_named_before_packing():
    model = nn.Sequential(
        BinaryConv2d(3, 4, 3, padding=1, input_quantizer=None),
        BinaryConv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        BinaryConv2d(4, 4, 3, padding=1, weight_quantizer={"name": "uniform_weight", "bits": 4}),
        QuantConv2d(4, 4, 3, padding=1),
        BinaryConv2d(4, 4, 3, padding=1, input_quantizer="ste_tern"),
        BinaryConv2d(4, 4, 3, padding=1),  # fine
    )
    with pytest.raises(PackError) as info:
        pack_model(model)
    message = str(info.value)
    assert "5 layer(s)" in message
    for name, reason in [
        ("0 (BinaryConv2d)", "input quantizer 'none' is not a sign"),
        ("1 (BinaryConv2d)", "padding_mode='reflect'"),
        ("2 (BinaryConv2d)", "weight quantizer 'uniform_weight' is not a scaled sign"),
        ("3 (QuantConv2d)", "k-bit layer"),
        ("4 (BinaryConv2d)", "'ste_tern' is not a sign"),
    ]:
        assert f"- {name}: " in message and reason in message, (name, message)
    assert "- 5 " not in message
    assert isinstance(model[0], BinaryConv2d)  # the model itself is untouched


def test_untraceable_and_repeated_layers_are_errors():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    class Twice(Branchy):
        def forward(self, x):
            return self.conv(self.conv(x))

    with pytest.raises(PackError, match="torch.fx cannot trace"):
        pack_model(Branchy())
    with pytest.raises(PackError, match=r"conv \(called 2 times\)"):
        pack_model(Twice())
    with pytest.raises(PackError, match="float32"):
        pack_model(nn.Sequential(BinaryConv2d(2, 2, 3)).double())


def test_packed_model_is_inference_only_and_checks_input():
    packed = pack_model(nn.Sequential(BinaryConv2d(3, 4, 3, padding=1)))
    with pytest.raises(ValueError, match="inference-only"):
        packed.train()
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        packed(torch.randn(1, 5, 4, 4))


def test_kernel_names_are_checked():
    with pytest.raises(ValueError, match="kernel must be one of"):
        with use_kernel("sse9"):
            pass
    assert resolved_kernel() in ALL_KERNELS


def test_weight_memory_is_32x_smaller_for_word_multiples():
    from lowbit.deploy.summary import format_packed_summary, packed_summary

    model = create_model("xnor_resnet18", width=64)
    summary = packed_summary(model, pack_model(model))
    for row in summary["layers"]:
        assert row["float32_bytes"] == 32 * row["packed_bytes"], row
    assert "32.0x smaller" in format_packed_summary(summary)


def test_float_twin_replaces_binary_layers_only():
    model = create_model("xnor_resnet18", width=4)
    twin = float_twin(model)
    kinds = {type(m) for m in twin.modules()}
    assert BinaryConv2d not in kinds and nn.Conv2d in kinds
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(twin.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_fallback_when_no_compiler(tmp_path):
    """No C++ compiler: a warning, the pure-PyTorch kernels, the same numbers (fresh extension cache)."""
    script = textwrap.dedent(
        """
        import warnings, torch
        from torch import nn
        from lowbit.nn import BinaryConv2d, set_exact_eval
        from lowbit.deploy import pack_model, resolved_kernel, available_kernels
        torch.manual_seed(0)
        model = nn.Sequential(BinaryConv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6), BinaryConv2d(6, 3, 3)).eval()
        x = torch.randn(2, 5, 6, 6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pack_model(model)(x)
        assert resolved_kernel() == "torch" and available_kernels() == ["torch"], available_kernels()
        assert any("pure-PyTorch fallback" in str(w.message) for w in caught), [str(w.message) for w in caught]
        with torch.no_grad():
            assert torch.equal(out, set_exact_eval(model)(x))
        print("fallback ok")
        """
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop(kernels.KERNEL_ENV, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback ok" in result.stdout


def test_an_input_smaller_than_the_conv_window_is_refused_at_every_call():
    from lowbit.deploy import PackedBinaryConv2d
    from lowbit.nn import BinaryConv2d

    layer = PackedBinaryConv2d(BinaryConv2d(8, 8, 5, padding=0).eval())
    assert layer(torch.randn(1, 8, 5, 5)).shape == (1, 8, 1, 1)
    for _ in range(2):  # the size check is cached with the padding correction: it must not be skipped the second time
        with pytest.raises(ValueError, match="input 4x4 is smaller than the conv window"):
            layer(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"expected input \(N, 8, H, W\)"):
        layer(torch.randn(1, 3, 8, 8))
