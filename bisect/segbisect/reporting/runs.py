"""MLflow record of a bisection: one parent run per session, one nested child run per hybrid, and under each
hybrid the stage runs its `dvc repro` logged (so the UI's expandable rows show a bisection whole; the runs of a
plain `dvc repro` stay top-level).

Everything goes through MlflowClient from the segbisect process. A store and experiment that do not exist yet
are created before any hybrid starts, so hybrids' stages never race this process (or each other) to create them.
When the store fails, `StageTracking` turns tracking off and these runs stop. A hybrid's run shows what its row
in the report shows (`HybridRow`): the two never tell different stories.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from segbisect.reporting.report import Culprit, HybridRow, Report
from segbisect.tracking.store import THREAD, artifact_location, route_logs, store_ready
from segbisect.tracking.switch import StageTracking


class Tracker:
    """No-op when the session does not track; never raises: a failure turns `tracking` off (one warning) and ends
    segbisect's runs. MLflow's own log lines and warnings go to `log` (see `route_logs`).

    All MLflow calls run in order on one background thread, so a bisection never waits for its bookkeeping:
    importing MLflow and opening the store (about 2 s) overlap the first hybrid, and each child run is logged
    while the next hybrid runs. Only a store or experiment that does not exist yet is created before `start`
    returns (see `store_ready`). `finish` waits until everything is written.
    """

    def __init__(self, tracking: StageTracking, experiment: str, log: Path) -> None:
        self.tracking, self.experiment, self.log = tracking, experiment, log
        self.store = tracking.uri or ""
        self.session = ""
        self.parent: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD) if tracking.uri else None

    def start(
        self,
        session: str,
        tags: dict[str, str],
        params: dict[str, Any],
        resume: str | None,
        on_open: Callable[[str | None], None],
    ) -> None:
        """Create (or reopen, on resume) the parent run; `on_open` gets its id (None without MLflow) once it exists."""
        self.session = session
        if self._worker is None:
            on_open(None)
            return
        opening = self._worker.submit(self._guarded, "the session", self._open, tags, params, resume, on_open)
        if not store_ready(self.store, self.experiment):
            opening.result()

    def hybrid(self, row: HybridRow) -> None:
        """Queue a child run with which side each stage came from, the outcome and the hybrid's metrics."""
        if self._worker is not None:
            self._worker.submit(self._guarded, row.id, self._log_hybrid, row)

    def finish(self, report: Report, status: str = "FINISHED", attachments: Sequence[Path] = ()) -> None:
        """Tag the parent run with the verdict, attach the report's files and close it; returns once every
        queued call is written.
        """
        if self._worker is None:
            return
        self._worker.submit(self._guarded, "the session", self._close, report, status, attachments)
        self._worker.shutdown(wait=True)
        route_logs(None)

    def _guarded(self, what: str, call: Callable[..., None], *args: Any) -> None:
        if not self.tracking.on:
            return
        try:
            call(*args)
        except Exception as exc:  # tracking must never sink a bisection
            self.tracking.turn_off(f"while logging {what}", str(exc) or type(exc).__name__)

    def _open(
        self, tags: dict[str, str], params: dict[str, Any], resume: str | None, on_open: Callable[[str | None], None]
    ) -> None:
        from mlflow.tracking import MlflowClient

        route_logs(self.log)
        self.client = MlflowClient(self.store)
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(self.experiment, artifact_location=artifact_location(self.store))
        )
        self.parent = self._reopen(resume) or self._create_parent(tags, params)
        on_open(self.parent)

    def _reopen(self, resume: str | None) -> str | None:
        if not resume:
            return None
        try:
            self.client.update_run(resume, status="RUNNING")
        except Exception:  # deleted or from another store: start a new parent
            return None
        return resume

    def _create_parent(self, tags: dict[str, str], params: dict[str, Any]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"segbisect {tags.get('good', '')}..{tags.get('bad', '')}",
            tags={"segbisect.session": self.session, "segbisect.role": "session", **tags},
        )
        self._log(run.info.run_id, params=params)
        return str(run.info.run_id)

    def _log_hybrid(self, row: HybridRow) -> None:
        tags = {
            "mlflow.parentRunId": self._parent(),
            "segbisect.session": self.session,
            "segbisect.role": "hybrid",
            "segbisect.hybrid": row.id,
            "outcome": row.outcome,
            "reused": str(row.reused),
            **{f"side.{group}": side for group, side in row.sides.items()},
            **{f"machine.{key}": _tag(value) for key, value in (row.machine or {}).items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=f"{row.id} {row.label}"[:250], tags=tags)
        stage_runs = self._stage_runs(row.id)
        for stage_run in stage_runs:
            self.client.set_tag(stage_run, "mlflow.parentRunId", run.info.run_id)
        metrics = {k: v for k, v in row.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics |= {"stages_executed": len(row.executed), "seconds": row.seconds}
        metrics |= {f"stage_seconds.{stage}": value for stage, value in row.stage_seconds.items()}
        params = {"from_bad": ", ".join(row.from_bad) or "(none)", "label": row.label, "note": row.note}
        held = {"stage_runs": ",".join(stage_runs)} if stage_runs else {}
        self._log(run.info.run_id, params=params, metrics=metrics, tags=held)
        self.client.set_terminated(run.info.run_id, "FINISHED" if row.outcome != "skip" else "FAILED")

    def _close(self, report: Report, status: str, attachments: Sequence[Path]) -> None:
        culprit = report.culprit
        tags = {
            "verdict": str(report.verdict),
            "culprit.stage": str(culprit.stage if culprit else None),
            "culprit.units": ", ".join(u.name for u in culprit.units) if culprit else "",
            **(provenance_tags(culprit) if culprit else {}),
        }
        parent = self._parent()
        metrics: dict[str, float] = {"hybrids": len(report.hybrids), "stage_executions": report.stage_executions}
        self._log(parent, metrics=metrics, tags={key: value[:5000] for key, value in tags.items()})
        for path in attachments:
            self.client.log_artifact(parent, str(path), "report")
        self.client.set_terminated(parent, status)

    def _parent(self) -> str:
        if self.parent is None:
            raise RuntimeError("the session's MLflow run was never opened")
        return self.parent

    def _stage_runs(self, hybrid_id: str) -> list[str]:
        """The stage runs this hybrid logged that no hybrid run holds yet: a session run again (`--fresh`) has the
        same session and hybrid ids, and its earlier stage runs stay under the hybrid runs that logged them.
        """
        query = f"tags.`segbisect.session` = '{self.session}' and tags.`segbisect.hybrid` = '{hybrid_id}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)
        return [
            r.info.run_id
            for r in runs
            if r.data.tags.get("segbisect.role") is None and "mlflow.parentRunId" not in r.data.tags
        ]

    def _log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """One write for all of them (each MLflow call is a transaction of its own on the store)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )


def provenance_tags(culprit: Culprit) -> dict[str, str]:
    """One tag per traced culprit unit, `segbisect.provenance.<unit id>`: the latest commit that brought its BAD
    value ("hash subject"), else where the value came from. MLflow takes tag names of letters, digits and `_-.:/`
    that stay themselves as a path; anything else in a unit id becomes `_`.
    """
    tags = {}
    for unit, found in culprit.origins():
        latest = found.commits[-1] if found.commits else None
        name = re.sub(r"[^\w.\-:/]", "_", f"segbisect.provenance.{unit.id}")
        if posixpath.normpath(name) != name:
            name = name.replace("/", "_")
        tags[name] = f"{latest.commit} {latest.subject}" if latest else found.note
    return tags


def _tag(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
