"""Probing real networks: GraphObjective against naive loops, subset estimates, STE statistics, the runner."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import from_dict
from lowbit.estimators import CDG, GraphObjective, ModuleObjective, use_batch_statistics
from lowbit.models import create_model
from lowbit.nn import BinaryConv2d
from lowbit.probe.config import ProbeConfig
from lowbit.probe.network import NetworkConfig, NetworkTask
from lowbit.probe.runner import prepare, run_grid
from lowbit.estimators.ste_stats import gradient_statistics, ste_statistics_records
from lowbit.estimators.subset import subset_cosine, subset_inner
from lowbit.report import write_probe_report
from lowbit.runs import read_records, write_run_files


class TinyBinaryCNN(nn.Module):
    """float conv -> BN -> [BN -> sign -> binary conv] x 2 with a residual -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(3)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv1 = BinaryConv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv2 = BinaryConv2d(4, 3, 3, stride=1, padding=1)
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        out = self.conv2(self.bn2(self.conv1(self.bn1(x)))) + x
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def tiny_cnn_batch(seed=0):
    torch.manual_seed(seed)
    model = use_batch_statistics(TinyBinaryCNN().double()).eval()
    x = torch.randn(12, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    return model, (x, y)


def naive_cdg(model, batch, name, eps):
    """One plain forward per coordinate and sign: [L(w + eps e_i) - L(w - eps e_i)] / 2eps."""
    x, y = batch
    w = dict(model.named_parameters())[name].detach()
    out = torch.empty(w.numel(), dtype=torch.float64)
    with torch.no_grad():
        for i in range(w.numel()):
            losses = []
            for s in (eps, -eps):
                moved = w.clone().reshape(-1)
                moved[i] += s
                logits = torch.func.functional_call(model, {name: moved.reshape(w.shape)}, (x,))
                losses.append(float(F.cross_entropy(logits, y)))
            out[i] = (losses[0] - losses[1]) / (2 * eps)
    return out.reshape(w.shape)


@pytest.mark.parametrize("name", ["conv1.weight", "conv2.weight", "stem.weight", "head.weight", "head.bias"])
@pytest.mark.parametrize("prune", [True, False])
def test_cnn_cdg_equals_naive_loop(name, prune):
    model, batch = tiny_cnn_batch()
    objective = GraphObjective(model, batch, params=[name], prune_unchanged=prune)
    assert objective.folded, objective.fallback_reason
    fast = CDG(eps=0.05).estimate(objective)[name].double()
    reference = naive_cdg(model, batch, name, 0.05)
    assert torch.allclose(fast, reference, atol=1e-10, rtol=0), (fast - reference).abs().max()
    assert reference.abs().max() > 0  # the check is not vacuous


def test_xnor_resnet_cdg_equals_naive_loop_and_prunes():
    torch.manual_seed(1)
    model = use_batch_statistics(create_model("xnor_resnet18", num_classes=10, in_channels=1, width=1).double()).eval()
    batch = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,)))
    for name in ("layer1.0.conv1.weight", "layer2.0.shortcut.0.weight"):
        objective = GraphObjective(model, batch, params=[name])
        fast = CDG(eps=0.01).estimate(objective)[name].double()
        assert torch.allclose(fast, naive_cdg(model, batch, name, 0.01), atol=1e-10, rtol=0)
    # conv1 feeds BN -> sign only: a move that flips no weight sign changes no activation,
    # so the member stops at the first sign and its loss change is exactly 0.
    objective = GraphObjective(model, batch, params=["layer1.0.conv1.weight"])
    assert objective.channel_chain is not None  # conv -> BN -> sign: the one-channel pre-filter applies
    CDG(eps=1e-3).estimate(objective)
    assert objective.pruned_members > 0
    assert GraphObjective(model, batch, params=["layer1.0.conv2.weight"]).channel_chain is None  # residual: no


