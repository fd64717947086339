"""MLflow logging shared by all stages: one run per stage execution, tagged so a configuration's runs group.

Tracking never decides whether a stage succeeds:

- `SEGBISECT_TRACKING=off` in the environment runs a stage untracked: MLflow is not imported at all;
- otherwise the store is probed first, with short timeouts; a store that cannot be used (unreachable server,
  5xx answers, a read-only or locked SQLite file) costs one warning line and the stage runs untracked;
- MLflow failing in the middle of a run (after the probe passed) is an environment fault: exit 75
  (`pipeline.errors.EXIT_ENVIRONMENT`), one line naming the store.

Stages log through the functions here (`log_metrics`, `log_artifact`, ...), which do nothing when untracked.

A stage's run holds, as params, the whole configuration it ran under (`run_params`): the params of the stage and of
every stage upstream of it in DVC's graph, named as in dvc.yaml (`prepare.label_map.255`, `classes.num_classes`),
and DVC's hash of every DVC-tracked output those stages read (`deps.data/processed`). Two runs of one stage then
differ in exactly the params and data that differ between their configurations.
"""

from __future__ import annotations

import http.client
import os
import re
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import EnvironmentFault, environment_fault
from pipeline.io import write_json
from pipeline.numerics import numeric_environment
from pipeline.params import PARAMS_FILE, as_flat_dict, config_hash

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "wise-deeplabv3plus"
# dvc.yaml keys whose entries DVC writes to .gitignore (unless cache: false, which it then simply does not add).
OUT_KINDS = ("outs", "metrics", "plots")
# Tags a caller such as segbisect passes in through the environment, so its hybrids' stage runs can be found.
ENV_TAGS = {"SEGBISECT_SESSION": "segbisect.session", "SEGBISECT_HYBRID": "segbisect.hybrid"}
# `SEGBISECT_TRACKING=off`: run the stage without MLflow (segbisect sets it for its hybrids when it does not track).
TRACKING_SWITCH = "SEGBISECT_TRACKING"
# MLflow's own settings for its HTTP client, bounded unless the user set them: 120 s timeouts and 7 retries with
# exponential backoff would stall a stage for minutes on a dead server.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
PROBE_TIMEOUT_S = 3.0
SQLITE_LOCK_TIMEOUT_S = 5.0  # what sqlite3 (and so MLflow) waits for a lock by default
# The DVC-tracked outputs a stage's lineage reads are logged as params `deps.<path>` = DVC's hash of the output.
DATA_PREFIX = "deps."
# MLflow's limits on a param: the key's length and characters, the value's length.
MAX_KEY_LENGTH = 250
MAX_VALUE_LENGTH = 6000
KEY_CHARACTERS = re.compile(r"[^/\w.\- ]")


@dataclass(frozen=True)
class StageRun:
    """The stage's MLflow run, or an untracked execution (`run_id` None): what `stage_run` yields."""

    stage: str
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None

    @property
    def tracked(self) -> bool:
        return self.run_id is not None


_current: StageRun | None = None


def tracking_enabled() -> bool:
    """False when `SEGBISECT_TRACKING=off` asks for untracked stages."""
    return os.environ.get(TRACKING_SWITCH, "").strip().lower() != "off"


