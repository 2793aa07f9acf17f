"""Typed configs: YAML + dotted overrides, errors that name the key and the nearest valid one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import pytest

from lowbit.config import ConfigError, from_dict, load_config, parse_overrides, to_dict


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 10
    mode: Literal["a", "b"] = "a"

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Outer:
    name: str = "x"
    seed: int = 0
    dims: List[int] = field(default_factory=lambda: [2, 4])
    inner: Inner = field(default_factory=Inner)
    budget: Optional[float] = None
    extra: Dict[str, int] = field(default_factory=dict)
    flag: bool = False


def test_defaults_and_roundtrip():
    config = from_dict(Outer, {})
    assert config == Outer()
    assert from_dict(Outer, to_dict(config)) == config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 1e-5\n  steps: 3\n")
    config = load_config(Outer, path, ["dims=[8,16]", "inner.mode=b", "seed=3", "budget=0.1"])
    assert config.name == "run" and config.seed == 3 and config.dims == [8, 16]
    assert config.inner.lr == 1e-5 and isinstance(config.inner.lr, float)  # YAML 1.1 reads 1e-5 as a string
    assert config.inner.mode == "b" and config.budget == 0.1


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"lrr": 0.2}, "sed": 1})
    message = str(info.value)
    assert "inner.lrr" in message and "'inner.lr'" in message
    assert "'sed'" in message and "'seed'" in message  # both problems reported together


def test_wrong_types_are_named():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"seed": "three", "dims": ["a"], "flag": "yes", "inner": {"mode": "c"}})
    message = str(info.value)
    for needle in ("seed: expected an integer, got 'three'", "dims[0]", "flag: expected true or false", "inner.mode"):
        assert needle in message


def test_post_init_errors_are_reported():
    with pytest.raises(ConfigError, match="lr must be > 0, got -1"):
        from_dict(Outer, {"inner": {"lr": -1}})


def test_scalar_for_list_becomes_list():
    assert from_dict(Outer, {"dims": 8}).dims == [8]


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])
    assert parse_overrides(["a.b.c=1", "a.b.d=x"]) == {"a": {"b": {"c": 1, "d": "x"}}}


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_empty_mapping_override_replaces(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extra: {a: 1}\n")
    assert load_config(Outer, path).extra == {"a": 1}
    assert load_config(Outer, path, ["extra={}"]).extra == {}
    assert load_config(Outer, path, ["extra.b=2"]).extra == {"a": 1, "b": 2}


def test_yaml_bounds_and_strictness(tmp_path):
    from lowbit.config import MAX_YAML_DEPTH, parse_yaml, read_yaml

    assert parse_yaml("a: &x [1, 2]\nb: *x\n", "t") == {"a": [1, 2], "b": [1, 2]}  # ordinary aliases still work
    with pytest.raises(ConfigError, match="duplicate key 'lr' \\(first at line 2\\)"):
        parse_yaml("optim:\n  lr: 1\n  lr: 2\n", "t")
    with pytest.raises(ConfigError, match="recursive alias"):
        parse_yaml("a: &x [*x]\n", "t")
    deep = "a: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1)
    with pytest.raises(ConfigError, match="nested more than"):
        parse_yaml(deep, "t")
    parse_yaml("a: " + "[" * (MAX_YAML_DEPTH - 2) + "]" * (MAX_YAML_DEPTH - 2), "t")  # within the bound
    for text, message in [("", "is empty"), ("# only\n", "is empty"), ("- 1\n", "must hold a mapping")]:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_yaml(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("# only a comment\n")
    assert read_yaml(tmp_path / "c.yaml", allow_empty=True) == {}


def test_numbers_must_be_finite_and_fit_64_bits():
    @dataclass
    class C:
        lr: float = 0.1
        steps: int = 1
        cap: Optional[float] = None

    assert from_dict(C, {"lr": 1e30, "steps": 2**62, "cap": None}).steps == 2**62
    with pytest.raises(ConfigError, match="lr: 1e\\+300 is beyond float32"):
        from_dict(C, {"lr": 1e300})
    with pytest.raises(ConfigError) as info:
        from_dict(C, {"lr": float("inf"), "steps": 1e20, "cap": float("-inf")})
    text = str(info.value)
    assert "lr: expected a finite number, got inf" in text and "cap: expected a finite number" in text
    assert "steps: 1e+20 is beyond any count" in text
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        from_dict(C, {"steps": "3"})


def test_changed_keys_names_every_edit():
    from lowbit.runs import changed_keys

    before = {"optim": {"lr": 0.1, "extra": {}}, "run": {"epochs": 2}, "quant": None}
    after = {"optim": {"lr": 0.2, "extra": {"mu": 1}}, "run": {"epochs": 2, "seed": 1}, "quant": None}
    assert changed_keys(before, after) == ["optim.lr", "optim.extra", "run.seed"]
