"""MLflow logging shared by all stages: one run per stage execution, tagged so a configuration's runs group."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.io import write_json
from pipeline.numerics import numeric_environment
from pipeline.params import PARAMS_FILE, as_flat_dict, config_hash

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "wise-deeplabv3plus"
# Tags a caller such as segbisect passes in through the environment, so its hybrids' stage runs can be found.
ENV_TAGS = {"SEGBISECT_SESSION": "segbisect.session", "SEGBISECT_HYBRID": "segbisect.hybrid"}


def git_commit() -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@contextmanager
def stage_run(stage: str, params: Any, run_file: Path | str) -> Iterator[Any]:
    """Start an MLflow run for `stage`, log its params, and record the run id in `run_file` (a DVC out).

    The run id file lets a result restored from DVC's cache still point at the run that produced it; it also
    holds the numeric environment (CPU, oneDNN ISA, versions), tagged `numerics.*` on the run as well, since
    results differ in the last bits from one CPU to another.
    """
    import mlflow

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    mlflow.set_tracking_uri(tracking_uri)
    ensure_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT), tracking_uri)
    chash = config_hash(PARAMS_FILE)
    numerics = numeric_environment()
    tags = {"stage": stage, "config_hash": chash, "git_commit": git_commit()}
    tags.update({f"numerics.{key}": _tag_value(value) for key, value in numerics.items()})
    tags.update({tag: os.environ[var] for var, tag in ENV_TAGS.items() if os.environ.get(var)})
    with mlflow.start_run(run_name=f"{stage} {chash[:8]}", tags=tags) as run:
        mlflow.log_params({k: _param_value(v) for k, v in as_flat_dict(params).items()})
        write_json(
            run_file,
            {
                "run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "stage": stage,
                "config_hash": chash,
                "numerics": numerics,
            },
        )
        yield run


def ensure_experiment(name: str, tracking_uri: str) -> None:
    """Select the experiment, creating it with artifacts beside a SQLite store.

    MLflow's default artifact root is ./mlruns relative to the working directory, which would scatter
    artifacts into whatever worktree a stage happens to run in.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException:
            if mlflow.get_experiment_by_name(name) is None:
                raise
    mlflow.set_experiment(name)


def _tag_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