def test_graph_objective_falls_back_when_the_batch_is_mixed():
    class Centered(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.fc(x)
            return h - h.mean(dim=0)  # mixes samples: not a per-sample op

    torch.manual_seed(0)
    model = Centered().double()
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
    objective = GraphObjective(model, batch, params=["fc.weight"])
    assert not objective.folded and "disagrees" in objective.fallback_reason
    reference = ModuleObjective(model, batch, loss_fn=F.cross_entropy, params=["fc.weight"])
    stacked = {"fc.weight": torch.randn(4, 2, 3, dtype=torch.float64)}
    assert torch.allclose(objective.losses(stacked), reference.losses(stacked))


def test_graph_objective_rejects_training_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 1, 5, 5))
    with pytest.raises(ValueError, match="use_batch_statistics"):
        GraphObjective(model.train(), (torch.randn(2, 1, 5, 5), torch.tensor([0, 1])), params=["0.weight"])


def test_subset_inner_is_unbiased_and_its_variance_estimate_too():
    """Exhaustive over all C(7, 3) subsets: E[T̂] = T and E[SE²] = Var(T̂)."""
    a = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7, -0.4, 1.1], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, -0.3, 2.2, 0.9, -1.5, 0.1], dtype=torch.float64)
    n, m = 7, 3
    estimates, variances = [], []
    for subset in itertools.combinations(range(n), m):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[list(subset)] = True
        value, se = subset_inner({"w": a}, {"w": b}, {"w": mask})
        estimates.append(value)
        variances.append(se * se)
    estimates = torch.tensor(estimates, dtype=torch.float64)
    assert float(estimates.mean()) == pytest.approx(float(a @ b), abs=1e-12)
    exact_variance = float(((estimates - estimates.mean()) ** 2).mean())
    assert sum(variances) / len(variances) == pytest.approx(exact_variance, rel=1e-10)


def test_subset_cosine_on_all_coordinates_is_the_cosine():
    a, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    full = torch.ones(50, dtype=torch.bool)
    value, se = subset_cosine({"w": a}, {"w": b}, {"w": full})
    assert value == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert se == 0.0  # no sampling error without sampling


def test_cdg_subset_measures_only_the_mask_and_matches_full_cdg_there():
    model, batch = tiny_cnn_batch()
    objective = GraphObjective(model, batch, params=["conv1.weight"])
    full = CDG(eps=0.05).estimate(objective)["conv1.weight"]
    estimator = CDG(eps=0.05, coords=40)
    part = estimator.estimate(objective, generator=torch.Generator().manual_seed(3))["conv1.weight"]
    mask = estimator.last_subset["conv1.weight"]
    assert int(mask.sum()) == 40
    assert torch.equal(part[mask], full[mask]) and torch.all(part[~mask] == 0)
    again = CDG(eps=0.05, coords=40)
    again.estimate(objective, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.last_subset["conv1.weight"], mask)


