"""The MLflow store a session tracks into: the one the user named (MLFLOW_TRACKING_URI, else `tracking-uri` in
`[tool.segbisect]`), whether it takes runs now (found out in seconds, before anything runs), and MLflow's own log
lines and warnings, which go to the session's `logs/mlflow.log` rather than the terminal, where they would read as
segbisect's.

MLflow is optional (the `mlflow` extra) and only ever imported where a store is used, never with this module. A
session tracks only into a store the user named: segbisect writes nothing into a repository but its results
folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

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
