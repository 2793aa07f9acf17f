"""The commands a sweep can run, each through its public run function.

An adapter knows, for one command, how ``lowbit <command> CONFIG key=value``
builds its config (the data used when there is no file, the config class),
what it checks before any compute, which key a sweep's ``seeds`` set, and how
to run (or resume) one cell into a given run directory. Nothing here reaches
below a command's public API (``lowbit.train.train``,
``lowbit.probe.command.run_probe``, ``lowbit.analysis.command.run_analysis``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from lowbit.config import from_dict, read_yaml, to_dict
from lowbit.registry import UnknownNameError, unknown_name_message
from lowbit.runs import clear_run_dir, config_changes

Log = Optional[Callable[[str], None]]


class CommandAdapter:
    """One command as seen by a sweep; subclasses fill in the command's specifics."""

    words: str = ""  # as typed after `lowbit`: "train", "probe", "analyze landscape"
    seed_key: Optional[str] = None
    config_prefixes: Tuple[str, ...] = ()  # built-in config names: configs/<prefix><name>.yaml

    def config_class(self) -> type:
        raise NotImplementedError

    def default_base(self) -> Dict[str, Any]:
        """What the command runs when given no config file."""
        return {}

    def build(self, data: Dict[str, Any]) -> Any:
        """The validated config (``ConfigError`` lists every problem)."""
        return from_dict(self.config_class(), data)

    def check(self, config: Any) -> None:
        """Every check the command makes before its run directory exists or data is loaded."""

    def run(self, config: Any, run_dir: Path, log: Log) -> None:
        """Run one cell into ``run_dir``, resuming what an earlier attempt left there."""
        raise NotImplementedError

    def same_config(self, run_dir: Path, config: Any) -> bool:
        """Whether ``run_dir`` holds this very config (so resuming it continues this cell)."""
        path = run_dir / "config.yaml"
        return path.is_file() and not config_changes(read_yaml(path), config)


class TrainAdapter(CommandAdapter):
    words = "train"
    seed_key = "run.seed"
    config_prefixes = ("train-",)

    def config_class(self) -> type:
        from lowbit.train import TrainConfig

        return TrainConfig

    def default_base(self) -> Dict[str, Any]:
        from lowbit.train import TrainConfig

        return to_dict(TrainConfig())  # as load_train_config without a file

    def check(self, config: Any) -> None:
        from lowbit.train import check_config

        check_config(config)

    def run(self, config: Any, run_dir: Path, log: Log) -> None:
        from lowbit.train import train
        from lowbit.train.checkpoint import checkpoint_path

        if checkpoint_path(run_dir).exists() and self.same_config(run_dir, config):
            train(resume=run_dir, log=log)
        else:
            _clear(run_dir)
            train(config, run_dir=run_dir, log=log)


class ProbeAdapter(CommandAdapter):
    words = "probe"
    seed_key = "seed"
    config_prefixes = ("probe-",)

    def config_class(self) -> type:
        from lowbit.probe import ProbeConfig

        return ProbeConfig

    def default_base(self) -> Dict[str, Any]:
        return {"name": "probe-default"}

    def check(self, config: Any) -> None:
        from lowbit.probe import prepare

        prepare(config)

    def run(self, config: Any, run_dir: Path, log: Log) -> None:
        from lowbit.probe.command import RECORDS_FILE, run_probe

        if (run_dir / RECORDS_FILE).exists() and self.same_config(run_dir, config):
            run_probe(resume=run_dir, progress=False, log=log)
        else:
            _clear(run_dir)
            run_probe(config, run_dir=run_dir, progress=False, log=log)


class AnalyzeAdapter(CommandAdapter):
    config_prefixes = ("analyze-",)

    def __init__(self, analysis: str):
        from lowbit.analysis.command import SEED_KEYS

        self.analysis = analysis
        self.words = f"analyze {analysis}"
        self.seed_key = SEED_KEYS[analysis]
        self.config_prefixes = (f"analyze-{analysis}-", "analyze-")

    def config_class(self) -> type:
        from lowbit.analysis.command import analysis_config_class

        return analysis_config_class(self.analysis)

    def check(self, config: Any) -> None:
        from lowbit.analysis.preflight import check_analysis

        check_analysis(self.analysis, config)

    def run(self, config: Any, run_dir: Path, log: Log) -> None:
        from lowbit.analysis.command import run_analysis

        _clear(run_dir)  # an analysis has no resume: a cell starts over
        run_analysis(self.analysis, config, run_dir=run_dir, progress=False, log=log)


def get_adapter(command: str) -> CommandAdapter:
    """The adapter of ``train``, ``probe`` or ``analyze <analysis>``."""
    words = command.split()
    if words == ["train"]:
        return TrainAdapter()
    if words == ["probe"]:
        return ProbeAdapter()
    if len(words) == 2 and words[0] == "analyze":
        from lowbit.analysis.command import ANALYSES

        if words[1] not in ANALYSES:
            raise UnknownNameError(unknown_name_message("analysis", words[1], ANALYSES))
        return AnalyzeAdapter(words[1])
    raise ValueError(f"a sweep runs train, probe or analyze <analysis>, got {command!r}")


def _clear(run_dir: Path) -> None:
    """Empty ``run_dir`` except the cell's log (and the lock): an attempt that must start over leaves nothing behind."""
    clear_run_dir(run_dir, keep=("cell.log",))
