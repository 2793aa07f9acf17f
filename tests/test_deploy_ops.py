"""Packed models through torch.export, torch.jit.trace and torch.compile (lowbit.deploy.ops).

The XNOR kernels are torch custom ops: ``torch.library.opcheck`` checks each one's schema
and fake implementation (output shapes and dtypes) against the real kernel; the traced,
exported and compiled packed models are compared with eager, bit for bit, on inputs
other than the ones they were traced on, with the C++ kernel and with the pure-PyTorch
fallback (``use_kernel("torch")``).
"""

import collections
import io

import pytest
import torch
from torch import nn

from lowbit.deploy import available_kernels, kernels, ops, pack_model, use_kernel
from lowbit.deploy.export import export_onnx
from lowbit.deploy.matrix import trained_like_batchnorm
from lowbit.models import create_model
from lowbit.nn import BinaryConv2d, BinaryLinear

KERNELS = [k for k in ("avx512", "avx2", "portable", "torch") if k in available_kernels()]
FAST = [KERNELS[0], "torch"] if KERNELS[0] != "torch" else ["torch"]  # the best C++ kernel and the fallback


@pytest.fixture(params=FAST)
def kernel(request):
    with use_kernel(request.param):
        yield request.param


def generator(seed):
    return torch.Generator().manual_seed(seed)


def packed_resnet(width=8, in_channels=3, seed=0):
    torch.manual_seed(seed)
    model = create_model("xnor_resnet18", num_classes=10, in_channels=in_channels, width=width)
    return pack_model(trained_like_batchnorm(model).eval())


def op_counts(graph):
    return collections.Counter(str(n.target) for n in graph.nodes if n.op == "call_function")


def all_nodes(graph_module):
    """Call targets of a graph module and of its submodules (export wraps no_grad regions in one)."""
    counts = collections.Counter()
    for module in graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            counts += op_counts(module.graph)
    return counts


# --- the ops ---------------------------------------------------------------------------------


def random_words(*shape, seed=0):
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=generator(seed))


def binary_layer_args(bits_out, padded, groups=2, seed=0):
    """Arguments of lowbit::binary_layer for a 3x3 conv, 2 groups of 70 input channels (2 words), 40 outputs."""
    n, words, per_group = 20, 2, 70
    kh = kw = 3
    x = random_words(2, 5, 6, groups, words, seed=seed)
    x[..., -1] &= (1 << (per_group - 64)) - 1  # unused high bits are 0, as pack_bits leaves them
    panel = torch.zeros(groups, kh * kw * words, 32, dtype=torch.int64)
    panel[:, :, :n] = random_words(groups, kh * kw * words, n, seed=seed + 1)
    geometry = [kh, kw, 2, 1, int(padded), int(padded), 1, 1]
    ho, wo = (5 + 2 * padded - 3) // 2 + 1, (6 + 2 * padded - 3) + 1
    correction = torch.randint(-9, 10, (ho * wo, groups * n), dtype=torch.int32, generator=generator(seed)) if padded else None
    common = dict(x=x, panel=panel, n=n, geometry=geometry, k=per_group * kh * kw, correction=correction)
    if bits_out:
        sign = torch.where(torch.rand(groups * n, generator=generator(seed)) < 0.3, -1, 1).to(torch.int32)
        threshold = torch.randint(-30, 30, (groups * n,), dtype=torch.int32, generator=generator(seed))
        return dict(common, alpha=None, bias=None, sign=sign, threshold=threshold, out_groups=4), (2, ho, wo, 4, 1)
    alpha = torch.rand(groups * n, generator=generator(seed)) + 0.5
    bias = torch.randn(groups * n, generator=generator(seed)) if padded else None
    return dict(common, alpha=alpha, bias=bias, sign=None, threshold=None, out_groups=1), (2, groups * n, ho, wo)


@pytest.mark.parametrize("bits_out, padded", [(False, False), (False, True), (True, False), (True, True)])
def test_binary_layer_op_passes_opcheck(kernel, bits_out, padded):
    args, shape = binary_layer_args(bits_out, padded)
    out = torch.ops.lowbit.binary_layer(*args.values())
    assert out.shape == shape and out.dtype == (torch.int64 if bits_out else torch.float32)
    assert torch.equal(out, kernels.binary_layer(*args.values()))  # the op computes what the kernel computes
    fake = torch.library.opcheck(torch.ops.lowbit.binary_layer.default, tuple(args.values()))
    assert all(result == "SUCCESS" for result in fake.values()), fake