def test_ste_statistics_equal_direct_computation():
    model, _ = tiny_cnn_batch()
    torch.manual_seed(5)
    batches = [(torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 5, (6,))) for _ in range(5)]
    records = ste_statistics_records(model, batches, {"conv1": "conv1.weight"}, {"clip": {"name": "ste_clipped", "clip": 0.5}})
    got = {r["metric"]: r["value"] for r in records}
    # Direct: a plain autograd pass per batch with the clipped STE as the model's own activation.
    grads = []
    for x, y in batches:
        model.zero_grad()
        for module in (model.conv1, model.conv2):
            module.input_quantizer.clip = 0.5
        F.cross_entropy(model(x), y).backward()
        grads.append(model.conv1.weight.grad.detach().reshape(-1).clone())
        for module in (model.conv1, model.conv2):
            module.input_quantizer.clip = 1.0
    g = torch.stack(grads)  # (B, n)
    mean, var = g.mean(0), g.var(0, unbiased=True)
    assert got["ste_mean_norm"] == pytest.approx(float(mean.norm()), rel=1e-9)
    assert got["ste_total_variance"] == pytest.approx(float(var.sum()), rel=1e-9)
    assert got["ste_snr"] == pytest.approx(float(mean.square().sum() / var.sum()), rel=1e-9)
    assert got["ste_std"] == pytest.approx(float(var.sqrt().mean()), rel=1e-9)
    assert got["ste_coord_snr_median"] == pytest.approx(float((mean.abs() / var.sqrt()).median()), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_statistics([{"w": torch.ones(3)}])


TINY_NETWORK = {
    "name": "tiny-net",
    "network": {"model": {"name": "xnor_resnet18", "width": 1}, "image_size": None, "batch_size": 16},
    "probe": {"layers": ["layer1.0.conv1", "linear"], "inits": 1, "batches": 2},
    "estimators": [
        {"name": "cdg", "eps": 0.01, "coords": 12},
        {"name": "ste", "surrogate": "ste"},
        {"name": "ste", "surrogate": "ste_clipped", "clip": [1.0, 0.5]},
    ],
    "measure": {"lr_grid": {"num": 8, "max": 1.0}, "curve_points": 4},
    "stats": {"batches": 3, "batch_size": 8},
    "threads": 1,
}


def network_config(**changes) -> ProbeConfig:
    return from_dict(ProbeConfig, {**TINY_NETWORK, **changes})


def test_network_probe_records_report_and_resume(tmp_path):
    config = network_config()
    write_run_files(tmp_path, config)
    assert run_grid(config, tmp_path, progress=False) == 2 * 2 + 1  # layers x batches + one stats unit
    records = read_records(tmp_path / "records.csv")
    cos = [r for r in records if r["metric"] == "cosine" and r["probed_layer"] == "linear"]
    assert len(cos) == 2 * 3  # batches x STE variants
    assert all(r["dim"] == 10 * 8 + 0 for r in cos)  # linear(8 -> 10) weight, bias not probed
    assert {r["metric"] for r in records} >= {"cosine_se", "coords", "ste_snr", "batch_accuracy", "best_decrease"}
    report = write_probe_report(tmp_path).read_text()
    assert "| estimator | layer1.0.conv1 | linear |" in report
    assert "STE gradient statistics" in report and "plots/ste_snr.png" in report
    assert (tmp_path / "plots" / "cosine_by_probed_layer.png").exists()
    assert run_grid(config, tmp_path, progress=False) == 0  # resume: nothing left


def test_network_config_errors_before_compute():
    with pytest.raises(ValueError, match="did you mean 'layer1.0.conv1'"):
        prepare(network_config(probe={**TINY_NETWORK["probe"], "layers": ["layer1.0.cnv1"]}))
    with pytest.raises(ValueError, match="batches of network.batch_size"):
        prepare(network_config(probe={**TINY_NETWORK["probe"], "batches": 1000}))
    with pytest.raises(ValueError, match="no ste estimator"):
        prepare(network_config(estimators=[{"name": "cdg"}]))
    with pytest.raises(ValueError, match="exclude each other"):
        NetworkConfig(checkpoint="x", pretrain_epochs=1)
    with pytest.raises(ValueError, match="not a network setting"):
        network_config(probe={**TINY_NETWORK["probe"], "sweep": {"act": ["ste"]}})


def test_network_task_from_a_training_run(tmp_path):
    from lowbit.cli import main

    run_dir = tmp_path / "runs"
    assert main([
        "train", "--runs-dir", str(run_dir), "--quiet", "data.image_size=null", "data.train_subset=64",
        "data.test_subset=32", "model.name=xnor_resnet18", "model.width=1", "run.epochs=1", "run.name=t", "run.threads=1",
    ]) == 0
    trained = next(run_dir.iterdir())
    task = NetworkTask(NetworkConfig(checkpoint=str(trained), batch_size=16), seed=0)
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(dict(task.model.named_parameters())["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert task.images.shape[-1] == 8  # the run's image size (native), not the probe default
    with pytest.raises(FileNotFoundError, match="no run directory"):
        NetworkTask(NetworkConfig(checkpoint=str(tmp_path / "missing")))


@pytest.mark.parametrize("name", __import__("lowbit.models", fromlist=["list_models"]).list_models())
def test_every_zoo_model_takes_the_folded_path_and_agrees_with_plain_forwards(name):
    from lowbit.estimators.layers import probe_layers

    from test_models import ZOO_SMALL

    torch.manual_seed(0)
    kwargs = {"width": 2} if name in ("resnet18", "xnor_resnet18") else ZOO_SMALL.get(name, {})
    model = use_batch_statistics(create_model(name, num_classes=10, in_channels=1, **kwargs).double()).eval()
    shape = tuple(getattr(model, "input_shape", (1, 32, 32)))
    batch = (torch.randn(4, *shape, dtype=torch.float64), torch.randint(0, 10, (4,)))
    # A grouped conv on a shared input is outside the folded path (GraphObjective falls back): skip those.
    layers = [n for n in probe_layers(model) if getattr(model.get_submodule(n), "groups", 1) == 1]
    param = layers[len(layers) // 2] + ".weight"
    objective = GraphObjective(model, batch, params=[param])
    assert objective.folded, objective.fallback_reason
    w = objective.params[param]
    stacked = {param: w.unsqueeze(0) + 0.1 * torch.randn(3, *w.shape, dtype=torch.float64)}
    plain = ModuleObjective(model, batch, loss_fn=F.cross_entropy, params=[param])
    assert torch.allclose(objective.losses(stacked), plain.losses(stacked), atol=1e-10, rtol=0)


def test_network_probe_on_a_cifar10_archive(tmp_path):
    """CIFAR-10 read from a (tiny, synthetic) archive in the standard format, at its native 32x32."""
    from test_data import write_cifar_archive

    from lowbit.data.cifar import CIFAR10

    write_cifar_archive(tmp_path, CIFAR10)
    config = network_config(
        network={"model": {"name": "xnor_resnet18", "width": 1}, "dataset": "cifar10", "data_dir": str(tmp_path),
                 "image_size": None, "batch_size": 8},
        probe={"layers": ["layer1.0.conv1"], "inits": 1, "batches": 1},
        stats={"batches": 2, "batch_size": 4},
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_files(run_dir, config)
    assert run_grid(config, run_dir, progress=False) == 2
    records = read_records(run_dir / "records.csv")
    assert {r["dim"] for r in records if r.get("probed_layer") == "layer1.0.conv1"} == {1 * 1 * 9}  # 3x3 conv, width 1
    with pytest.raises(ValueError, match="cifar"):
        prepare(network_config(network={"dataset": "cifar10", "data_dir": str(tmp_path / "nothing")}))


def test_per_tensor_activation_scales_are_detected_and_fall_back():
    """8-bit activations with one max-abs scale per tensor mix the folded members: not folded, still exact."""
    from lowbit.nn import quantize_model

    torch.manual_seed(0)
    model = use_batch_statistics(quantize_model(create_model("lenet5", num_classes=10, in_channels=1, input_size=32)).double()).eval()
    batch = (torch.randn(6, 1, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,)))
    objective = GraphObjective(model, batch, params=["conv2.weight"])
    assert not objective.folded and "disagrees" in objective.fallback_reason
    w = objective.params["conv2.weight"]
    stacked = {"conv2.weight": w.unsqueeze(0) * torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(2, 1, 1, 1, 1)}
    plain = ModuleObjective(model, batch, loss_fn=F.cross_entropy, params=["conv2.weight"])
    assert torch.equal(objective.losses(stacked), plain.losses(stacked))


@pytest.mark.parametrize("name", ["2.weight", "4.weight", "0.weight", "0.bias"])
def test_binary_mlp_with_batchnorm1d_folds_exactly(name):
    from lowbit.nn import BinaryLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), BinaryLinear(8, 7), nn.BatchNorm1d(7), BinaryLinear(7, 3))
    model = use_batch_statistics(model.double()).eval()
    batch = (torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,)))
    objective = GraphObjective(model, batch, params=[name])
    assert objective.folded, objective.fallback_reason
    w = objective.params[name]
    stacked = {name: w.unsqueeze(0) + 0.3 * torch.randn(5, *w.shape, dtype=torch.float64)}
    plain = ModuleObjective(model, batch, loss_fn=F.cross_entropy, params=[name])
    assert torch.allclose(objective.losses(stacked), plain.losses(stacked), atol=1e-12, rtol=0)
