"""The export support matrix: each format tried on a float, a binary and an 8-bit model.

    python -m lowbit.deploy.matrix            # prints the Markdown table of docs/deploy.md
    python -m lowbit.deploy.matrix --fast     # torch.compile with the eager backend (no C++ codegen)

Every cell is an attempt, not a claim: the model is exported (or scripted, traced,
compiled, reloaded) on one random batch and its output on another batch of the same
shape (new values: a trace that recorded constants fails) compared with eager PyTorch
in eval mode.
A cell reads "yes (bit for bit)", "yes (max abs diff ...)", or "no: <the error>";
``torch.compile`` runs with the inductor backend (``--fast``: eager) and says
whether the whole forward compiled as one graph.
Models: ``resnet18`` (float), ``xnor_resnet18`` (binary, exact eval form), and
``resnet18`` after ``quantize_model`` (8-bit W/A/G/E), all at width 8 on 3x32x32,
BatchNorm statistics set as after training (:func:`trained_like_batchnorm`);
``torch.compile`` is called under ``torch.no_grad`` (inference).
"""

from __future__ import annotations

import argparse
import copy
import io
import re
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

FORMATS = ("state_dict", "torch.export", "ONNX (dynamo) + onnxruntime", "TorchScript", "torch.compile")


def models(width: int = 8) -> Dict[str, Callable[[], nn.Module]]:
    """name -> a factory of the model (fresh weights from the same seed each call), eval mode."""
    from lowbit.models import create_model
    from lowbit.nn import quantize_model, set_exact_eval

    def seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(0)
            return trained_like_batchnorm(make()).eval()

        return build

    def packed() -> nn.Module:
        from lowbit.deploy import pack_model

        return pack_model(seeded(lambda: create_model("xnor_resnet18", width=width))())

    return {
        "float (resnet18)": seeded(lambda: create_model("resnet18", width=width)),
        "binary (xnor_resnet18)": seeded(lambda: set_exact_eval(create_model("xnor_resnet18", width=width))),
        "binary, stochastic_sign activations": seeded(
            lambda: set_exact_eval(create_model("xnor_resnet18", width=width, act="stochastic_sign"))
        ),
        "8-bit (quantize_model)": seeded(lambda: quantize_model(create_model("resnet18", width=width))),
        "packed binary (pack_model)": packed,
    }


def trained_like_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm generic running statistics and affine parameters, as training would.

    At initialisation (mean 0, var 1, gamma 1, beta 0) an exactly zero binary accumulator
    stays exactly 0 after the BatchNorm, a tie at the next sign; see docs/deploy.md.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model


def _agreement(reference: torch.Tensor, out: torch.Tensor) -> str:
    if torch.equal(reference, out):
        return "yes (bit for bit)"
    diff = float((reference - out).abs().max())
    far = ~torch.isclose(reference, out, rtol=1e-4, atol=1e-4)
    if not far.any():
        return f"yes (max abs diff {diff:.1e})"
    # A quantized model's logits jump where a rounding lands on a tie (docs/deploy.md): same predictions,
    # logits off by a quantization step, is told apart from a wrong graph.
    if torch.equal(reference.argmax(-1), out.argmax(-1)):
        return f"partly: same predictions, {int(far.sum())} of {far.numel()} logits off by up to {diff:.1e}"
    return f"no (runs, wrong output: max abs diff {diff:.1e})"


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), type(error).__name__)
    return f"{type(error).__name__}: {line[:160]}"


def try_state_dict(make: Callable[[], nn.Module], x: torch.Tensor, check: torch.Tensor) -> str:
    model = make()
    if type(model).__name__ == "PackedModel":
        from lowbit.deploy.export import load_packed, save_packed

        spec = {"name": "xnor_resnet18", "num_classes": 10, "in_channels": 3, "kwargs": {"width": 8}}
        with tempfile.TemporaryDirectory() as tmp:
            loaded, _ = load_packed(save_packed(Path(tmp) / "model.packed.pt", model, spec))
        return "packed format: " + _agreement(model(check), loaded(check))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()
    for p in fresh.parameters():
        p.data.normal_()  # make sure the load, not the seed, gives the weights
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        return _agreement(model(check), fresh(check))


def try_export(make: Callable[[], nn.Module], x: torch.Tensor, check: torch.Tensor) -> str:
    model = make()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        return _agreement(model(check), program.module()(check))


def try_onnx(make: Callable[[], nn.Module], x: torch.Tensor, check: torch.Tensor) -> str:
    import onnxruntime

    from lowbit.deploy.export import export_onnx

    model = make()
    results = []
    with torch.no_grad():
        reference = model(check)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, x, Path(tmp) / "model.onnx")
        for label, level in (
            ("default session", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL),
            ("ORT_DISABLE_ALL", onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ):
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = level
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: check.numpy()})[0])
            results.append(f"{label}: {_agreement(reference, out)}")
    return "; ".join(results)


def try_torchscript(make: Callable[[], nn.Module], x: torch.Tensor, check: torch.Tensor) -> str:
    model = make()
    try:
        scripted = torch.jit.script(model)
        with torch.no_grad():
            return "script: " + _agreement(model(check), scripted(check))
    except Exception as error:
        script_error = _first_line(error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(copy.deepcopy(model), (x,), check_trace=False)
    with torch.no_grad():
        return f"trace: {_agreement(model(check), traced(check))}; script: no ({script_error})"


def try_compile(make: Callable[[], nn.Module], x: torch.Tensor, check: torch.Tensor, backend: str = "inductor") -> str:
    import torch._dynamo

    torch._dynamo.reset()
    model = make()
    with torch.no_grad():
        reference = model(check)
        try:
            compiled = torch.compile(model, backend=backend, fullgraph=True)
            compiled(x)
            return f"{_agreement(reference, compiled(check))}, fullgraph"
        except Exception as error:
            whole = _first_line(error)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(x)
        out = torch.compile(model, backend=backend)(check)
    return f"{_agreement(reference, out)} with {explanation.graph_break_count} graph breaks; fullgraph: no ({whole})"


def support_matrix(fast: bool = False, width: int = 8) -> List[Tuple[str, Dict[str, str]]]:
    """[(model name, {format: outcome})] for every model of :func:`models` and every format."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # exported, traced, compiled on
    check = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # compared on
    attempts = {
        "state_dict": try_state_dict,
        "torch.export": try_export,
        "ONNX (dynamo) + onnxruntime": try_onnx,
        "TorchScript": try_torchscript,
        "torch.compile": lambda make, x, check: try_compile(make, x, check, "eager" if fast else "inductor"),
    }
    rows = []
    for name, make in models(width).items():
        cells = {}
        for fmt in FORMATS:
            try:
                cells[fmt] = attempts[fmt](make, x, check)
            except Exception as error:
                cells[fmt] = f"no: {_first_line(error)}"
        rows.append((name, cells))
    return rows


def markdown(rows: List[Tuple[str, Dict[str, str]]]) -> str:
    lines = ["| model | " + " | ".join(FORMATS) + " |", "|:--|" + ":--|" * len(FORMATS)]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(cells[f].replace("|", "/") for f in FORMATS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="torch.compile with backend='eager' (no inductor codegen)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(markdown(support_matrix(fast=args.fast)))


if __name__ == "__main__":
    main()


__all__ = ["FORMATS", "markdown", "models", "support_matrix"]
