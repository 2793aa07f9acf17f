"""The four analyses, ``lowbit train`` and the binary layers on a device (issue #13): CPU == CUDA.

Each analysis runs a tiny config (two training steps, a 3x3 grid, two images) and every number it
writes is compared (:func:`outputs`: the records CSVs, ``summary.yaml``, ``attribution.pt``'s
heatmaps; timings and paths dropped):

- on the CPU (run in CI): the default run against ``run_analysis(..., device="cpu")``, bit for bit,
  and through the comparison the GPU runs (:func:`compare`);
- marked ``cuda`` (skipped without CUDA; ``pytest -m cuda``): the CPU against ``device="cuda"``:
  the same files, rows and keys, every float within the tolerance of its quantity (TF32 off).

How the tolerances were chosen (no GPU has run these yet). A GPU rounds float32 (6e-8) as the CPU
does but sums in another order. As a stand-in, each tiny run was repeated on a CPU (AMD EPYC,
AVX-512) with oneDNN's convolutions off (another float32 implementation) and with the weights (for
attribution: the images) multiplied by 1 + 1e-6 N(0, 1) and by 1 + 1e-5 N(0, 1), about 20 and 200
roundings. Each tolerance is at least ten times the spread measured at 1e-6 (the comment beside it
gives the figure), unless said otherwise:

- smooth quantities of one pass (a loss, a norm, a probability): ~1e-6 apart, compared at 1e-4;
- what crosses a ReLU kink or a max-pool tie depends on the last bit and jumps: bn-smoothness'
  ‖∇L(w − ηg) − ∇L(w)‖ (1e-5 on the weights turned 4e-6 into 9e-4 and moved 3.29 to 3.15) and the
  saliency / guided-backprop maps (a tie over digits' constant background sends a gradient one
  pixel over: 6-10 % of the map's 2-norm, with 1e-7 on the images already) are compared loosely,
  as the order of magnitude of a right answer (two images' maps differ by 110 %);
- an accuracy may move by one image (the argmax of a near tie);
- what trains on the device carries its rounding forward: bn-smoothness takes two steps at a small
  lr, the weights analysis two, ``lowbit train`` 16 with tanh (no ReLU kinks: its weights spread
  4e-7 at 1e-6, 4e-5 at 1e-5, against 3e-5 and 4e-4 with ReLU); landscape and attribution read
  one checkpoint trained on the CPU.

A model trained for a comparison uses ``augment.crop_padding=0``: random crops are drawn from a
generator on the run's device, and CUDA's random numbers are not the CPU's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import pytest
import torch
import yaml

from lowbit.analysis.command import load_analysis_config, run_analysis
from lowbit.analysis.config import QUICK_LENET
from lowbit.runs import read_records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import tiny_overrides  # noqa: E402 (lenet5 on 256 digits, 8 steps per epoch, 2 epochs)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ANALYSES = ("bn-smoothness", "landscape", "attribution", "weights")

SOURCE = QUICK_LENET + ["augment.crop_padding=0", "run.threads=1", "data.test_subset=64"]
# the checkpoint landscape and attribution read: 32 Adam steps, ~85 % test accuracy (clear argmaxes), 0.5 s
CHECKPOINT = SOURCE + ["run.epochs=4", "data.train_subset=512", "optim.name=adam", "optim.lr=0.003"]
# what the weights analysis trains on the spot, per optimizer: 2 steps of 32 images, tanh (no ReLU kinks)
WEIGHTS_TRAIN = SOURCE + ["run.epochs=1", "data.train_subset=64", "model.act=tanh"]


def tiny_config(analysis: str, checkpoint: Path) -> Any:
    """The analysis' built-in recipe cut to about a second on one CPU thread."""
    overrides = {
        # 2 Adam steps at lr 1e-4, probes before each: at lr 1e-3 and batch 16, three steps of the
        # width-1/16 VGG with BN took its loss 1e-3 apart between two float32 implementations
        "bn-smoothness": ["model.width_mult=0.0625", "train.lr=1e-4", "train.steps=2", "probe.every=1",
                          "probe.num_steps=2", "lr_band.lrs=[1e-4,5e-5]", "lr_band.steps=2", "data.batch_size=32",
                          "data.train_subset=64", "threads=1"],
        "landscape": [f"source.checkpoint={checkpoint}", "grid.resolution=3", "eval.num_images=32",
                      "interpolation.points=3", "threads=1"],
        "attribution": [f"source.checkpoint={checkpoint}", "indices=[0,1]", "ig_steps=8", "threads=1"],
        "weights": ["layers=[conv3,fc1]", "threads=1"],
    }[analysis]
    config = load_analysis_config(analysis, None, overrides)
    if analysis == "weights":
        config = dataclasses.replace(config, train={"sgd": WEIGHTS_TRAIN + ["optim.name=sgd", "optim.lr=0.05"],
                                                    "adam": WEIGHTS_TRAIN + ["optim.name=adam", "optim.lr=0.001"]})
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lowbit.analysis.source import quick_train

    return quick_train(CHECKPOINT, tmp_path_factory.mktemp("source") / "lenet")


