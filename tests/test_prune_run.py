"""The pruning table of a finished run (lowbit.train.prune_run) on tiny DessiLBI and SGD runs."""

from __future__ import annotations

import pytest

from lowbit.runs import read_records
from lowbit.train import load_train_config, train
from lowbit.train.prune_run import prune_run

RECIPE = [
    "data.image_size=32", "data.train_subset=256", "data.test_subset=128", "data.batch_size=32",
    "run.epochs=2", "run.tensorboard=false", "run.threads=1", "augment.crop_padding=0",
    "optim.lr=0.02", "optim.weight_decay=0.0",
]


def test_pruning_a_dessilbi_run_and_an_sgd_run(tmp_path):
    lbi = train(load_train_config(None, [*RECIPE, "optim.name=dessilbi", "optim.extra={kappa: 1.0, mu: 5.0}"]),
                run_dir=tmp_path / "lbi")
    records = prune_run(lbi, percents=[0, 50, 100])
    final = read_records(lbi / "metrics.csv")[-1]["test_acc"]
    by_set = {(r["layer_set"], r["percent"]): r["accuracy"] for r in records}
    assert by_set[("conv3", 0)] == final and by_set[("conv3+fc1", 0)] == final  # unpruned: the run's own accuracy
    assert {r["by"] for r in records} == {"gamma"}
    assert by_set[("conv3+fc1", 100)] == pytest.approx(0.0, abs=0.3)  # no conv3 filter and no fc1 weight left
    sgd = train(load_train_config(None, [*RECIPE, "optim.name=sgd"]), run_dir=tmp_path / "sgd")
    assert {r["by"] for r in prune_run(sgd, percents=[0, 20])} == {"magnitude"}
    with pytest.raises(ValueError, match="no Gamma"):
        prune_run(sgd, by="gamma")
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        prune_run(tmp_path / "nothing")


def test_dessilbi_as_one_group_trains_its_layers_and_reports_their_sparsity(tmp_path):
    """optim.groups with a DessiLBI case (Larq's CaseOptimizer): Gamma for the selected convs only, SGD for the rest."""
    groups = "optim.groups=[{params: ['conv*'], name: dessilbi, extra: {kappa: 1.0, mu: 5.0}}]"
    run = train(load_train_config(None, [*RECIPE, "optim.name=sgd", groups]), runs_dir=tmp_path / "runs")
    records = read_records(run / "metrics.csv")
    sparsity = sorted(k for k in records[-1] if k.startswith("gamma_sparsity/"))
    assert sparsity == ["gamma_sparsity/conv1.weight", "gamma_sparsity/conv2.weight", "gamma_sparsity/conv3.weight"]
    assert all(0 <= records[-1][k] <= 1 for k in sparsity) and records[-1]["residue"] > 0
    rows = prune_run(run, layer_sets={"conv3": ["conv3"]}, percents=[0, 50])  # ranked by the DessiLBI case's Gamma
    assert {r["by"] for r in rows} == {"gamma"} and rows[0]["accuracy"] == records[-1]["test_acc"]