@pytest.mark.parametrize("channels, groups", [(3, 1), (65, 1), (130, 2)])
def test_pack_signs_op_passes_opcheck(kernel, channels, groups):
    x = torch.randn(2, channels, 3, 4, generator=generator(channels))
    out = torch.ops.lowbit.pack_signs(x, groups)
    assert out.shape == (2, 3, 4, groups, -(-channels // groups // 64)) and out.dtype == torch.int64
    assert torch.equal(out, kernels.pack_signs(x, groups))
    result = torch.library.opcheck(torch.ops.lowbit.pack_signs.default, (x, groups))
    assert all(r == "SUCCESS" for r in result.values()), result


def test_popcount_gemm_op_passes_opcheck(kernel):
    a, bt = random_words(2, 13, 5, seed=3), random_words(2, 5, 64, seed=4)
    out = torch.ops.lowbit.popcount_gemm(a, bt, 40)
    assert out.shape == (13, 80) and out.dtype == torch.int32
    assert torch.equal(out, kernels.popcount_gemm(a, bt, 40))
    result = torch.library.opcheck(torch.ops.lowbit.popcount_gemm.default, (a, bt, 40))
    assert all(r == "SUCCESS" for r in result.values()), result


def test_eager_calls_the_kernels_directly():
    """In eager mode the packed layers skip the custom op's dispatch (~12 us a call); see ops.py."""
    x = torch.randn(2, 3)
    assert not ops.recording(x)
    assert ops.recording(torch._subclasses.FakeTensorMode().from_tensor(x))


# --- whole packed models -------------------------------------------------------------------


def test_export_with_dynamic_batch_equals_eager_bit_for_bit(kernel):
    """xnor_resnet18 (width 8) packed, exported at batch 4 with a dynamic batch, run at batches 4, 7 and 1."""
    model = packed_resnet()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(4, 3, 32, 32, generator=generator(0)),), dynamic_shapes=(({0: batch},),))
    counts = all_nodes(program.graph_module)
    assert counts["lowbit.binary_layer.default"] == 16 and counts["lowbit.pack_signs.default"] == 8, counts
    exported = program.module()
    for size, seed in ((4, 1), (7, 2), (1, 3)):
        x = torch.randn(size, 3, 32, 32, generator=generator(seed))
        assert torch.equal(exported(x), model(x)), size
    # saved and loaded (torch.export.save: the ops are found by name once lowbit.deploy is imported)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    x = torch.randn(3, 3, 32, 32, generator=generator(4))
    assert torch.equal(torch.export.load(buffer).module()(x), model(x))


def test_export_before_any_eager_call_keeps_no_traced_tensor():
    """The padding tables are cached per input size at the first eager call; one computed while
    exporting (on fake tensors) is part of the graph instead, and must not be cached."""
    model = packed_resnet(seed=1)
    x = torch.randn(2, 3, 32, 32, generator=generator(5))
    program = torch.export.export(model, (x,))
    for layer in model.layers().values():
        assert all(t is None or type(t) is torch.Tensor for t in getattr(layer, "_corrections", {}).values())
    x2 = torch.randn(2, 3, 32, 32, generator=generator(6))
    assert torch.equal(program.module()(x2), model(x2))


def test_export_of_a_digits_sized_model_over_the_digits_test_set():
    from lowbit.data import load_dataset, normalize

    test = load_dataset("digits", "test", image_size=None)
    x = normalize(test.images, test.mean, test.std)  # (360, 1, 8, 8)
    model = packed_resnet(width=8, in_channels=1, seed=2)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (x[:32],), dynamic_shapes=(({0: batch},),))
    assert torch.equal(program.module()(x), model(x))


def test_jit_trace_equals_eager_on_other_inputs(kernel):
    model = packed_resnet()
    with pytest.warns(torch.jit.TracerWarning):  # the layers' shape checks are recorded as constants
        traced = torch.jit.trace(model, (torch.randn(4, 3, 32, 32, generator=generator(0)),), check_trace=False)
    assert str(traced.inlined_graph).count("lowbit::binary_layer") == 16  # the ops, not their outputs as constants
    for size, seed in ((4, 1), (6, 2)):
        x = torch.randn(size, 3, 32, 32, generator=generator(seed))
        assert torch.equal(traced(x), model(x)), size


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_equals_eager_bit_for_bit(kernel, backend):
    """One graph (fullgraph=True): Dynamo and AOTAutograd (the fake implementations) through the ops."""
    import torch._dynamo

    torch._dynamo.reset()
    model = packed_resnet()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for seed in (1, 2):
        x = torch.randn(3, 3, 32, 32, generator=generator(seed))
        assert torch.equal(compiled(x), model(x))


@pytest.mark.slow
def test_compile_inductor_fullgraph():
    """Inductor compiles the float stem, BatchNorms and residual adds (which may fuse and round
    differently, as for a float model) around the packed layers' ops."""
    import torch._dynamo

    torch._dynamo.reset()
    model = packed_resnet()
    compiled = torch.compile(model, fullgraph=True)
    for seed in (1, 2):
        x = torch.randn(3, 3, 32, 32, generator=generator(seed))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


def test_fake_shapes_of_bits_chains_and_linear_layers():
    """Grouped bits -> bits convs and a bits -> float linear, exported and run at a new batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(
        BinaryConv2d(6, 130, 3, padding=1, groups=2),
        nn.BatchNorm2d(130),
        BinaryConv2d(130, 10, 3, stride=2, groups=2),
        nn.Flatten(),
        BinaryLinear(10 * 3 * 3, 70),
        nn.BatchNorm1d(70),
        BinaryLinear(70, 5, bias=True),
    )
    packed = pack_model(trained_like_batchnorm(model).eval())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(packed, (torch.randn(2, 6, 7, 7),), dynamic_shapes=(({0: batch},),))
    x = torch.randn(5, 6, 7, 7, generator=generator(1))
    assert torch.equal(program.module()(x), packed(x))


def test_onnx_export_of_a_packed_model_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"custom op lowbit::binary_layer has no ONNX translation; export the float") as error:
        export_onnx(packed_resnet(), torch.randn(1, 3, 32, 32), tmp_path / "model.onnx")
    assert "lowbit::binary_layer, lowbit::pack_signs; onnxruntime has no popcount op" in str(error.value)
    assert not (tmp_path / "model.onnx").exists()


def test_the_onnx_exporter_itself_has_no_translation_for_the_ops():
    """What export_onnx's refusal stands for: the dynamo exporter fails at the custom op."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    packed = pack_model(nn.Sequential(BinaryConv2d(4, 8, 3, padding=1)).eval())
    with pytest.raises(Exception, match=r"No ONNX function found for <OpOverload\(op='lowbit\.(pack_signs|binary_layer)'"):
        torch.onnx.export(packed, (torch.randn(1, 4, 5, 5),), dynamo=True, verbose=False)