# --------------------------------------------------------------------------- what an analysis wrote


def _volatile(key: str) -> bool:
    """Wall-clock timings, paths and plot file names: not results."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf.startswith("seconds") or leaf in ("checkpoint", "plots")


def _flat(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def outputs(run_dir: Path) -> Dict[str, Any]:
    """Every result in a run directory, timings and paths dropped: {"<file>.csv": rows,
    "summary.yaml": {dotted key: value}, "<file>.pt:<dotted key>": value (tensors on the CPU)}."""
    out: Dict[str, Any] = {}
    for path in sorted(run_dir.glob("*.csv")):
        out[path.name] = [{k: v for k, v in row.items() if not _volatile(k)} for row in read_records(path)]
    summary = _flat(yaml.safe_load((run_dir / "summary.yaml").read_text()))
    out["summary.yaml"] = {k: v for k, v in summary.items() if not _volatile(k)}
    for path in sorted(run_dir.glob("*.pt")):
        state = _flat(torch.load(path, map_location="cpu", weights_only=True))
        out.update({f"{path.name}:{k}": v for k, v in state.items()})
    return out


# --------------------------------------------------------------------------- comparison

# (rtol, atol): |a - b| <= atol + rtol |a|; atol may be a function of a's row; a tensor: in the 2-norm
Tolerance = Tuple[float, Union[float, Callable[[Dict[str, Any]], float]]]
EXACT: Tolerance = (0.0, 0.0)
LOSS: Tolerance = (1e-4, 1e-6)  # a mean over images of one forward pass
NORM: Tolerance = (1e-4, 1e-8)  # a 2-norm over weights or gradients


def one_image(n: int) -> Tolerance:
    return (0.0, 1 / n + 1e-9)  # an accuracy over n images: one near-tie argmax may flip


# Per analysis, per key (a CSV column, a summary key, a tensor's name). A float not named here is
# exact: grid coordinates, step sizes, learning rates, counts are computed on the CPU from the config.
TOLERANCES: Dict[str, Dict[str, Tolerance]] = {
    "bn-smoothness": {
        "loss": LOSS, "loss_at_w": LOSS, "test_loss": LOSS,  # measured <= 1.3e-6 (1e-6), 9.6e-6 (1e-5)
        "grad_norm": NORM, "distance": NORM,  # measured <= 3.4e-6 (1e-6), 2.1e-5 (1e-5)
        "grad_change": (1e-2, 1e-8),  # two batches' gradients after a step: measured <= 2.9e-4 (1e-6)
        # across a kink (module docstring): 10 % or 1 % of ‖∇L(w)‖, above the jumps measured at 1e-5
        "grad_diff": (0.1, lambda row: 1e-2 * row["grad_norm"]),
        "ratio": (0.1, lambda row: 1e-2 * row["grad_norm"] / row["distance"]),
        "acc": one_image(32), "test_acc": one_image(360),  # a batch; digits' test split
    },
    "landscape": {  # one checkpoint, forward passes only: measured <= 1.0e-6 (1e-6)
        "loss": LOSS, "acc": one_image(32),
        "theta_norm": NORM, "d1_norm": NORM, "d2_norm": NORM, "distance_start_end": NORM,
        "cos_d1_d2": (0.0, 1e-6),  # ~7e-3, a dot product over 6e4 weights: measured 1.7e-9 apart
    },
    "attribution": {  # one checkpoint, input gradients of two images
        "prob_target": LOSS,  # measured 2.5e-7
        # saliency / guided backprop over tied max-pool windows: measured 5.8e-4, 9.3e-4, 9.1e-7
        "attr_sum": (1e-2, 1e-7), "abs_sum": (1e-2, 1e-7), "top10_share": (0.0, 1e-2), "abs_max": (1e-3, 1e-7),
        "ig_delta": (0.0, 1e-4),  # captum's completeness gap, ~0.07: measured 2.9e-6 apart
        "attribution.pt:heatmaps.saliency": (0.3, 0.0),  # measured <= 0.07 (ties, module docstring)
        "attribution.pt:heatmaps.guided_backprop": (0.3, 0.0),  # measured <= 0.10
        # x - x' is 0 on the black background: no tie reaches the map; measured 8.7e-7
        "attribution.pt:heatmaps.integrated_gradients": (1e-4, 0.0),
    },
    "weights": {  # two SGD / Adam steps on the device, then the weights' statistics: measured <= 3.3e-6
        "l2": NORM, "mean_abs": NORM, "max_abs": (1e-4, 1e-7), "test_acc": one_image(64),
    },
}


def _close(a: Any, b: Any, tolerance: Tolerance, row: Dict[str, Any]) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        rtol, atol = tolerance
        bound = (atol(row) if callable(atol) else atol) + rtol * abs(a)
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= bound
    return type(a) is type(b) and a == b  # names, ints, bools, None


def assert_same_outputs(a: Dict[str, Any], b: Dict[str, Any], tolerances: Dict[str, Tolerance] | None = None) -> None:
    """``b`` has ``a``'s files, rows and keys, each value within its tolerance (none given: equal)."""
    tolerances = tolerances or {}
    assert sorted(a) == sorted(b)
    for name, x in a.items():
        y = b[name]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and (y.shape, y.dtype) == (x.shape, x.dtype), name
            rtol, atol = tolerances.get(name, EXACT)
            error = float((y.double() - x.double()).norm())
            assert error <= atol + rtol * float(x.double().norm()), f"{name}: |a - b| = {error:.3g}"
            continue
        rows_a, rows_b = (x, y) if isinstance(x, list) else ([x], [y])
        assert len(rows_a) == len(rows_b), f"{name}: {len(rows_a)} rows against {len(rows_b)}"
        for i, (ra, rb) in enumerate(zip(rows_a, rows_b)):
            if not isinstance(ra, dict):  # a list in summary.yaml or a .pt file (image indices)
                assert ra == rb, f"{name}[{i}]: {ra!r} against {rb!r}"
                continue
            assert list(ra) == list(rb), f"{name} row {i}: keys {list(ra)} against {list(rb)}"
            for key, value in ra.items():
                assert _close(value, rb[key], tolerances.get(key, EXACT), ra), f"{name} row {i} {key}: {value!r} against {rb[key]!r}"


