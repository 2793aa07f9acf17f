"""Built-in configs by name: ``lowbit configs`` and bare names in every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.cli_args import split_config_and_overrides
from lowbit.config import ConfigError, builtin_configs, package_config_dir
from lowbit.config_catalog import describe, format_catalog

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "src" / "lowbit" / "configs"


def test_builtin_configs_are_the_package_data():
    assert package_config_dir().resolve() == PACKAGE_CONFIGS.resolve()
    assert [p.name for p in builtin_configs("train-")] == sorted(p.name for p in PACKAGE_CONFIGS.glob("train-*.yaml"))


@pytest.mark.parametrize(
    "given, prefixes, expected",
    [
        ("digits-xnor", ("train-",), "train-digits-xnor.yaml"),
        ("train-digits-xnor", ("train-",), "train-digits-xnor.yaml"),
        ("train-digits-xnor.yaml", ("train-",), "train-digits-xnor.yaml"),
        ("quick-check", ("probe-",), "probe-quick-check.yaml"),
        ("bn-digits", ("analyze-",), "analyze-bn-digits.yaml"),
    ],
)
def test_a_bare_name_resolves_to_the_builtin_config(given, prefixes, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./configs here: only the installed ones
    config, overrides = split_config_and_overrides(given, ["seed=3"], prefixes)
    assert Path(config).resolve() == (PACKAGE_CONFIGS / expected).resolve()
    assert overrides == ["seed=3"]


def test_a_users_configs_folder_comes_first_and_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train-digits.yaml").write_text("run: {epochs: 1}\n")
    config, _ = split_config_and_overrides("digits", [], ("train-",))
    assert Path(config).resolve() == (tmp_path / "configs" / "train-digits.yaml").resolve()
    assert split_config_and_overrides("sub/missing.yaml", [], ("train-",))[0] == "sub/missing.yaml"  # load_config reports it
    assert split_config_and_overrides("seed=1", [], ("train-",)) == (None, ["seed=1"])


def test_an_unknown_name_suggests_the_nearest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'train-digits-xnor'"):
        split_config_and_overrides("digits-xnr", [], ("train-",))


def test_catalog_lists_every_config_once_with_its_description():
    text = format_catalog()
    for path in PACKAGE_CONFIGS.glob("*.yaml"):
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [path.stem]]
        assert describe(path) in line
    assert len(format_catalog("probe").splitlines()) == 1 + len(list(PACKAGE_CONFIGS.glob("probe-*.yaml")))


def test_describe_takes_the_first_sentence_of_the_opening_comment(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# DessiLBI (Fu et al. 2020) on LeNet-5. Second sentence\n# more.\nseed: 0\n# later comment\n")
    assert describe(path) == "DessiLBI (Fu et al. 2020) on LeNet-5"
    path.write_text("seed: 0\n")
    assert describe(path) == ""
    path.write_text("# " + "word " * 60 + "\n")
    assert describe(path).endswith("...") and len(describe(path)) <= 100


def test_configs_command_prints_a_config_and_its_path(capsys):
    assert main(["configs", "digits-xnor"]) == 0
    assert capsys.readouterr().out == (PACKAGE_CONFIGS / "train-digits-xnor.yaml").read_text()
    assert main(["configs", "quick-check", "--path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == (PACKAGE_CONFIGS / "probe-quick-check.yaml").resolve()
    assert main(["configs", "no-such-config"]) == 2
    assert "neither a file nor a built-in config name" in capsys.readouterr().err
