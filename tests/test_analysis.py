"""lowbit.analysis: smoothness probes, directions, batched landscapes, captum wrappers, the CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.analysis import (
    AttributionConfig,
    BNModelSpec,
    BNSmoothnessConfig,
    attribute,
    build_bn_model,
    evaluate_affine,
    filter_norms,
    grid_coordinates,
    heatmap,
    loss_and_grad,
    model_state,
    normalize_direction,
    probe_gradient_direction,
    random_direction,
    resolve_layer,
    state_difference,
    step_sizes,
    weight_stats,
)
from lowbit.analysis.command import ANALYSES
from lowbit.config import ConfigError, load_config


# --------------------------------------------------------------------------- a quadratic L(w) = ½ wᵀAw


class Quadratic(nn.Module):
    """forward(x) = ½ wᵀAw (x ignored); the 'loss' is the output itself."""

    def __init__(self, dim: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.register_buffer("A", m @ m.T + 0.5 * torch.eye(dim, dtype=torch.float64))  # SPD
        self.w = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.w @ self.A @ self.w


def _own_loss(out, y, reduction="mean"):
    return out.sum()


def test_probe_on_quadratic_matches_closed_form():
    model = Quadratic()
    A, w = model.A, model.w.detach().clone()
    g = A @ w
    etas = [0.01, 0.03, 0.1]
    probe = probe_gradient_direction(model, torch.zeros(1), torch.zeros(1), _own_loss, etas)
    assert probe.loss == pytest.approx(float(0.5 * w @ A @ w), rel=1e-12)
    assert probe.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)
    curvature = float((A @ g).norm() / g.norm())  # ‖A η g‖ / ‖η g‖, the same for every η
    for eta, loss, diff, dist, ratio in zip(probe.etas, probe.losses, probe.grad_diffs, probe.distances, probe.ratios):
        moved = w - eta * g
        assert loss == pytest.approx(float(0.5 * moved @ A @ moved), rel=1e-10)  # the landscape, in closed form
        assert diff == pytest.approx(float((A @ (eta * g)).norm()), rel=1e-10)  # ∇L(w − ηg) − ∇L(w) = −ηAg
        assert dist == pytest.approx(eta * float(g.norm()), rel=1e-10)
        assert ratio == pytest.approx(curvature, rel=1e-10)
    assert probe.beta == pytest.approx(curvature, rel=1e-10)
    assert probe.loss_band == (min(probe.losses), max(probe.losses))
    assert model.w.grad is None  # nothing accumulated in .grad


def test_probe_is_repeatable_no_gradient_accumulation():
    model = Quadratic(seed=1)
    a = probe_gradient_direction(model, torch.zeros(1), torch.zeros(1), _own_loss, [0.05, 0.1])
    b = probe_gradient_direction(model, torch.zeros(1), torch.zeros(1), _own_loss, [0.05, 0.1])
    assert a.records() == b.records()


def test_distance_is_the_distance_actually_moved():
    # Large weights, tiny step: float32 rounding makes the moved distance differ from η‖g‖.
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1e4)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    probe = probe_gradient_direction(lin, x, y, F.mse_loss, [1e-9])
    _, g = loss_and_grad(lin, dict(lin.named_parameters()), {}, x, y, F.mse_loss)
    w = lin.weight.detach()
    moved = w - 1e-9 * g["weight"]
    assert probe.distances[0] == pytest.approx(float((moved - w).double().norm()), rel=1e-12)


def test_step_sizes():
    assert step_sizes(0.1, [0.5, 4.0], 4) == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert step_sizes(0.1, [0.5, 4.0], 3, "linear") == pytest.approx([0.05, 0.225, 0.4])
    with pytest.raises(ValueError, match="lr=-1"):
        step_sizes(-1, [0.5, 4.0], 4)


# --------------------------------------------------------------------------- BatchNorm and the probe


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def test_probing_leaves_bn_running_stats_and_weights_unchanged():
    model = _bn_net()
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    model.train()
    model(x)  # some non-trivial running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    probe = probe_gradient_direction(model, x, y, F.cross_entropy, [0.01, 0.1])
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # running_mean/var, num_batches_tracked, weights
    assert not model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    # the probe ran in train mode: its L(w) is the train-mode loss on the batch (batch statistics)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        assert probe.loss == pytest.approx(float(F.cross_entropy(reference(x), y)), rel=1e-6)


def test_bn_pair_shares_its_initial_weights():
    spec = BNModelSpec(width_mult=0.0625)
    plain, bn = (build_bn_model(spec, flag, 10, 1, seed=3) for flag in (False, True))
    convs = [m.weight for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs_bn = [m.weight for m in bn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == len(convs_bn) and all(torch.equal(a, b) for a, b in zip(convs, convs_bn))
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert bn(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_model_kwargs_are_refused_where_a_width_scaled_vgg_would_ignore_them():
    with pytest.raises(ValueError, match=r"model.kwargs \['dropout'\] cannot be applied with model.width_mult 0.25"):
        BNModelSpec(width_mult=0.25, kwargs={"dropout": 0.5})
    assert BNModelSpec(width_mult=0.25).kwargs == {}
    assert BNModelSpec(width_mult=1.0, kwargs={"dropout": 0.5}).kwargs == {"dropout": 0.5}  # create_model checks it then


# --------------------------------------------------------------------------- directions


def test_filter_normalisation_gives_the_weights_filter_norms():
    model = _bn_net()
    theta = {k: v.detach() for k, v in model.named_parameters()}
    d = random_direction(theta, torch.Generator().manual_seed(0))
    for name, w in theta.items():
        if w.dim() > 1:
            assert torch.allclose(filter_norms(d[name]), filter_norms(w), rtol=1e-5), name
            assert filter_norms(d[name]).shape == (w.shape[0],)
        else:
            assert torch.count_nonzero(d[name]) == 0, name  # biases and BN: zeroed by default
    copied = random_direction(theta, torch.Generator().manual_seed(0), one_d="copy")
    assert torch.equal(copied["1.weight"], theta["1.weight"])
    normed = random_direction(theta, torch.Generator().manual_seed(0), one_d="normalize")
    assert float(normed["0.bias"].norm()) == pytest.approx(float(theta["0.bias"].norm()), rel=1e-5)
    layer = random_direction(theta, torch.Generator().manual_seed(0), norm="layer")
    assert float(layer["0.weight"].norm()) == pytest.approx(float(theta["0.weight"].norm()), rel=1e-5)
    again = random_direction(theta, torch.Generator().manual_seed(0))
    assert all(torch.equal(d[k], again[k]) for k in d)  # seeded


def test_normalize_direction_rejects_bad_input():
    with pytest.raises(ValueError, match="'fliter'"):
        normalize_direction({"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}, norm="fliter")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        normalize_direction({"w": torch.ones(3)}, {"w": torch.ones(2)})


# --------------------------------------------------------------------------- landscapes


def test_grid_coordinates_are_row_major_with_y_outer():
    xs, ys, coords = grid_coordinates([-1, 1], [0, 2], 3)
    assert coords.shape == (9, 2)
    assert coords[1].tolist() == [0.0, 0.0] and coords[3].tolist() == [-1.0, 1.0]


def test_landscape_of_a_quadratic_equals_the_closed_form():
    model = Quadratic(dim=4)
    A, w = model.A, model.w.detach()
    d1 = {"w": torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)}
    d2 = {"w": torch.tensor([0, 1.0, 1.0, 0], dtype=torch.float64)}
    _, _, coords = grid_coordinates([-1, 1], [-1, 1], 5)
    losses, _ = evaluate_affine(
        model, {"w": w}, [d1, d2], coords, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long),
        loss_fn=_own_loss, points_per_batch=7, vmap_points=True,
    )  # fmt: skip
    for (a, b), loss in zip(coords.tolist(), losses.tolist()):
        p = w + a * d1["w"] + b * d2["w"]
        assert loss == pytest.approx(float(0.5 * p @ A @ p), rel=1e-10)


@pytest.mark.parametrize("bn,vmap_points", [("eval", True), ("eval", False), ("batch", True), ("recompute", False)])
def test_batched_grid_equals_point_by_point(bn, vmap_points):
    model = _bn_net()
    model.train()
    for _ in range(3):
        model(torch.randn(16, 1, 6, 6))
    model.eval()
    x, y = torch.randn(20, 1, 6, 6), torch.randint(0, 3, (20,))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    d1, d2 = random_direction(theta, gen), random_direction(theta, gen)
    _, _, coords = grid_coordinates([-1, 1], [-0.5, 0.5], 4)
    losses, accs = evaluate_affine(
        model, theta, [d1, d2], coords, x, y, batch_size=7, points_per_batch=5, bn=bn, bn_images=x, vmap_points=vmap_points
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p, (a, b) in enumerate(coords.tolist()):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in ref.named_parameters():
                param.add_(a * d1[name] + b * d2[name])
            if bn == "recompute":
                for m in ref.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        m.momentum = None
                ref.train()
                for s in range(0, 20, 7):
                    ref(x[s : s + 7])
                ref.eval()
            if bn == "batch":
                ref.train()  # every BN normalises with its batch (this net has no other mode-dependent layer)
                parts = [(ref(x[s : s + 7]), y[s : s + 7]) for s in range(0, 20, 7)]
                loss = sum(float(F.cross_entropy(o, t, reduction="sum")) for o, t in parts) / 20
                acc = sum(int((o.argmax(1) == t).sum()) for o, t in parts) / 20
            else:
                out = ref(x)
                loss, acc = float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
        assert float(losses[p]) == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert float(accs[p]) == pytest.approx(acc)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model was not touched


def test_interpolation_ends_are_the_two_models():
    a_model, b_model = _bn_net(0), _bn_net(1)
    for m in (a_model, b_model):
        m.train()
        m(torch.randn(16, 1, 6, 6))
        m.eval()
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 3, (10,))
    a, b = model_state(a_model), model_state(b_model)
    direction = state_difference(a, b)  # weights and running statistics; num_batches_tracked stays
    assert "1.num_batches_tracked" not in direction and "1.running_mean" in direction
    losses, _ = evaluate_affine(a_model, a, [direction], torch.tensor([[0.0], [1.0]]), x, y, vmap_points=True)
    with torch.no_grad():
        assert float(losses[0]) == pytest.approx(float(F.cross_entropy(a_model(x), y)), rel=1e-5)
        assert float(losses[1]) == pytest.approx(float(F.cross_entropy(b_model(x), y)), rel=1e-5)


# --------------------------------------------------------------------------- attributions (captum)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu1(self.conv(x))), 1))


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "guided_backprop"])
def test_captum_wrappers_return_the_input_shape(method):
    model = SmallCNN()
    x = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 2, 4])
    attr, delta = attribute(model, x, targets, method, ig_steps=64)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    assert heatmap(attr).shape == (3, 8, 8)
    assert all(p.grad is None for p in model.parameters())
    if method == "integrated_gradients":
        assert delta.shape == (3,) and float(delta.abs().max()) < 1e-2  # completeness: Σ IG = S(x) − S(0)
    else:
        assert delta is None
    if method == "saliency":
        assert (attr >= 0).all()


def test_unknown_attribution_method():
    with pytest.raises(ValueError, match="saliency"):
        attribute(SmallCNN(), torch.randn(1, 3, 8, 8), torch.tensor([0]), "saliancy")


# --------------------------------------------------------------------------- weights


def test_resolve_layer_and_weight_stats():
    model = SmallCNN()
    assert resolve_layer(model, "conv") == "conv.weight"
    assert resolve_layer(model, "fc.bias") == "fc.bias"
    with pytest.raises(KeyError, match="'conv'"):
        resolve_layer(model, "cnv")
    w = torch.zeros(4, 2, 3, 3)
    w[0] = 1.0
    stats = weight_stats(w)
    assert stats["shape"] == "4x2x3x3" and stats["frac_zero_filters"] == 0.75 and stats["frac_zero"] == 0.75


# --------------------------------------------------------------------------- configs


def test_configs_reject_bad_values_with_the_value_quoted():
    with pytest.raises(ConfigError, match="-0.1"):
        load_config(BNSmoothnessConfig, None, ["train.lr=-0.1"])
    with pytest.raises(ConfigError, match="did you mean 'probe.every'"):
        load_config(BNSmoothnessConfig, None, ["probe.evry=3"])
    with pytest.raises(ConfigError, match="did you mean 'saliency'"):
        load_config(AttributionConfig, None, ["methods=[saliancy]"])
    with pytest.raises(ConfigError, match=r"\[4.0, 0.5\]"):
        load_config(BNSmoothnessConfig, None, ["probe.eta_range=[4.0,0.5]"])


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("analyze-*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    import lowbit.analysis as analysis
    from lowbit.analysis.cli import ANALYSES

    classes = [getattr(analysis, spec[0]) for spec in ANALYSES.values()]
    loaded = []
    for cls in classes:
        try:
            loaded.append(load_config(cls, path))
        except ConfigError:
            pass
    assert len(loaded) == 1, f"{path.name} should load as exactly one analysis config"


@pytest.mark.parametrize(
    "cls_name,filename",
    [
        ("BNSmoothnessConfig", "analyze-bn-digits.yaml"),
        ("LandscapeConfig", "analyze-landscape-digits.yaml"),
        ("AttributionConfig", "analyze-attribution-digits.yaml"),
    ],
)
def test_digits_configs_spell_out_the_defaults(cls_name, filename):
    import lowbit.analysis as analysis
    from lowbit.config import to_dict

    cls = getattr(analysis, cls_name)
    assert to_dict(load_config(cls, CONFIGS / filename)) == to_dict(cls())


# --------------------------------------------------------------------------- the command, end to end (small)


def test_cli_accepts_overrides_after_the_options():
    from lowbit.cli import build_parser

    args = build_parser().parse_args(
        ["analyze", "landscape", "some.yaml", "--runs-dir", "x", "grid.resolution=3", "--quiet", "eval.bn=batch"]
    )
    assert args.config == "some.yaml"
    assert args.overrides == ["grid.resolution=3", "eval.bn=batch"] and args.runs_dir == "x" and args.quiet


@pytest.mark.parametrize("name", list(ANALYSES))
def test_the_help_example_of_each_analysis_is_valid_for_it(name):
    """The ``e.g.`` of ``lowbit analyze NAME --help``, as a command line, parses and passes the analysis' checks."""
    import argparse

    from lowbit.analysis.command import load_analysis_config
    from lowbit.analysis.preflight import check_analysis
    from lowbit.cli import build_parser
    from lowbit.cli_args import split_config_and_overrides

    parser = build_parser()
    analyze = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["analyze"]
    sub = next(a for a in analyze._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    help_text = next(a.help for a in sub._actions if a.dest == "overrides")
    example = help_text.split("e.g. ", 1)[1].split()
    assert example and all("=" in word for word in example)
    args = parser.parse_args(["analyze", name, *example])
    config_path, overrides = split_config_and_overrides(args.config, args.overrides)  # as the command does
    assert config_path is None and overrides == example
    config = load_analysis_config(name, config_path, overrides)  # unknown keys, wrong types: ConfigError
    check_analysis(name, config)
    default = load_analysis_config(name)
    assert config != default  # each override reached the config


def test_cli_bn_smoothness_end_to_end(tmp_path):
    from lowbit.cli import main
    from lowbit.runs import read_records

    rc = main(
        [
            "analyze", "bn-smoothness", "--runs-dir", str(tmp_path), "--quiet",
            "model.width_mult=0.0625", "train.steps=3", "probe.every=2", "probe.num_steps=2",
            "lr_band.lrs=[1e-3,1e-4]", "lr_band.steps=2", "data.batch_size=16", "data.train_subset=64",
        ]
    )  # fmt: skip
    assert rc == 0
    (run_dir,) = tmp_path.iterdir()
    probes = read_records(run_dir / "bn_probes.csv")
    assert {r["step"] for r in probes} == {0, 2} and len(probes) == 2 * 2 * 2  # steps x etas x models
    assert all(r["distance"] > 0 and math.isfinite(r["ratio"]) for r in probes)
    assert len(read_records(run_dir / "bn_lr_band.csv")) == 2 * 2 * 2
    report = (run_dir / "report.md").read_text()
    assert "effective β-smoothness" in report or "β" in report
    for name in ("bn_probes.png", "bn_training.png", "bn_lr_band.png"):
        assert (run_dir / "plots" / name).stat().st_size > 0
    assert f"Reproduce: `lowbit analyze bn-smoothness {run_dir / 'config.yaml'}`" in report

    # `lowbit report` rebuilds an analysis run's report and plots from its records (docs/analysis.md)
    (run_dir / "report.md").unlink()
    (run_dir / "plots" / "bn_probes.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report
    assert (run_dir / "plots" / "bn_probes.png").stat().st_size > 0


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    from lowbit.analysis.config import QUICK_LENET
    from lowbit.analysis.source import quick_train

    run = tmp_path_factory.mktemp("train") / "lenet"
    return quick_train(QUICK_LENET + ["run.epochs=1", "data.train_subset=256", "data.test_subset=64"], run)


def test_cli_landscape_attribution_weights_end_to_end(tmp_path, lenet_checkpoint):
    from lowbit.cli import main
    from lowbit.runs import read_records

    ckpt = str(lenet_checkpoint)
    assert main(["analyze", "landscape", "--runs-dir", str(tmp_path / "l"), "--quiet", f"source.checkpoint={ckpt}",
                 "grid.resolution=3", "eval.num_images=32", "interpolation.points=3"]) == 0  # fmt: skip
    (run,) = (tmp_path / "l").iterdir()
    grid = read_records(run / "landscape.csv")
    assert len(grid) == 9
    interp = read_records(run / "interpolation.csv")
    assert {r["t"] for r in interp} >= {0.0, 1.0} and {r["split"] for r in interp} == {"train", "test"}
    for name in ("landscape_contour.png", "landscape_surface.png", "interpolation.png"):
        assert (run / "plots" / name).exists()

    assert main(["analyze", "attribution", "--runs-dir", str(tmp_path / "a"), "--quiet", f"source.checkpoint={ckpt}",
                 "indices=[0,1]", "ig_steps=8"]) == 0  # fmt: skip
    (run,) = (tmp_path / "a").iterdir()
    assert len(read_records(run / "attribution.csv")) == 2 * 3
    assert (run / "plots" / "attributions.png").exists()

    assert main(["analyze", "weights", "--runs-dir", str(tmp_path / "w"), "--quiet",
                 f"checkpoints={{a: {ckpt}, b: {ckpt}}}", "layers=[conv3,fc1]"]) == 0  # fmt: skip
    (run,) = (tmp_path / "w").iterdir()
    rows = read_records(run / "weights.csv")
    assert len(rows) == 4 and {r["layer"] for r in rows} == {"conv3", "fc1"}
    assert (run / "plots" / "weights_conv3.png").exists()
    assert "## Weight pictures" in (run / "report.md").read_text()


def test_cli_reports_a_bad_layer_as_one_line(tmp_path, lenet_checkpoint, capsys):
    from lowbit.cli import main

    rc = main(["analyze", "weights", "--runs-dir", str(tmp_path), "--quiet", f"checkpoints={{a: {lenet_checkpoint}}}", "layers=[conv9]"])
    assert rc == 2
    assert "did you mean 'conv3'" in capsys.readouterr().err