def compare(tmp_path: Path, analysis: str, device_b: str, checkpoint: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The default run (on the CPU) against ``device=device_b``, within :data:`TOLERANCES`; both outputs."""
    config = tiny_config(analysis, checkpoint)
    reference = run_analysis(analysis, config, tmp_path / "default", progress=False)
    if device_b.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device_b)
    other = run_analysis(analysis, config, tmp_path / device_b, progress=False, device=device_b)
    assert yaml.safe_load((other / "config.yaml").read_text())["device"] == device_b
    if device_b.startswith("cuda"):
        assert torch.cuda.max_memory_allocated(device_b) > 0  # the analysis did run on the GPU
    a, b = outputs(reference), outputs(other)
    assert len(a) > 1 and all(v.numel() if isinstance(v, torch.Tensor) else len(v) for v in a.values())  # not empty
    assert_same_outputs(a, b, TOLERANCES[analysis])
    return a, b


@pytest.mark.parametrize("analysis", ANALYSES)
def test_device_cpu_given_explicitly_gives_the_default_runs_outputs(tmp_path, analysis, checkpoint):
    if analysis == "attribution":
        pytest.importorskip("captum")
    reference, explicit = compare(tmp_path, analysis, "cpu", checkpoint)
    assert_same_outputs(reference, explicit)  # the same code path: bit for bit


def test_the_comparison_fails_outside_a_tolerance_and_on_a_missing_row(tmp_path, checkpoint):
    a = outputs(run_analysis("landscape", tiny_config("landscape", checkpoint), tmp_path / "run", progress=False))

    def changed(name: str, row: int, key: str, value: Any) -> Dict[str, Any]:
        b = copy.deepcopy(a)
        b[name][row][key] = value
        return b

    loss = a["landscape.csv"][4]["loss"]
    assert_same_outputs(a, changed("landscape.csv", 4, "loss", loss * (1 + 5e-5)), TOLERANCES["landscape"])
    for b, tolerances in ((changed("landscape.csv", 4, "loss", loss * (1 + 5e-4)), TOLERANCES["landscape"]),
                          (changed("landscape.csv", 4, "loss", loss * (1 + 5e-5)), None)):  # none: exact
        with pytest.raises(AssertionError, match="landscape.csv row 4 loss"):
            assert_same_outputs(a, b, tolerances)
    with pytest.raises(AssertionError, match="alpha"):  # a grid coordinate is exact
        assert_same_outputs(a, changed("landscape.csv", 0, "alpha", a["landscape.csv"][0]["alpha"] + 1e-12),
                            TOLERANCES["landscape"])
    b = copy.deepcopy(a)
    b["interpolation.csv"].pop()
    with pytest.raises(AssertionError, match="rows against"):
        assert_same_outputs(a, b, TOLERANCES["landscape"])
    # a tolerance that scales with its row: bn-smoothness' grad_diff is 10 % or 1 % of the row's grad_norm
    row = {"grad_norm": 2.0, "grad_diff": 1e-3}
    assert _close(1e-3, 1e-3 + 0.019, TOLERANCES["bn-smoothness"]["grad_diff"], row)
    assert not _close(1e-3, 1e-3 + 0.021, TOLERANCES["bn-smoothness"]["grad_diff"], row)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_device_argument_of_a_new_run_is_used(tmp_path, checkpoint):
    """``run_analysis(..., device="cuda")`` without CUDA: the one-line error, and no run directory."""
    with pytest.raises(ValueError, match="no CUDA device is available"):
        run_analysis("landscape", tiny_config("landscape", checkpoint), tmp_path / "run", progress=False, device="cuda")
    assert not (tmp_path / "run").exists()


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("analysis", ANALYSES)
def test_cuda_analysis_outputs_equal_the_cpus(tmp_path, analysis, checkpoint):
    if analysis == "attribution":
        pytest.importorskip("captum")
    compare(tmp_path, analysis, "cuda", checkpoint)


# --------------------------------------------------------------------------- lowbit train

# tanh: a ReLU's kink crossed or not with the last bit moved weights 3e-5 in 16 steps (module docstring)
TRAIN = tiny_overrides(**{"augment.crop_padding": 0, "model.act": "tanh"})
TRAIN_TOLERANCES: Dict[str, Tolerance] = {
    "train_loss": LOSS, "test_loss": LOSS,  # measured <= 2.4e-7
    "train_acc": one_image(256), "test_acc": one_image(96),
}
WEIGHT_ATOL = 1e-4  # |w| <= 0.22 after 16 SGD steps: measured 4.5e-8 (oneDNN off), 4.3e-7 (1e-6), 4.4e-5 (1e-5)


def compare_training(tmp_path: Path, device_b: str) -> None:
    """``lowbit train`` of a tiny lenet5 on the CPU and on ``device_b``: metrics and final weights."""
    from lowbit.train import load_checkpoint, load_train_config, train

    runs = [train(load_train_config(None, TRAIN + [f"run.device={device}"]), run_dir=tmp_path / name)
            for name, device in (("cpu", "cpu"), ("b", device_b))]  # fmt: skip
    assert yaml.safe_load((runs[1] / "config.yaml").read_text())["run"]["device"] == device_b
    metrics = [[{k: v for k, v in row.items() if not _volatile(k)} for row in read_records(r / "metrics.csv")] for r in runs]
    assert len(metrics[0]) == 2  # two epochs
    assert_same_outputs({"metrics.csv": metrics[0]}, {"metrics.csv": metrics[1]}, TRAIN_TOLERANCES)
    wa, wb = (load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in runs)
    assert list(wa) == list(wb)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=WEIGHT_ATOL, rtol=0, msg=key)


def test_train_on_the_cpu_through_the_comparison(tmp_path):
    compare_training(tmp_path, "cpu")


@needs_cuda
@pytest.mark.cuda
def test_cuda_training_equals_the_cpus(tmp_path):
    compare_training(tmp_path, "cuda")


# --------------------------------------------------------------------------- binary layers in float64


def binary_layers(device: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Two binary convs on ``device`` in float64: the output and the gradients of sum(y²), on the CPU
    (a float conv before each binary one keeps sign ties away: tests/binary_nets.py)."""
    from binary_nets import float_then_binary_convs

    net = float_then_binary_convs()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    net, x = net.to(device), x.to(device)
    y = net(x)
    y.square().sum().backward()
    return y.detach().cpu(), {name: p.grad.cpu() for name, p in net.named_parameters()}


def compare_binary_layers(device_b: str) -> None:
    (ya, ga), (yb, gb) = binary_layers("cpu"), binary_layers(device_b)
    assert ya.abs().max() > 0 and list(ga) == list(gb)
    torch.testing.assert_close(yb, ya, atol=1e-10, rtol=0)  # float64: sums in another order, ~1e-15 apart
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-10, rtol=0, msg=name)


def test_binary_layers_on_the_cpu_through_the_comparison():
    compare_binary_layers("cpu")


@needs_cuda
@pytest.mark.cuda
def test_cuda_binary_layers_equal_the_cpus_in_float64():
    compare_binary_layers("cuda")
