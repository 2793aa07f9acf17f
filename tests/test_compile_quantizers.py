"""torch.compile of a training forward through every quantizer: one graph, the eager gradients.

The quantizers' autograd Function defines ``jvp`` (forward mode for torch.func);
TorchDynamo cannot trace such a Function and would break the graph at every
quantizer. Under compile the Function without ``jvp`` is used
(``lowbit.quant.functional._QuantizeWithSurrogateTraced``): these tests check
that a training forward compiles with no graph break and that the compiled
step (``aot_eager``: the autograd graph Dynamo and AOTAutograd build, run
without code generation) gives the eager loss and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.nn import BinaryConv2d, BinaryLinear

ACTIVATIONS = ["ste", "ste_clipped", "steep", "swish_sign", "approx_sign", "vste", "approx_sign_window",
               "ste_heaviside", "ste_tern", "step01", "uniform_act", "dorefa"]
WEIGHTS = ["xnor_weight", "magnitude_aware_sign", "ste", "uniform_weight"]


def net(activation: str, weight: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
        BinaryConv2d(8, 8, 3, padding=1, input_quantizer=activation, weight_quantizer=weight), nn.BatchNorm2d(8),
        BinaryConv2d(8, 16, 3, stride=2, padding=1, input_quantizer=activation, weight_quantizer=weight),
        nn.BatchNorm2d(16), nn.Flatten(),
        BinaryLinear(16 * 4 * 4, 10, input_quantizer=activation, weight_quantizer=weight),
    ).train()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every case compiles the same nn.Sequential code: without a reset the 9th case hits Dynamo's recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


FAST = [("ste_clipped", "xnor_weight"), ("swish_sign", "magnitude_aware_sign"), ("dorefa", "uniform_weight")]
EVERY = [(a, "xnor_weight") for a in ACTIVATIONS] + [("ste_clipped", w) for w in WEIGHTS[1:]]
CASES = FAST + [pytest.param(*case, marks=pytest.mark.slow) for case in EVERY if case not in FAST]


@pytest.mark.parametrize("activation,weight", CASES)
def test_a_training_forward_compiles_as_one_graph_with_the_eager_gradients(activation, weight):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    eager = net(activation, weight)
    traced = copy.deepcopy(eager)
    compiled = torch.compile(traced, backend="aot_eager", fullgraph=True)  # a graph break raises
    loss, grads = loss_and_grads(eager, x, y)
    compiled_loss, compiled_grads = loss_and_grads(compiled, x, y)
    assert torch.allclose(compiled_loss, loss, rtol=1e-6, atol=1e-7)
    for a, b in zip(compiled_grads, grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(bool(b.abs().sum() > 0) for b in grads[2:])  # the binary layers' surrogates did pass a gradient


def test_forward_mode_ad_still_works_outside_compile():
    from lowbit.quant import sign_ste

    x = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    _, tangent = torch.func.jvp(lambda t: sign_ste(t, "ste_clipped"), (x,), (torch.ones(4),))
    assert tangent.tolist() == [0.0, 1.0, 1.0, 0.0]
