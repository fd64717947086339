"""MLflow record of a bisection: one parent run per session, one nested child run per hybrid.

Everything goes through MlflowClient from the main process, and the experiment and parent run exist before
any hybrid starts, so parallel hybrids never race to create them in a fresh SQLite store.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "segbisect"


def tracking_uri(repo: Path) -> str:
    """MLFLOW_TRACKING_URI made absolute (hybrids run elsewhere), else the repository's sqlite:///mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{(repo / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store: MLflow's default, ./mlruns, would land in whichever directory runs first."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


class Tracker:
    """No-op when `uri` is None (`--no-mlflow`)."""

    def __init__(self, uri: str | None, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.uri, self.experiment = uri, experiment
        self.parent: str | None = None
        self.session = ""
        if uri:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=artifact_location(uri)
            )

    def start(self, session: str, tags: dict[str, str], params: dict[str, Any], resume: str | None) -> str | None:
        """Create (or reopen, on resume) the parent run; returns its id."""
        self.session = session
        if not self.uri:
            return None
        if resume:
            try:
                self.client.update_run(resume, status="RUNNING")
                self.parent = resume
                return resume
            except Exception:  # deleted or from another store: start a new parent
                pass
        run = self.client.create_run(self.experiment_id, run_name=f"segbisect {tags.get('good', '')}..{tags.get('bad', '')}",
                                     tags={"segbisect.session": session, "segbisect.role": "session", **tags})
        self.parent = run.info.run_id
        self._log(self.parent, params=params)
        return self.parent

    def hybrid(self, record: dict[str, Any]) -> None:
        """A child run with which side each stage came from, the outcome and the hybrid's metrics."""
        if not self.uri or not self.parent:
            return
        tags = {"mlflow.parentRunId": self.parent, "segbisect.session": self.session, "segbisect.role": "hybrid",
                "segbisect.hybrid": record["id"], "outcome": record["outcome"], "reused": str(record["reused"]),
                **{f"side.{group}": side for group, side in record["sides"].items()}}
        run = self.client.create_run(self.experiment_id, run_name=f"{record['id']} {record['label']}"[:250], tags=tags)
        stage_runs = self._stage_runs(record["id"])
        if stage_runs:
            self.client.set_tag(run.info.run_id, "stage_runs", ",".join(stage_runs))
        metrics = {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics |= {"stages_executed": len(record["executed"]), "seconds": record["seconds"]}
        params = {"from_bad": ", ".join(record["from_bad"]) or "(none)", "label": record["label"], "note": record["note"]}
        self._log(run.info.run_id, params=params, metrics=metrics)
        self.client.set_terminated(run.info.run_id, "FINISHED" if record["outcome"] != "skip" else "FAILED")

    def finish(self, summary: dict[str, Any], status: str = "FINISHED") -> None:
        if not self.uri or not self.parent:
            return
        culprit = summary.get("culprit") or {}
        tags = {"verdict": summary["verdict"], "culprit.stage": str(culprit.get("stage")),
                "culprit.units": ", ".join(u["name"] for u in culprit.get("units", []))}
        for key, value in tags.items():
            self.client.set_tag(self.parent, key, value[:5000])
        self._log(self.parent, metrics={"hybrids": len(summary["hybrids"]), "stage_executions": summary["stage_executions"]})
        self.client.set_terminated(self.parent, status)

    def _stage_runs(self, hybrid_id: str) -> list[str]:
        query = f"tags.`segbisect.session` = '{self.session}' and tags.`segbisect.hybrid` = '{hybrid_id}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=100)
        return [r.info.run_id for r in runs if r.data.tags.get("segbisect.role") is None]

    def _log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
        )
