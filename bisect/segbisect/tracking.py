"""MLflow record of a bisection: one parent run per session, one nested child run per hybrid, and under each
hybrid the stage runs its `dvc repro` logged (so the UI's expandable rows show a bisection whole; the runs of a
plain `dvc repro` stay top-level).

Everything goes through MlflowClient from the segbisect process. A store and experiment that do not exist yet
are created before any hybrid starts, so hybrids' stages never race this process (or each other) to create them.

A store that fails mid-bisection turns tracking off for the rest of the session (`StageTracking`): segbisect's
own runs stop, and the hybrids that start afterwards run their stages untracked, so a dead store costs runs, never
a verdict.

MLflow is optional (the `mlflow` extra) and only ever imported where a store is used, never with this module. A
session tracks only into a store the user named: segbisect writes nothing into a repository but its results
folder. MLflow's own log lines (a new store's table creation, its INFO and warnings) go to the session's
`logs/mlflow.log`, not to the terminal, where they would read as segbisect's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segbisect.report import Report

DEFAULT_EXPERIMENT = "segbisect"
PROBE_SECONDS = 3.0
# MLflow's own settings for its HTTP client, bounded so a dead server costs seconds rather than minutes of retries.
BOUNDED_WAITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
# MLflow prints a link to stdout for every run it ends on a tracking server; stdout carries `--json`'s verdict.
QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
INSTALL_HINT = "pip install 'segbisect[mlflow]'"
NAME_A_STORE = "MLFLOW_TRACKING_URI or tracking-uri in [tool.segbisect]"
# The loggers MLflow points at stderr when it is imported: its own and those of the libraries under its store.
MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "sqlalchemy.engine", "huey")
THREAD = "segbisect-mlflow"


def unusable(uri: str) -> str | None:
    """Why the store cannot take runs now (None when it can), found out in seconds before anything runs."""
    path = _sqlite_file(uri)
    if path is not None:
        return _sqlite_unwritable(path)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS):
                return None
        except urllib.error.HTTPError as exc:
            return f"the server answers HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            return f"unreachable ({getattr(exc, 'reason', exc)})"
    return None


def _sqlite_unwritable(path: Path) -> str | None:
    """Whether a write transaction can start (a read-only file, folder or mount fails here), changing nothing."""
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            return f"{folder} does not exist"
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            return f"{folder} is not writable ({exc.strerror})"
        return None
    try:
        with closing(sqlite3.connect(path, timeout=PROBE_SECONDS, isolation_level=None)) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return f"{path}: {exc}"
    return None


def tracking_uri(repo: Path, configured: str | None) -> str | None:
    """The store the user named, made absolute (hybrids run elsewhere): MLFLOW_TRACKING_URI (relative to the working
    directory, as MLflow reads it), else the project's `tracking-uri` (relative to the repository); None: none named.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return _absolute(uri, Path.cwd())
    return _absolute(configured, repo) if configured else None


def _absolute(uri: str, base: Path) -> str:
    """`uri` with a relative SQLite file or store folder taken from `base`."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:
        return str((base / uri).resolve())
    return uri


def mlflow_installed() -> bool:
    """Whether MLflow can be imported, asked without importing it (which takes about 2 s)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def may_hold_runs(uri: str) -> bool:
    """False for a SQLite store whose file does not exist: it holds no run, and asking MLflow would create it."""
    path = _sqlite_file(uri)
    return path is None or path.is_file()


def route_logs(log: Path | None) -> None:
    """Send MLflow's log lines and warnings to `log` (None: only its errors, to stderr), once MLflow is imported:
    importing it points its loggers at stderr.
    """
    handler: logging.Handler = _Errors() if log is None else logging.FileHandler(log, encoding="utf-8", delay=True)
    handler.set_name(THREAD)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        for previous in logger.handlers:
            if previous.get_name() == THREAD:  # an earlier session's
                previous.close()
        logger.handlers, logger.propagate = [handler], False
    shown = warnings.showwarning
    warnings.showwarning = _MlflowWarnings(shown.shown if isinstance(shown, _MlflowWarnings) else shown)


class _Errors(logging.Handler):
    """MLflow's errors on stderr as it is when one is written (a caller may have swapped it since)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # as logging's own handlers: a line that cannot be written never raises
            self.handleError(record)


class _MlflowWarnings:
    """`warnings.showwarning` that logs the warnings MLflow's calls raise (on the tracking thread, or in MLflow's
    own code) with MLflow's lines, and shows every other warning as before.
    """

    def __init__(self, shown: Callable[..., None]) -> None:
        self.shown = shown
        module = sys.modules.get("mlflow")
        self.package = str(Path(module.__file__).parent) if module and module.__file__ else None

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        mlflows = threading.current_thread().name.startswith(THREAD) or (
            self.package is not None and filename.startswith(self.package)
        )
        if file is None and mlflows:
            text = warnings.formatwarning(message, category, filename, lineno, line)
            logging.getLogger("mlflow").warning("%s", text.rstrip())
        else:
            self.shown(message, category, filename, lineno, file, line)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store: MLflow's default, ./mlruns, would land in whichever directory runs first."""
    path = _sqlite_file(uri)
    return (path.parent / "mlruns").as_uri() if path else None


