"""The ``mlflow`` tracker: one MLflow run per lowbit run (the ``lowbit[mlflow]`` extra).

It talks to the store through ``mlflow.tracking.MlflowClient`` (no global
active run, so it is safe inside Ray workers and next to user code that uses
``mlflow.start_run``). The store is ``MLflowConfig.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else MLflow's default; a local ``sqlite:///...``
store needs no server. The MLflow run is named after the run directory and
tagged ``lowbit.command``, ``lowbit.run_dir`` and, at the end,
``lowbit.status``; its id is kept in ``RUN_DIR/mlflow.yaml`` so that a resumed
run (``--resume``) continues the same MLflow run.

Metric and parameter names keep MLflow's characters (letters, digits, ``_ - . /
: space``); any other character becomes ``_`` (``cosine/ste(surrogate=swish_sign)``
-> ``cosine/ste_surrogate_swish_sign``).
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from lowbit.tracking.base import TrackingContext, register_tracker

RUN_FILE = "mlflow.yaml"  # in the run directory: the MLflow run id and store, for --resume
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value (characters)
# lowbit status -> MLflow RunStatus: an early stop by the epoch callback is a finished run (its tag says stopped)
_RUN_STATUS = {"complete": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED",
               "failed": "FAILED"}
_BAD_CHARACTERS = re.compile(r"[^/\w.\- :]+")


def mlflow_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric and parameter names replaced by ``_``."""
    cleaned = _BAD_CHARACTERS.sub("_", str(name)).strip("_ ")
    return cleaned[:250] or "_"  # MLflow's key length limit


@register_tracker("mlflow")
class MLflowTracker:
    """One MLflow run (``MlflowClient``; needs ``mlflow-skinny``, and SQLAlchemy + Alembic for sqlite stores)."""

    @staticmethod
    def missing() -> Optional[str]:
        if importlib.util.find_spec("mlflow") is None:
            return "MLflow is not installed: pip install 'lowbit[mlflow]' (mlflow-skinny with SQLAlchemy and Alembic)"
        return None

    def __init__(self, context: TrackingContext):
        self.run_dir = Path(context.run_dir)
        settings = context.mlflow
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=settings.tracking_uri)
            self.tracking_uri = str(self.client.tracking_uri)
            previous = self._previous_run() if context.resumed else None
            if previous is not None:
                self.run_id = previous
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                experiment = self._experiment_id(settings.experiment or _env("MLFLOW_EXPERIMENT_NAME") or f"lowbit-{context.command}")
                run = self.client.create_run(experiment, run_name=self.run_dir.name, tags={
                    "lowbit.command": context.command, "lowbit.run_dir": str(self.run_dir.resolve())})
                self.run_id = run.info.run_id
                self._save_run_file(experiment)
        except Exception as error:  # noqa: BLE001 - any store problem: one line naming the store and the fix
            raise ValueError(_open_error(settings.tracking_uri, error, context.settings_key)) from error
        self.logged_params = set(self.client.get_run(self.run_id).data.params) if previous is not None else set()
        self.logged_through = self._last_steps() if previous is not None else {}

    # ---- the interface

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # a resumed run keeps its parameters (MLflow refuses to change a logged one)
        fresh = {mlflow_name(k): str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}
        fresh = {k: v for k, v in fresh.items() if k not in self.logged_params}
        if fresh:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in fresh.items()])
            self.logged_params.update(fresh)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        # a resumed run skips the steps its killed attempt logged after the last checkpoint (MLflow would
        # keep both copies of each); they are the same numbers, as a resume is exact
        fresh = {k: v for k, v in scalars.items() if int(step) > self.logged_through.get(mlflow_name(k), -1)}
        self._log(fresh, step)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self._log(metrics, 0)  # always: a resumed run's summary replaces the stopped attempt's

    def _log(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if scalars:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(mlflow_name(k), float(v), now, int(step)) for k, v in scalars.items()])

    def close(self, status: str = "complete") -> None:
        self.client.set_tag(self.run_id, "lowbit.status", status)
        self.client.set_terminated(self.run_id, status=_RUN_STATUS[status])

    # ---- helpers

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another process (a sweep cell) created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _previous_run(self) -> Optional[str]:
        """The MLflow run of this run directory in this store, if it was tracked there before."""
        from lowbit.config import read_yaml_or_empty

        saved = read_yaml_or_empty(self.run_dir / RUN_FILE)
        if saved.get("tracking_uri") != self.tracking_uri or not saved.get("run_id"):
            return None
        try:
            self.client.get_run(str(saved["run_id"]))
        except Exception:  # noqa: BLE001 - deleted from the store since: start a new MLflow run
            return None
        return str(saved["run_id"])

    def _last_steps(self) -> Dict[str, int]:
        """Metric name -> the last step an earlier attempt of this run logged (one query per metric)."""
        keys = self.client.get_run(self.run_id).data.metrics
        return {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1) for key in keys}

    def _save_run_file(self, experiment_id: str) -> None:
        import yaml

        from lowbit.runs import atomic_write_text

        info = {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": self.tracking_uri}
        atomic_write_text(self.run_dir / RUN_FILE, yaml.safe_dump(info, sort_keys=False))


def check_store(settings: Any, key: str = "run.mlflow") -> None:
    """Open the tracking store of ``settings`` (an :class:`MLflowConfig`) once, before any work: a store MLflow
    refuses (the ``file:`` store of MLflow 3, sqlite without SQLAlchemy, a bad URI) is a one-line error here."""
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=settings.tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - one line naming the store and the fix
        raise ValueError(_open_error(settings.tracking_uri, error, key)) from error


def _env(name: str) -> Optional[str]:
    import os

    return os.environ.get(name) or None


def _open_error(uri: Optional[str], error: Exception, key: str) -> str:
    shown = str(uri if uri is not None else _env("MLFLOW_TRACKING_URI") or "MLflow's default store")
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first = text.split(". ")[0][:200]  # MLflow's messages run to several sentences and links
    hint = (f"set {key}.tracking_uri to a local sqlite:////ABSOLUTE/PATH/mlflow.db (no server needed) or an "
            "http(s):// tracking server")
    if shown.startswith("sqlite") and importlib.util.find_spec("sqlalchemy") is None:
        hint = "a sqlite store needs SQLAlchemy and Alembic: pip install 'lowbit[mlflow]'"
    elif shown.startswith("file:") or "://" not in shown:
        hint += " (or set MLFLOW_ALLOW_FILE_STORE=true to keep using MLflow's deprecated file store)"
    return f"mlflow tracker: cannot open the tracking store {shown!r} ({type(error).__name__}: {first}); {hint}"
