"""The fused sign kernels (lowbit.quant.fused): the unfused ATen path's values and gradients, bit for bit.

Each check runs a quantizer twice, with the C++ kernels and with ``use_fused(False)`` (the
ATen expressions), and compares every bit (NaN as NaN, the sign of zeros), on tensors
seeded with the values where sign and surrogate decide: NaN, +-0, +-inf, the clip bound
itself. Independent references (naive formulas, float64 autograd) check the ATen side.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from lowbit.native import NativeExtension
from lowbit.nn import BinaryConv2d, BinaryLinear
from lowbit.quant import fused, hard_sign, magnitude_aware_sign, sign_ste, xnor_weight
from lowbit.quant.fused import fused_available, use_fused

pytestmark = pytest.mark.skipif(not fused_available(), reason=f"fused sign kernels not built: {fused.EXTENSION.build_error()}")

FUSED_SURROGATES = [
    ("ste", {}),
    ("ste_clipped", {}),
    ("ste_clipped", {"clip": 0.3}),
    ("steep", {"slope": 3.0}),
    ("vste", {}),
    ("vste", {"grad_clip": 0.25, "clip": 2.0}),
    ("approx_sign", {}),
]
SPECIAL = [float("nan"), -0.0, 0.0, 1.0, -1.0, 0.3, -0.3, 1 / 3.0, float("inf"), -float("inf"), 2.0, -2.0, 1e-30]


def seeded(shape, dtype=torch.float32, seed=0, scale=1.2):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * scale
    flat, k = x.view(-1), min(len(SPECIAL), x.numel())
    flat[:k] = torch.tensor(SPECIAL[:k], dtype=dtype)
    return x


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit: same values, NaN where NaN, the same signs of zero."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return bool(
        torch.equal(nan_a, nan_b)
        and torch.equal(torch.where(nan_a, 0, a), torch.where(nan_b, 0, b))
        and torch.equal(torch.signbit(torch.where(nan_a, 1, a)), torch.signbit(torch.where(nan_b, 1, b)))
    )


def value_and_grad(fn, x, g):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


def both_paths(fn, x, g):
    fused_result = value_and_grad(fn, x, g)
    with use_fused(False):
        aten_result = value_and_grad(fn, x, g)
    return fused_result, aten_result


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("surrogate,params", FUSED_SURROGATES)
def test_sign_ste_fused_equals_aten(surrogate, params, dtype):
    x = seeded((3, 5, 7, 11), dtype)
    g = torch.randn_like(x) * 3
    g.view(-1)[[0, 4, 9]] = torch.tensor([float("inf"), float("nan"), -float("inf")], dtype=dtype)
    (y, gx), (y_ref, gx_ref) = both_paths(lambda t: sign_ste(t, surrogate, **params), x, g)
    assert bits_equal(y, y_ref) and bits_equal(gx, gx_ref)


@pytest.mark.parametrize("surrogate,params", FUSED_SURROGATES)
def test_fused_path_runs_and_saves_a_mask(surrogate, params):
    x = seeded((2, 3, 4, 5)).requires_grad_()
    y = sign_ste(x, surrogate, **params)
    assert type(y.grad_fn).__name__ == "_FusedSignBackward"  # the fused Function, not the ATen one
    saved = y.grad_fn.saved_tensors
    if surrogate == "ste":
        assert saved == ()  # the identity STE keeps nothing for its backward
    elif surrogate == "approx_sign":
        assert saved[0].dtype == torch.float32  # Bi-Real's surrogate needs x itself
    else:
        assert saved[0].dtype == torch.bool and saved[0].shape == x.shape  # 1 byte per entry, not x
    with use_fused(False):
        assert type(sign_ste(x, surrogate, **params).grad_fn).__name__ != "_FusedSignBackward"


def test_against_naive_formulas():
    x = seeded((257,), torch.float64)
    g = torch.randn(257, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for surrogate, params, derivative in [
        ("ste_clipped", {"clip": 0.3}, lambda v, d: d if abs(v) <= 0.3 else 0.0),
        ("steep", {"slope": 3.0}, lambda v, d: 3.0 * d if abs(v) <= 1 / 3.0 else 0.0),
        ("vste", {}, lambda v, d: min(max(d, -0.5), 0.5) if abs(v) <= 1.0 else 0.0),
        ("approx_sign", {}, lambda v, d: d * (2 - 2 * abs(v)) if abs(v) <= 1.0 else 0.0),
    ]:
        y, gx = value_and_grad(lambda t: sign_ste(t, surrogate, **params), x, g)
        naive_y = [1.0 if v >= 0 else -1.0 for v in x.tolist()]  # NaN >= 0 is False: -1
        naive_g = [derivative(v, d) for v, d in zip(x.tolist(), g.tolist())]  # NaN: outside every bound
        assert y.tolist() == naive_y
        assert gx.tolist() == pytest.approx(naive_g, abs=0, rel=1e-15), surrogate


def test_hard_sign_one_pass_equals_aten_and_keeps_layouts():
    for x in [seeded((4, 6, 5, 5)), seeded((4, 6, 5, 5)).to(memory_format=torch.channels_last), seeded((9,), torch.float64)]:
        y = hard_sign(x)
        with use_fused(False):
            y_ref = hard_sign(x)
        assert bits_equal(y, y_ref) and y.stride() == x.stride() and y.grad_fn is None
    assert hard_sign(torch.tensor([-0.0, float("nan")])).tolist() == [1.0, -1.0]


def test_channels_last_and_odd_gradient_layouts():
    x = seeded((4, 6, 5, 5)).to(memory_format=torch.channels_last)
    g_contiguous = torch.randn(4, 6, 5, 5)
    for g in (g_contiguous, g_contiguous.to(memory_format=torch.channels_last), g_contiguous.transpose(2, 3).contiguous().transpose(2, 3)):
        for surrogate, params in FUSED_SURROGATES:
            (y, gx), (y_ref, gx_ref) = both_paths(lambda t: sign_ste(t, surrogate, **params), x, g)
            assert bits_equal(y, y_ref) and bits_equal(gx, gx_ref)


def test_non_dense_inputs_take_the_aten_path():
    base = seeded((4, 8, 6))
    x = base[:, ::2]  # a strided view: not dense
    y = sign_ste(base.clone().requires_grad_()[:, ::2], "ste_clipped")
    assert not x.is_contiguous() and type(y.grad_fn).__name__ != "_FusedSignBackward"
    (v, gx), (v_ref, gx_ref) = both_paths(lambda t: sign_ste(t[:, ::2], "ste_clipped"), base, torch.ones(4, 4, 6))
    assert bits_equal(v, v_ref) and bits_equal(gx, gx_ref)


@pytest.mark.parametrize("per_channel", [True, False])
def test_xnor_weight_fused_equals_aten_and_the_formula(per_channel):
    w = seeded((16, 8, 3, 3), scale=0.1)
    w.view(-1)[0] = 0.0  # sgn(0) = 0 in alpha's derivative
    w = w.nan_to_num(nan=0.5, posinf=0.2, neginf=-0.2)  # finite weights for the formula check
    g = torch.randn_like(w)
    (q, gw), (q_ref, gw_ref) = both_paths(lambda t: xnor_weight(t, per_channel), w, g)
    assert bits_equal(q, q_ref) and bits_equal(gw, gw_ref)
    # dL/dW = alpha g + sgn(W) / n * sum_{channel} g sign(W), in float64 (Rastegari et al.)
    w64, g64 = w.double(), g.double()
    dims = (1, 2, 3) if per_channel else (0, 1, 2, 3)
    n = w[0].numel() if per_channel else w.numel()
    sign = torch.where(w64 >= 0, 1.0, -1.0)
    alpha = w64.abs().mean(dim=dims, keepdim=True)
    expected = alpha * g64 + torch.sgn(w64) / n * (g64 * sign).sum(dim=dims, keepdim=True)
    assert torch.allclose(gw.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(q.double(), sign * alpha, rtol=1e-6, atol=0)


def test_xnor_weight_special_values_and_linear_weights():
    for w in [seeded((12, 20)), seeded((5, 3, 2, 2), torch.float64)]:
        g = torch.randn_like(w)
        (q, gw), (q_ref, gw_ref) = both_paths(lambda t: xnor_weight(t), w, g)
        assert bits_equal(q, q_ref) and bits_equal(gw, gw_ref)


def test_magnitude_aware_sign_fused_equals_aten():
    w = seeded((16, 8, 3, 3), scale=0.05)
    g = torch.randn_like(w)
    for clip in (1.0, 0.04):
        (q, gw), (q_ref, gw_ref) = both_paths(lambda t: magnitude_aware_sign(t, clip), w, g)
        assert bits_equal(q, q_ref) and bits_equal(gw, gw_ref)


def test_double_backward_matches_aten():
    # Hessian-vector products through binary layers (lowbit analyze uses double backward). The first
    # derivative is bit for bit; the second sums the same terms in an order that follows the graph's
    # shape, so it agrees to rounding.
    torch.manual_seed(0)
    layer = BinaryLinear(6, 4, input_quantizer="approx_sign")
    x = torch.randn(5, 6) * 0.5
    v = torch.randn(5, 6)

    def hvp():
        xr = x.clone().requires_grad_()
        loss = (layer(torch.tanh(xr)) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, xr, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), xr)
        (gw,) = torch.autograd.grad((layer(torch.tanh(xr)) ** 2).sum(), layer.weight, create_graph=True)
        (hw,) = torch.autograd.grad(gw.square().sum(), layer.weight)
        return grad.detach(), hv, hw

    (grad, hv, hw) = hvp()
    with use_fused(False):
        (grad_ref, hv_ref, hw_ref) = hvp()
    assert bits_equal(grad, grad_ref)
    assert torch.allclose(hv, hv_ref, rtol=1e-6, atol=1e-5) and torch.allclose(hw, hw_ref, rtol=1e-6, atol=1e-5)
    assert hv.abs().max() > 1 and hw.abs().max() > 1  # non-trivial second derivatives


def test_forward_mode_matches_aten():
    x = seeded((3, 7))
    tangent = torch.randn_like(x)
    results = []
    for enabled in (True, False):
        with use_fused(enabled), torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, tangent)
            out = sign_ste(dual, "vste", grad_clip=0.25)
            results.append(torch.autograd.forward_ad.unpack_dual(out))
    assert bits_equal(results[0].primal, results[1].primal) and bits_equal(results[0].tangent, results[1].tangent)


def test_torch_func_transforms_fall_back():
    x = seeded((4, 5))
    per_row = torch.func.vmap(torch.func.grad(lambda row: sign_ste(row, "ste_clipped").mul(row.cos()).sum()))(x)
    with use_fused(False):
        expected = torch.func.vmap(torch.func.grad(lambda row: sign_ste(row, "ste_clipped").mul(row.cos()).sum()))(x)
    assert bits_equal(per_row, expected)


def test_training_steps_are_identical_with_and_without_fusion():
    def train():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            BinaryConv2d(8, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            BinaryConv2d(8, 8, 3, padding=1, input_quantizer="approx_sign", weight_quantizer="magnitude_aware_sign"),
            torch.nn.Flatten(),
            BinaryLinear(8 * 8 * 8, 10, input_quantizer="vste"),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(16, 3, 8, 8, generator=generator)
            y = torch.randint(0, 10, (16,), generator=generator)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    fused_weights = train()
    with use_fused(False):
        aten_weights = train()
    assert all(torch.equal(a, b) for a, b in zip(fused_weights, aten_weights))


def test_two_threads_give_the_same_bits():
    x = seeded((8, 64, 32, 32))
    g = torch.randn_like(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = value_and_grad(lambda t: sign_ste(t, "ste_clipped"), x, g)
        torch.set_num_threads(2)
        two = value_and_grad(lambda t: sign_ste(t, "ste_clipped"), x, g)
    finally:
        torch.set_num_threads(threads)
    assert all(bits_equal(a, b) for a, b in zip(one, two))


def test_environment_switch():
    code = textwrap.dedent(
        """
        import torch
        from lowbit.quant import fused, sign_ste
        x = torch.randn(3, requires_grad=True)
        print(fused.fused_enabled(), type(sign_ste(x, "ste_clipped").grad_fn).__name__)
        """
    )
    off = subprocess.run([sys.executable, "-c", code], env=_env(LOWBIT_FUSED_SIGN="0"), capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    assert off.stdout.split()[0] == "False" and off.stdout.split()[1] != "_FusedSignBackward"
    bad = subprocess.run([sys.executable, "-c", code], env=_env(LOWBIT_FUSED_SIGN="maybe"), capture_output=True, text=True)
    assert bad.returncode != 0 and "LOWBIT_FUSED_SIGN must be 1 or 0" in bad.stderr


def _env(**extra):
    import os

    return {**os.environ, **extra}


def test_a_failed_build_falls_back_with_one_warning(tmp_path, monkeypatch):
    # A real compiler run on a source that does not compile: the kernels' callers must keep working.
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++;\n")
    broken = NativeExtension("lowbit_test_broken", [source], [], purpose="test kernels", fallback="using ATen.")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="the C\\+\\+ test kernels could not be built"):
        assert broken.load() is None
    assert broken.build_error()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second build, no second warning
        assert broken.load() is None
    monkeypatch.setattr(fused, "EXTENSION", broken)
    assert not fused.fused_available()
    x = seeded((3, 4)).requires_grad_()
    y = sign_ste(x, "ste_clipped")
    assert type(y.grad_fn).__name__ != "_FusedSignBackward"
    assert y.detach().tolist() == [[1.0 if v >= 0 else -1.0 for v in row] for row in x.detach().tolist()]


@pytest.mark.skipif(not fused_available(), reason="no C++ build here")
def test_another_install_of_the_same_sources_loads_the_same_build_without_recompiling(tmp_path):
    """A second copy of sign.cpp elsewhere (another venv, worktree or checkout): the same build, not a rebuild.

    torch's build rules name the source paths; the compiler reads the copy staged in the build's folder, so
    the path of the installed file does not matter (before, each install rebuilt the other's build, ~30 s).
    """
    from pathlib import Path

    from torch.utils.cpp_extension import _get_build_directory

    (library,) = Path(_get_build_directory(fused.EXTENSION.name(), verbose=False)).glob("*.so")
    built = library.stat().st_mtime_ns
    copy = tmp_path / "elsewhere" / "sign.cpp"
    copy.parent.mkdir()
    copy.write_bytes(fused.SOURCE.read_bytes())
    other = NativeExtension("lowbit_sign", [copy], fused.CFLAGS, purpose="fused sign kernels", fallback=".")
    assert other.name() == fused.EXTENSION.name() and other.staged_sources() == fused.EXTENSION.staged_sources()
    code = f"""
import sys; sys.path.insert(0, {str(Path(fused.__file__).parents[2])!r})
from pathlib import Path
from lowbit.native import NativeExtension
import lowbit.quant.fused as fused
other = NativeExtension("lowbit_sign", [Path({str(copy)!r})], fused.CFLAGS, purpose="fused sign kernels", fallback=".")
assert other.load() is not None, other.build_error()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)  # a fresh process
    assert done.returncode == 0, done.stderr
    assert library.stat().st_mtime_ns == built and "compiling" not in done.stderr
    edited = tmp_path / "edited.cpp"
    edited.write_bytes(fused.SOURCE.read_bytes() + b"\n// edited\n")
    assert NativeExtension("lowbit_sign", [edited], fused.CFLAGS, purpose=".", fallback=".").name() != other.name()