def git_commit() -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git.

    The entries DVC itself adds to tracked `.gitignore` files for its outputs (`dvc repro` in a fresh clone
    writes them) are not changes to the code: exactly those lines are ignored, nothing else.
    """
    try:
        sha = _git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
        outputs = _dvc_outputs() if any(Path(path).name == ".gitignore" for path in changed) else set()
        dirty = [path for path in changed if not _only_dvc_ignores(path, outputs)]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _only_dvc_ignores(path: str, outputs: set[str]) -> bool:
    """Whether `path` is a `.gitignore` whose only change is lines DVC adds for `outputs` beside it."""
    if Path(path).name != ".gitignore":
        return False
    diff = _git("diff", "--unified=0", "HEAD", "--", path).splitlines()
    body = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    folder = Path(path).parent
    return all(line.startswith("+/") and (folder / line[2:]).as_posix() in outputs for line in body)


def _dvc_outputs() -> set[str]:
    """Paths DVC writes `.gitignore` entries for: the outputs declared in the tracked dvc.yaml and `.dvc` files
    (asked of git, so neither the data nor DVC's cache is walked).
    """
    import yaml

    found: set[str] = set()
    sources = [Path(name) for name in _git("ls-files", "--", "dvc.yaml", "*/dvc.yaml", "*.dvc").splitlines()]
    for source in sources:
        try:
            document = yaml.safe_load(source.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        declared = [stage.get(kind, []) for stage in document.get("stages", {}).values() for kind in OUT_KINDS]
        declared.append(document.get("outs", []))
        for entries in declared:
            for entry in entries:
                name = (entry.get("path") or next(iter(entry))) if isinstance(entry, dict) else str(entry)
                found.add((source.parent / name).as_posix())
    return found


@contextmanager
def stage_run(stage: str, params: Any, run_file: Path | str) -> Iterator[StageRun]:
    """Start an MLflow run for `stage`, log the configuration it runs under (`run_params`; `params` is the stage's
    own section of params.yaml, named after the stage), and record the run id in `run_file` (a DVC out).

    The run id file lets a result restored from DVC's cache still point at the run that produced it; it also
    holds the numeric environment (CPU, oneDNN ISA, versions), tagged `numerics.*` on the run as well, since
    results differ in the last bits from one CPU to another. Untracked (see the module docstring), the file is
    written all the same, with `run_id` and `experiment_id` null.
    """
    global _current
    chash = config_hash(PARAMS_FILE)
    numerics = numeric_environment()
    record = {"stage": stage, "config_hash": chash, "numerics": numerics}
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    untracked = not tracking_enabled()
    if not untracked:
        problem = probe_store(tracking_uri)
        if problem is not None:
            print(
                f"warning: MLflow store {tracking_uri} unusable ({problem}): this stage runs untracked",
                file=sys.stderr,
                flush=True,
            )
            untracked = True
    if untracked:
        write_json(run_file, {"run_id": None, "experiment_id": None, **record})
        _current = StageRun(stage)
        try:
            yield _current
        finally:
            _current = None
        return

    logged = run_params(stage, params)
    with _store_faults(tracking_uri):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        ensure_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT), tracking_uri)
        tags = {"stage": stage, "config_hash": chash, "git_commit": git_commit()}
        tags.update({f"numerics.{key}": _tag_value(value) for key, value in numerics.items()})
        tags.update({tag: os.environ[var] for var, tag in ENV_TAGS.items() if os.environ.get(var)})
        active = mlflow.start_run(run_name=f"{stage} {chash[:8]}", tags=tags)
    try:
        with _store_faults(tracking_uri):
            mlflow.log_params(logged)
        run = StageRun(stage, active.info.run_id, active.info.experiment_id, tracking_uri)
        write_json(run_file, {"run_id": run.run_id, "experiment_id": run.experiment_id, **record})
        _current = run
        yield run
    except BaseException as exc:
        _current = None
        # The stage failed already: mark the run FAILED if the store lets us, and report the stage's own error.
        with suppress(Exception):
            active.__exit__(type(exc), exc, exc.__traceback__)
        raise
    _current = None
    with _store_faults(tracking_uri):
        active.__exit__(None, None, None)


def run_params(stage: str, params: Any) -> dict[str, str]:
    """The stage run's params: its own section (`params`, a dataclass or mapping) and, from DVC, its lineage's.

    Within DVC's pipeline the lineage holds the stage and every stage upstream of it (linked through deps and
    outs, as DVC's graph links them): each one's declared params, read from the params file now, and DVC's hash of
    each DVC-tracked output they depend on (from dvc.lock, where DVC records an output as the stage that writes it
    finishes, and from `.dvc` files). Outside a DVC project only the stage's own section is logged. Keys and values
    fit MLflow's limits (MLflow itself sends them in batches of its maximum size).
    """
    flat = {f"{stage}.{key}": value for key, value in as_flat_dict(params).items()}
    lineage = dvc_lineage(os.environ.get("DVC_STAGE") or stage)
    if lineage is not None:
        flat.update(as_flat_dict(lineage.params))
        flat.update({f"{DATA_PREFIX}{path}": digest for path, digest in lineage.data.items()})
    return {_param_key(key): _param_value(value) for key, value in sorted(flat.items())}


@dataclass(frozen=True)
class Lineage:
    """A stage and those upstream of it in DVC's pipeline: their params (dotted keys as dvc.yaml declares them,
    current values) and the DVC-tracked outputs they read (path relative to the project -> DVC's hash)."""

    params: dict[str, Any]
    data: dict[str, str]


def dvc_lineage(stage: str) -> Lineage | None:
    """The lineage of `stage` (a DVC stage name, as in `DVC_STAGE`), asked of DVC in the working directory.

    None outside a DVC project, or for a stage its pipeline does not declare; a pipeline DVC cannot read costs one
    warning line (tracking never fails a stage).
    """
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            return _lineage(repo, stage)
    except NotDvcRepoError:
        return None
    except (DvcException, OSError, sqlite3.Error) as exc:
        print(f"warning: DVC pipeline unreadable ({exc}): the run logs {stage}'s own params only", file=sys.stderr)
        return None


def _lineage(repo: Any, stage: str) -> Lineage | None:
    """Walk from `stage` to the stages whose outputs its deps overlap, as DVC's graph links them (DVC's own graph
    would import networkx, a third of a second more for every stage)."""
    from dvc.dependency import ParamsDependency

    stages = repo.index.stages
    target = next((s for s in stages if s.addressing == stage), None)
    if target is None:
        return None
    producers = [(out, s) for s in stages for out in s.outs]
    params: dict[str, Any] = {}
    data: dict[str, str] = {}
    seen, todo = [target], [target]
    while todo:
        for dep in todo.pop().deps:
            if isinstance(dep, ParamsDependency):
                params.update(dep.read_params())
                continue
            for out, producer in producers:
                if not _overlap(dep.fs_path, out.fs_path):
                    continue
                if out.hash_info:
                    data[repo.fs.relpath(out.fs_path, repo.root_dir)] = str(out.hash_info.value)
                if all(producer is not s for s in seen):
                    seen.append(producer)
                    todo.append(producer)
    return Lineage(params, data)


def _overlap(a: str, b: str) -> bool:
    """Whether one of two absolute paths is the other or lies inside it."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def current() -> StageRun | None:
    """The stage run in progress in this process, tracked or not; None outside `stage_run`."""
    return _current


def log_metric(key: str, value: float, step: int | None = None) -> None:
    _log(lambda mlflow: mlflow.log_metric(key, value, step=step))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    _log(lambda mlflow: mlflow.log_metrics(metrics, step=step))


def set_tag(key: str, value: Any) -> None:
    _log(lambda mlflow: mlflow.set_tag(key, value))


def set_tags(tags: dict[str, Any]) -> None:
    _log(lambda mlflow: mlflow.set_tags(tags))


def log_dict(dictionary: dict[str, Any], artifact_file: str) -> None:
    _log(lambda mlflow: mlflow.log_dict(dictionary, artifact_file))


def log_artifact(local_path: str, artifact_path: str | None = None) -> None:
    _log(lambda mlflow: mlflow.log_artifact(local_path, artifact_path))


def log_artifacts(local_dir: str, artifact_path: str | None = None) -> None:
    _log(lambda mlflow: mlflow.log_artifacts(local_dir, artifact_path))


def log_keras_model(model: Any, name: str, signature: Callable[[Any], Any], pip_requirements: list[str]) -> None:
    """The model in MLflow's Keras flavor; `signature(model)` is only computed when the run is tracked."""

    def call(mlflow: Any) -> None:
        import mlflow.keras

        # The model's requirements are the list given, not the checkout's uv project (uv.lock beside pyproject.toml
        # would otherwise be detected, announced on the terminal and logged with the model).
        os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
        mlflow.keras.log_model(model, name=name, signature=signature(model), pip_requirements=pip_requirements)

    _log(call)


def _log(call: Callable[[Any], Any]) -> None:
    """Run `call(mlflow)` against the tracked stage run; nothing when untracked or outside a stage run."""
    run = _current
    if run is None or not run.tracked:
        return
    with _store_faults(run.tracking_uri or DEFAULT_TRACKING_URI):
        import mlflow

        call(mlflow)


@contextmanager
def _store_faults(tracking_uri: str) -> Iterator[None]:
    """MLflow calls: an environment fault under them becomes an EnvironmentFault naming the store (exit 75)."""
    try:
        yield
    except EnvironmentFault:
        raise
    except Exception as exc:
        fault = environment_fault(exc)
        if fault is None:
            raise
        where, problem = fault
        if where not in ("MLflow store", "database", "network"):  # a file of the store, say: keep its name
            problem = f"{where}: {problem}"
        raise EnvironmentFault(f"MLflow store {tracking_uri}", problem) from exc


def probe_store(tracking_uri: str) -> str | None:
    """Why the tracking store cannot be used, found within seconds; None when it looks usable.

    `http(s)://`: MLflow's HTTP waits are bounded (unless set), and `<uri>/health` must answer within
    PROBE_TIMEOUT_S without a 5xx status. `sqlite:///`: the database (or, if new, its folder) must take a write.
    Other stores are not probed (their failures during the run are environment faults).
    """
    if tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        return _probe_http(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return None if path in ("", ":memory:") else _probe_sqlite(Path(path))
    return None


def _probe_http(tracking_uri: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(tracking_uri)
    except ValueError:
        return None  # a URI this probe cannot read: MLflow's own calls decide
    netloc = parts.netloc.rpartition("@")[2]  # credentials in the URI: /health needs none
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        # A 4xx (a proxy without /health, authentication) still shows a live server: MLflow's calls decide.
        return f"HTTP {exc.code} from {url}" if exc.code >= 500 else None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError):
            return None  # the server answers; its certificate is MLflow's business (MLFLOW_TRACKING_INSECURE_TLS, ...)
        return f"no answer from {url}: {reason.strerror if isinstance(reason, OSError) and reason.strerror else reason}"
    except TimeoutError:
        return f"no answer from {url} within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"no answer from {url}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return f"no HTTP answer from {url} ({type(exc).__name__})"
    except ValueError:
        return None  # a URI this probe cannot use (a bad port, say): MLflow's own calls decide
    return None


def _probe_sqlite(path: Path) -> str | None:
    """Write to the database inside a transaction that is rolled back: a read-only file or folder, a lock held
    too long or a file that is no database all show up here, as they would in MLflow's first write."""
    if not path.exists():
        return _probe_folder(path.parent)
    try:
        with closing(sqlite3.connect(path, timeout=SQLITE_LOCK_TIMEOUT_S, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE segbisect_write_probe (x INTEGER)")
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return str(exc)
    return None


def _probe_folder(folder: Path) -> str | None:
    """Whether a new database file can be created in `folder`."""
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    try:
        fd, name = tempfile.mkstemp(prefix=".mlflow-write-probe.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"{exc.filename or folder}: {exc.strerror or exc}"
    return None


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


def _param_key(key: str) -> str:
    """A key MLflow accepts: characters it rejects become '_', and it is cut to MLflow's length."""
    return KEY_CHARACTERS.sub("_", key)[:MAX_KEY_LENGTH]


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_VALUE_LENGTH else text[: MAX_VALUE_LENGTH - 3] + "..."
