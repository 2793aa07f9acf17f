"""Tests for lowbit.optim.prune and lowbit.optim.pictures: the support path, pruning, recovery, pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.optim import (
    DessiLBI,
    Pruner,
    SupportTracker,
    dessilbi_param_groups,
    format_pruning_table,
    num_pruned,
    plot_weight_pictures,
    prune_mask,
    prune_order,
    pruning_table,
    support_records,
    w_star,
    weight_picture,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv3 = nn.Conv2d(2, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(torch.relu(self.conv3(x)).flatten(1))


def trained(steps: int = 4):
    model = Net()
    opt = DessiLBI(dessilbi_param_groups(model), lr=0.3, mu=0.5)
    tracker = SupportTracker()
    g = torch.Generator().manual_seed(0)
    for epoch in range(steps):
        x, y = torch.randn(16, 2, 4, 4, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        tracker.update(opt, epoch)
    return model, opt, tracker


def test_w_star():
    w = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    gamma = torch.tensor([[0.0, -1.0], [0.5, 0.0]])
    assert torch.equal(w_star(w, gamma), torch.tensor([[0.0, -2.0], [3.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(2, 2\) vs \(4,\)"):
        w_star(w, gamma.flatten())


@pytest.mark.parametrize("n,percent,k", [(200, 35, 70), (7, 50, 4), (10, 0, 0), (10, 100, 10), (120, 12.5, 15)])
def test_num_pruned(n, percent, k):
    assert num_pruned(n, percent) == k


def test_prune_percentages_give_expected_zeros():
    model, opt, _ = trained()
    pruner = Pruner(model, opt)
    for percent in (0, 10, 35, 50, 80):
        masks = pruner.prune(["fc1"], percent, by="magnitude")  # (10, 32) elementwise: entries
        assert int(model.fc1.weight.eq(0).sum()) == num_pruned(320, percent)
        assert int((~masks["fc1.weight"]).sum()) == num_pruned(320, percent)
        masks = pruner.prune(["conv3"], percent, by="gamma")  # (8, 2, 3, 3) filter mode: whole filters
        zero_filters = int(model.conv3.weight.reshape(8, -1).eq(0).all(dim=1).sum())
        assert zero_filters == num_pruned(8, percent)
        assert int(model.conv3.weight.eq(0).sum()) == num_pruned(8, percent) * 18
        pruner.recover()
    # granularity="entry" on a conv layer prunes single entries
    pruner.prune("conv3", 50, by="magnitude", granularity="entry")
    assert int(model.conv3.weight.eq(0).sum()) == 72
    pruner.recover()


def test_prune_then_recover_restores_exactly():
    model, opt, tracker = trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = Pruner(model, opt, tracker)
    pruner.prune(["conv3", "fc1"], 60, by="order", prune_bias=True)
    pruner.prune(["conv3"], 30, by="gamma", prune_bias=True)  # second call: relative to the originals
    assert int(model.conv3.weight.reshape(8, -1).eq(0).all(dim=1).sum()) == num_pruned(8, 30)
    assert int(model.conv3.bias.eq(0).sum()) == num_pruned(8, 30)
    pruner.apply_w_star(["fc1"])
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruner.recover()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pruner.pruned(["fc1"], 90, by="magnitude"):
        assert int(model.fc1.weight.eq(0).sum()) == 288
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pruner_matches_an_unnamed_optimizer_by_identity():
    model = Net()
    opt = DessiLBI(model.parameters(), lr=0.3, mu=0.5)  # names are param0, param1, ...
    tracker = SupportTracker()
    x, y = torch.randn(16, 2, 4, 4), torch.randint(0, 10, (16,))
    for epoch in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        tracker.update(opt, epoch)
    pruner = Pruner(model, opt, tracker)
    by_order = prune_mask(model.fc1.weight, 40, "order", entry_epoch=tracker.entry_epochs("param2"))
    by_gamma = prune_mask(model.fc1.weight, 40, "gamma", gamma=opt.gamma("param2"))
    assert torch.equal(pruner.prune("fc1", 40, by="order")["fc1.weight"], by_order)
    assert torch.equal(pruner.mask("fc1", 40, by="gamma"), by_gamma)  # ranked on the original weights
    pruner.recover()


def test_prune_order_by_gamma_and_magnitude():
    w = torch.tensor([0.5, -0.1, 0.9, 0.2, -0.3, 0.05])
    gamma = torch.tensor([0.0, 0.7, 0.0, 0.1, 0.0, 0.3])
    # Γ = 0 first (entries 0, 2, 4), smallest |W| first among them: 4 (0.3), 0 (0.5), 2 (0.9);
    # then increasing |Γ|: 3 (0.1), 5 (0.3), 1 (0.7).
    assert prune_order(w, "gamma", gamma=gamma).tolist() == [4, 0, 2, 3, 5, 1]
    assert prune_order(w, "magnitude").tolist() == [5, 1, 3, 4, 0, 2]
    mask = prune_mask(w, 50, "gamma", gamma=gamma)
    assert mask.tolist() == [False, True, False, True, False, True]
    # Filter granularity orders filters by ‖Γ_g‖, then ‖W_g‖.
    wf = torch.tensor([[3.0, 4.0], [0.1, 0.1], [1.0, 0.0]]).reshape(3, 2, 1, 1)
    gf = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.0]]).reshape(3, 2, 1, 1)
    assert prune_order(wf, "gamma", gamma=gf, granularity="filter").tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="needs gamma"):
        prune_order(w, "gamma")
    with pytest.raises(ValueError, match="'size'"):
        prune_order(w, "size")


def test_support_tracker_entry_epochs_on_a_scripted_sequence():
    script = [  # Γ after epochs 0, 1, 2, 3 of a 4-entry layer
        torch.tensor([0.0, 1.0, 0.0, 0.0]),
        torch.tensor([0.0, 1.0, 2.0, 0.0]),
        torch.tensor([3.0, 0.0, 2.0, 0.0]),  # entry 1 leaves the support: its first entry epoch stays 0
        torch.tensor([3.0, 0.5, 2.0, 0.0]),
    ]
    tracker = SupportTracker()
    entered = []
    for epoch, gamma in enumerate(script):
        (record,) = tracker.update({"fc": gamma}, epoch)
        entered.append(record["entered"])
        assert record["support"] == int(gamma.ne(0).sum())
        assert record["sparsity"] == pytest.approx(1 - record["support"] / 4)
    assert entered == [1, 1, 1, 0]
    assert tracker.entry_epochs("fc").tolist() == [2, 0, 1, -1]
    # by="order": never-entered first, then the latest entries; ties by |W|.
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert prune_order(w, "order", entry_epoch=tracker.entry_epochs("fc")).tolist() == [3, 0, 2, 1]

    # Filters enter with their first entry; a checkpoint round trip keeps everything.
    conv = SupportTracker()
    conv.update({"conv": torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])}, 3)
    conv.update({"conv": torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])}, 5)
    assert conv.filter_entry_epochs("conv").tolist() == [-1, 5, 3]
    restored = SupportTracker()
    restored.load_state_dict(conv.state_dict())
    assert torch.equal(restored.entry_epochs("conv"), conv.entry_epochs("conv")) and restored.last_epoch == 5
    with pytest.raises(ValueError, match="increase"):
        restored.update({"conv": torch.zeros(3, 2)}, 5)


def test_support_records_from_the_optimizer():
    model, opt, tracker = trained()
    records = support_records(opt, epoch=9)
    assert [r["layer"] for r in records] == ["conv3.weight", "fc1.weight"]
    for r in records:
        w, gamma = dict(model.named_parameters())[r["layer"]], opt.gamma(r["layer"])
        assert r["residue"] == pytest.approx(float(((w.detach() - gamma) ** 2).sum()) / (2 * 0.5))
        assert r["support"] == int(gamma.ne(0).sum())
    conv = records[0]
    assert conv["mode"] == "filter" and conv["groups"] == 8
    assert conv["group_sparsity"] == pytest.approx(opt.sparsity()["conv3.weight"])
    assert tracker.entry_epochs("fc1.weight").shape == (10, 32)


def test_pruning_table_and_markdown():
    model, opt, tracker = trained()

    def nonzero_fraction(m: nn.Module) -> float:  # a stand-in for test accuracy
        return float(m.fc1.weight.ne(0).float().mean())

    layer_sets = {"fc1": ["fc1"], "conv3+fc1": ["conv3", "fc1"]}
    records = pruning_table(model, nonzero_fraction, layer_sets, [0, 25, 50], by="magnitude", source=opt)
    assert [(r["layer_set"], r["percent"]) for r in records] == [
        ("fc1", 0), ("fc1", 25), ("fc1", 50), ("conv3+fc1", 0), ("conv3+fc1", 25), ("conv3+fc1", 50)
    ]
    assert [r["accuracy"] for r in records[:3]] == pytest.approx([1.0, 0.75, 0.5])
    table = format_pruning_table(records)
    lines = table.splitlines()
    assert lines[0] == "| pruned layers \\ percent | 0% | 25% | 50% |"
    assert lines[2] == "| fc1 | 1.0000 | 0.7500 | 0.5000 |"
    with pytest.raises(ValueError, match="Did you mean 'fc1'"):
        pruning_table(model, nonzero_fraction, {"x": ["fc2"]}, [10], source=opt)


def test_weight_picture_layout(tmp_path):
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    pic = weight_picture(w)
    assert pic.shape == (4, 6)
    for o in range(2):
        for i in range(3):
            np.testing.assert_array_equal(pic[2 * o : 2 * o + 2, 2 * i : 2 * i + 2], w[o, i].numpy())
    padded = weight_picture(w, pad=1)
    assert padded.shape == (5, 8) and np.isnan(padded[2]).all() and padded[3, 3] == w[1, 1, 0, 0]
    lin = torch.randn(3, 5)
    np.testing.assert_array_equal(weight_picture(lin), lin.numpy().astype(np.float64))
    path = plot_weight_pictures({"DessiLBI": w * (w > 10), "SGD": w}, tmp_path / "pics" / "conv.png")
    assert path.exists() and path.stat().st_size > 1000