@pytest.mark.slow  # compiles a second build (~25 s)
def test_the_baseline_build_gives_the_bits_of_the_vectorised_clones():
    """The AVX-512 / AVX2 clones chosen at load time against the kernels built for the baseline ISA alone."""
    base = NativeExtension(
        "lowbit_sign_baseline", [fused.SOURCE], fused.CFLAGS + ["-DLOWBIT_NO_CLONES"], purpose="baseline kernels", fallback="."
    ).load()
    assert base is not None
    fast = fused.EXTENSION.load()
    for dtype in (torch.float32, torch.float64):
        x = seeded((3, 7, 33, 17), dtype)
        g = torch.randn_like(x)
        g.view(-1)[[1, 5]] = torch.tensor([float("nan"), -0.0], dtype=dtype)
        y, mask = fast.sign_forward(x, 0.7)
        y_base, mask_base = base.sign_forward(x, 0.7)
        assert bits_equal(y, y_base) and torch.equal(mask, mask_base)
        for scale, clip in ((1.0, -1.0), (3.0, -1.0), (1.0, 0.25)):
            assert bits_equal(fast.masked_grad(g, mask, scale, clip), base.masked_grad(g, mask, scale, clip))
        assert bits_equal(fast.approx_sign_grad(g, x), base.approx_sign_grad(g, x))
        w, gw = x.reshape(21, -1).contiguous(), g.reshape(21, -1).contiguous()
        alpha = w.abs().mean(dim=1).nan_to_num()
        assert bits_equal(fast.scaled_sign(w, alpha), base.scaled_sign(w, alpha))
        assert bits_equal(fast.signed_grad(gw, w), base.signed_grad(gw, w))
        assert bits_equal(fast.xnor_weight_grad(gw, w, alpha, alpha * 0.5), base.xnor_weight_grad(gw, w, alpha, alpha * 0.5))
        assert bits_equal(fast.clipped_scaled_grad(gw, w, alpha, 0.5), base.clipped_scaled_grad(gw, w, alpha, 0.5))


def test_fake_tensors_and_make_fx_take_the_aten_path():
    # torch.export (non-strict), FakeTensorMode and make_fx hand the quantizers tensors without data
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():
        layer = BinaryConv2d(3, 4, 3)
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        y = layer(x)
        y.sum().backward()
    assert y.shape == (2, 4, 6, 6) and x.grad.shape == x.shape
    graph = make_fx(lambda t: sign_ste(t, "ste_clipped"))(torch.randn(3))
    ops = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert "aten.ge.Scalar_out" in ops  # the ATen form was recorded, not an opaque C++ call