def store_ready(uri: str, experiment: str) -> bool:
    """Whether a SQLite store already holds `experiment`: then nothing is left for hybrids' stages to race us to create.

    Read with the standard library, because importing MLflow to ask is the cost this check lets us overlap.
    """
    path = _sqlite_file(uri)
    if path is None or not path.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM experiments WHERE name = ?", (experiment,)).fetchone() is not None
    except sqlite3.Error:
        return False


# Set to "off" in a stage's environment, it runs the stage without MLflow (see pipeline.tracking.TRACKING_SWITCH).
TRACKING_SWITCH = "SEGBISECT_TRACKING"
REASON_CHARS = 300


def untracked(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for stages that run without MLflow: they do not import it, so no store can fail them."""
    off = {name: value for name, value in env.items() if name != "MLFLOW_TRACKING_URI"}
    return off | {TRACKING_SWITCH: "off"}


@dataclass(frozen=True)
class Outage:
    """The bisection's tracking failing mid-run: `during` what (segbisect's own logging, or a hybrid's stages)."""

    during: str
    reason: str


class StageTracking:
    """Whether the session tracks: read by segbisect's own `Tracker`, and by an executor as each hybrid starts.

    On (the stage environment as the session built it) until the bisection's tracking fails; off from then on, after
    one warning: segbisect's runs stop and the hybrids that start afterwards run their stages untracked, as a session
    that never tracked would. Executors call it from their own threads.
    """

    def __init__(self, uri: str | None, warn: Callable[[str], None]) -> None:
        self.uri, self.warn = uri, warn
        self.outage: Outage | None = None
        self.first_untracked: str | None = None
        self._tracked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.uri is not None and self.outage is None

    def stage_env(self, env: Mapping[str, str], hybrid: str) -> dict[str, str]:
        """The environment of `hybrid`'s stages, which start now."""
        with self._lock:
            if self.on:
                self._tracked.add(hybrid)
                return dict(env)
            if self.outage is not None and self.first_untracked is None:
                self.first_untracked = hybrid
        return untracked(env)

    def turn_off(self, during: str, reason: str) -> None:
        """Tracking failed `during` something: off for the rest of the session (one warning, whoever else finds
        the store failed too).
        """
        lines = reason.strip().splitlines()
        with self._lock:
            if not self.on:
                return
            self.outage = Outage(during, lines[0][:REASON_CHARS] if lines else "no reason given")
        self.warn(
            f"MLflow store {self.uri} failed {during} ({self.outage.reason}): the rest of this session runs "
            "untracked, the stages of every hybrid that starts from now on included"
        )

    def store_failed(self, hybrid: str) -> bool:
        """Whether `hybrid`, which the environment failed, ran its stages tracked while the store failed (it is
        unusable now, or tracking went off meanwhile): tracking is then off, and the hybrid may run again untracked.
        True at most once per hybrid.
        """
        with self._lock:
            if hybrid not in self._tracked:
                return False
            self._tracked.discard(hybrid)
        uri = self.uri
        if uri is not None and self.on:
            reason = unusable(uri)
            if reason is None:
                return False
            self.turn_off(f"under {hybrid}'s stages", reason)
        return True

    def describe(self, start: str) -> str:
        """The report's word on tracking: `start`, how the session began, and where tracking went off."""
        if self.outage is None:
            return start
        since = f"from {self.first_untracked} on" if self.first_untracked else "none started after"
        return f"{start}; went off mid-run, {self.outage.during} ({self.outage.reason}): hybrids untracked {since}"


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

    def hybrid(self, record: dict[str, Any]) -> None:
        """Queue a child run with which side each stage came from, the outcome and the hybrid's metrics."""
        if self._worker is not None:
            self._worker.submit(self._guarded, record["id"], self._log_hybrid, record)

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

    def _log_hybrid(self, record: dict[str, Any]) -> None:
        tags = {
            "mlflow.parentRunId": self._parent(),
            "segbisect.session": self.session,
            "segbisect.role": "hybrid",
            "segbisect.hybrid": record["id"],
            "outcome": record["outcome"],
            "reused": str(record["reused"]),
            **{f"side.{group}": side for group, side in record["sides"].items()},
            **{f"machine.{key}": _tag(value) for key, value in (record.get("machine") or {}).items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=f"{record['id']} {record['label']}"[:250], tags=tags)
        stage_runs = self._stage_runs(record["id"])
        for stage_run in stage_runs:
            self.client.set_tag(stage_run, "mlflow.parentRunId", run.info.run_id)
        metrics = {
            k: v for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        metrics |= {"stages_executed": len(record["executed"]), "seconds": record["seconds"]}
        metrics |= {f"stage_seconds.{stage}": value for stage, value in record.get("stage_seconds", {}).items()}
        params = {
            "from_bad": ", ".join(record["from_bad"]) or "(none)",
            "label": record["label"],
            "note": record["note"],
        }
        held = {"stage_runs": ",".join(stage_runs)} if stage_runs else {}
        self._log(run.info.run_id, params=params, metrics=metrics, tags=held)
        self.client.set_terminated(run.info.run_id, "FINISHED" if record["outcome"] != "skip" else "FAILED")

    def _close(self, report: Report, status: str, attachments: Sequence[Path]) -> None:
        culprit = report.culprit
        tags = {
            "verdict": str(report.verdict),
            "culprit.stage": str(culprit.stage if culprit else None),
            "culprit.units": ", ".join(u["name"] for u in culprit.units) if culprit else "",
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


def _tag(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
