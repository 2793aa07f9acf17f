"""lowbit.grid: the one expansion behind probe units and sweep cells."""

import itertools

import pytest

from lowbit.grid import axis, cartesian, select, zipped


def test_cartesian_is_itertools_product_with_the_first_axis_outermost():
    dims, acts, inits = [4, 8], ["ste", "none"], [0, 1, 2]
    points = cartesian([axis("dim", dims), axis("act", acts), axis("init", inits)])
    expected = [{"dim": d, "act": a, "init": i} for d, a, i in itertools.product(dims, acts, inits)]
    assert points == expected
    assert cartesian([]) == [{}]  # no axes: one empty point


def test_zipped_varies_keys_together_and_checks_lengths():
    together = zipped({"lr": [0.1, 0.01], "opt": ["sgd", "adam"]})
    assert together == [{"lr": 0.1, "opt": "sgd"}, {"lr": 0.01, "opt": "adam"}]
    assert cartesian([axis("w", [1, 2]), together]) == [
        {"w": 1, "lr": 0.1, "opt": "sgd"}, {"w": 1, "lr": 0.01, "opt": "adam"},
        {"w": 2, "lr": 0.1, "opt": "sgd"}, {"w": 2, "lr": 0.01, "opt": "adam"},
    ]
    with pytest.raises(ValueError, match="same length.*lr: 2, opt: 3"):
        zipped({"lr": [0.1, 0.01], "opt": ["sgd", "adam", "x"]})
    with pytest.raises(ValueError, match="varied by two axes"):
        cartesian([axis("lr", [1]), zipped({"lr": [2]})])


def test_select_keeps_order_and_refuses_unknown_coordinates():
    points = cartesian([axis("dim", [4, 8, 16]), axis("init", [0, 1])])
    part = select(points, {"dim": [16, 4], "init": [1]})
    assert part == [{"dim": 4, "init": 1}, {"dim": 16, "init": 1}]  # the grid's order, not the selection's
    assert select(points, {"dim": [8.0]}) == [{"dim": 8, "init": 0}, {"dim": 8, "init": 1}]  # 8 == 8.0
    assert select(points, {"dim": ["8"]}) == []  # a string is not a number
    with pytest.raises(ValueError, match="'dims'.*coordinates: dim, init"):
        select(points, {"dims": [4]})
