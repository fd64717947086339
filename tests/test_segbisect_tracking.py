"""segbisect's MLflow bookkeeping runs beside the bisection: off the critical path, never able to sink it, and
never heard on the terminal; a bisection of the toy project tracked end to end, in the store the user named.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from segbisect.core import machine
from segbisect.core.units import Unit, UnitKind
from segbisect.core.verdict import VerdictKind
from segbisect.project.refs import Reference
from segbisect.reporting.report import Culprit, HybridRow, Report
from segbisect.reporting.runs import Tracker
from segbisect.tracking.store import BOUNDED_WAITS, MLFLOW_LOGGERS, QUIET, THREAD, route_logs, store_ready, unusable
from segbisect.tracking.switch import StageTracking
from segbisect_toy import bad_commit, bisect, sh, tree_state, unit_names

SEGBISECT = str(Path(sys.executable).parent / "segbisect")
# What MLflow and the libraries under its store print (log lines, warnings raised in their code): none of it may
# reach segbisect's terminal.
MLFLOW_CHATTER = ("alembic", "sqlalchemy", "/mlflow/", "database tables", " INFO ")

HYBRID = HybridRow(
    id="h01",
    label="GOOD",
    from_bad=(),
    sides={"evaluate": "good"},
    outcome="good",
    note="ok",
    metrics={"foreground_fraction": 0.2},
    executed=(),
    restored=(),
    seconds=1.0,
    stage_seconds={},
    reused=False,
    reused_from=None,
    fingerprint="f" * 64,
    attempts=1,
    figures={},
    placement=None,
    machine=None,
)
THRESHOLD = Unit(
    id="param:params.yaml:evaluate.threshold",
    kind=UnitKind.PARAM,
    name="evaluate.threshold",
    stages=("evaluate",),
    path="params.yaml",
    good=0.5,
    bad=0.99,
    summary="0.5 -> 0.99",
)
SUMMARY = Report(
    verdict=VerdictKind.CULPRIT,
    message="stage 'evaluate' is sufficient and necessary; minimal change: 1 unit(s)",
    culprit=Culprit(
        stage="evaluate",
        stages=("evaluate",),
        units=(THRESHOLD,),
        sufficient=True,
        necessary=True,
        minimal=True,
        also_sufficient=(),
        diagnostics=None,
    ),
    candidates=(),
    good=Reference("g", "git", "0" * 40),
    bad=Reference("b", "git", "1" * 40),
    units=(THRESHOLD,),
    hybrids=(HYBRID,),
    stage_executions=1,
    stage_executions_total=1,
    results_dir="results",
    key_metrics=(),
)


def open_tracker(
    uri: str, warnings: list[str], log: Path, gate: threading.Event | None = None
) -> tuple[Tracker, list[str | None]]:
    """A started tracker logging MLflow's own lines to `log`, and the parent ids its `on_open` callback got (it
    waits for `gate` first, if given).
    """
    opened: list[str | None] = []

    def on_open(parent: str | None) -> None:
        if gate is not None:
            gate.wait(timeout=10)
        opened.append(parent)

    tracker = Tracker(StageTracking(uri, warnings.append), "segbisect", log)
    tracker.start("s1", {"good": "g", "bad": "b"}, {"jobs": 1}, None, on_open)
    return tracker, opened


def test_store_ready_only_when_the_sqlite_store_holds_the_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not store_ready(uri, "segbisect")
    client = MlflowClient(uri)
    client.create_experiment("other")
    assert not store_ready(uri, "segbisect")
    client.create_experiment("segbisect")
    assert store_ready(uri, "segbisect")
    assert not store_ready("http://127.0.0.1:5000", "segbisect")
    (tmp_path / "junk.db").write_text("not a database")
    assert not store_ready(f"sqlite:///{tmp_path / 'junk.db'}", "segbisect")


def test_a_new_store_is_created_before_start_returns_an_existing_one_opens_in_the_background(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warnings: list[str] = []
    first, opened = open_tracker(uri, warnings, tmp_path / "mlflow.log")
    assert opened, "hybrids' stages must not race us to create the store and experiment"
    first.finish(SUMMARY)

    gate = threading.Event()
    second, opened = open_tracker(uri, warnings, tmp_path / "mlflow.log", gate)
    second.hybrid(HYBRID)
    assert not opened, "start returned before the parent run existed: the first hybrid overlaps it"
    gate.set()
    second.finish(SUMMARY)
    assert len(opened) == 1 and not warnings
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("segbisect").experiment_id])
    parent = next(r for r in runs if r.info.run_id == opened[0])
    child = next(r for r in runs if r.data.tags.get("segbisect.hybrid") == "h01")
    assert parent.data.tags["verdict"] == "culprit" and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics["foreground_fraction"] == 0.2


def test_a_session_run_again_takes_only_its_own_stage_runs(tmp_path: Path) -> None:
    """`--fresh` runs a session again under the same session and hybrid ids: each hybrid run holds the stage runs
    logged during its own session, and the earlier ones stay where they were.
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("segbisect")
    stage_tags = {"segbisect.session": "s1", "segbisect.hybrid": "h01", "stage": "evaluate"}
    children = []
    for _ in range(2):
        stage_run = client.create_run(experiment, tags=stage_tags).info.run_id
        warnings: list[str] = []
        tracker, opened = open_tracker(uri, warnings, tmp_path / "mlflow.log")
        tracker.hybrid(replace(HYBRID, executed=("evaluate",), stage_seconds={"evaluate": 0.5}))
        tracker.finish(SUMMARY)
        assert not warnings
        [child] = [
            r
            for r in client.search_runs([experiment], "tags.`segbisect.role` = 'hybrid'")
            if r.data.tags["mlflow.parentRunId"] == opened[0]
        ]
        assert child.data.tags["stage_runs"] == stage_run and child.data.metrics["stage_seconds.evaluate"] == 0.5
        children.append((child.info.run_id, stage_run))
    for child_id, stage_run in children:
        assert client.get_run(stage_run).data.tags["mlflow.parentRunId"] == child_id


def test_an_unusable_store_warns_once_and_the_bisection_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    warnings: list[Any] = []
    tracker, opened = open_tracker(f"sqlite:///{blocker / 'mlflow.db'}", warnings, tmp_path / "mlflow.log")
    tracker.hybrid(HYBRID)
    tracker.finish(SUMMARY)
    assert not opened and not tracker.tracking.on
    assert len(warnings) == 1 and "failed while logging the session" in warnings[0]


def test_tracking_that_fails_goes_off_once_for_every_hybrid_that_starts_afterwards() -> None:
    warnings: list[str] = []
    tracking = StageTracking("http://127.0.0.1:9", warnings.append)
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "PATH": "/bin"}
    assert tracking.stage_env(env, "h01") == env
    tracking.turn_off("under h01's stages", "unreachable (Connection refused)\nand a traceback")
    tracking.turn_off("while logging h01", "a second failure is not news")
    assert tracking.stage_env(env, "h02") == {"PATH": "/bin", "SEGBISECT_TRACKING": "off"}
    tracking.stage_env(env, "h03")
    assert len(warnings) == 1 and "under h01's stages (unreachable (Connection refused))" in warnings[0]
    assert tracking.describe("MLflow x").endswith(
        "went off mid-run, under h01's stages (unreachable (Connection refused)): hybrids untracked from h02 on"
    )
    assert tracking.store_failed("h01") and not tracking.store_failed("h01"), "h01 ran tracked: once again"
    assert not tracking.store_failed("h02"), "h02 ran untracked: the store cannot have failed it"


def test_a_store_is_probed_in_seconds_before_anything_runs(tmp_path: Path) -> None:
    assert unusable(f"sqlite:///{tmp_path / 'new.db'}") is None, "a new store in a writable folder is fine"
    assert unusable(f"sqlite:///{tmp_path / 'missing' / 'm.db'}") == f"{tmp_path / 'missing'} does not exist"
    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").search_experiments()
    assert unusable(f"sqlite:///{tmp_path / 'm.db'}") is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    reason = unusable(closed)
    assert reason is not None and reason.startswith("unreachable") and time.monotonic() - start < 5


def test_mlflows_warnings_and_lines_go_to_its_log_and_other_warnings_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    log = tmp_path / "mlflow.log"
    in_mlflow = str(Path(mlflow.__file__).parent / "store" / "db" / "utils.py")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        route_logs(log)
        warnings.warn_explicit("raised in MLflow's code", FutureWarning, in_mlflow, 1)
        call = threading.Thread(target=warnings.warn, args=("raised under a call to MLflow",), name=f"{THREAD}_0")
        call.start()
        call.join()
        warnings.warn("anyone else's", UserWarning, stacklevel=1)
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("alembic.runtime.migration").warning("a migration's warning")
        route_logs(None)
        logging.getLogger("mlflow").info("after the session: dropped")
    assert [str(w.message) for w in shown] == ["anyone else's"]
    lines = log.read_text().splitlines()
    expected = [
        f"WARNING mlflow: {in_mlflow}:1: FutureWarning: raised in MLflow's code",
        "UserWarning: raised under a call to MLflow",
        "INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "WARNING alembic.runtime.migration: a migration's warning",
    ]
    assert all(any(text in line for line in lines) for text in expected), lines
    assert "dropped" not in log.read_text()


@pytest.fixture(autouse=True)
def own_variables() -> Iterator[None]:
    """segbisect sets these in its own process; an in-process bisection must not leave them to later tests."""
    names = [*BOUNDED_WAITS, *QUIET]
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def repo(toy: Path) -> Iterator[Path]:
    """The toy with BAD (tag `bad`) collapsing training; whatever tracking does, the repository stays untouched."""
    bad_commit(toy, {"train": {"lr": 2.0}})
    before = tree_state(toy)
    yield toy
    assert tree_state(toy) == before, "segbisect changed the user's repository"


def run(
    repo: Path, results: Path, bad: str = "bad", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `segbisect` console script, as a user runs it."""
    command = [SEGBISECT, "good", bad, "--repo", str(repo), "--json", "--results", str(results)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.e2e
def test_mlflows_own_lines_never_reach_the_terminal(repo: Path, tmp_path: Path, tracking_uri: str) -> None:
    """A brand-new SQLite store: MLflow creates its tables (alembic), logs at INFO, and its calls raise deprecation
    warnings, which this run shows wherever they come from. None of it is heard; the session's logs keep it.
    """
    assert not Path(tracking_uri.removeprefix("sqlite:///")).exists()
    env = {**os.environ, "PYTHONWARNINGS": "always::DeprecationWarning"}
    done = run(repo, tmp_path / "results", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert unit_names(report) == ["train.lr"] and report["tracking"] == f"MLflow {tracking_uri}"
    heard = [line for line in f"{done.stdout}\n{done.stderr}".splitlines() if any(m in line for m in MLFLOW_CHATTER)]
    assert not heard
    [log] = (tmp_path / "results").glob("*/logs/mlflow.log")
    assert "Creating initial MLflow database tables" in log.read_text()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("segbisect").experiment_id])
    assert [r.data.tags["verdict"] for r in runs if r.data.tags.get("segbisect.role") == "session"] == ["culprit"]


@pytest.mark.e2e
def test_the_projects_tracking_uri_is_the_store_of_runs_and_mlflow_references(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tracking-uri` in [tool.segbisect], relative to the repository, wherever segbisect is run from."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with (toy / "pyproject.toml").open("a") as pyproject:
        pyproject.write('tracking-uri = "sqlite:///mlflow.db"\n')
    store = f"sqlite:///{toy / 'mlflow.db'}"
    client = MlflowClient(store)
    good = sh(toy, "git", "rev-parse", "good").strip()
    reference = client.create_run(client.create_experiment("toy"), tags={"stage": "train", "git_commit": good})
    client.log_param(reference.info.run_id, "lr", "2.0")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = run(toy, tmp_path / "results", f"mlflow:{reference.info.run_id}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["bad"]["kind"], unit_names(report), report["tracking"]) == (
        "mlflow",
        ["train.lr"],
        f"MLflow {store}",
    )
    runs = client.search_runs([client.get_experiment_by_name("segbisect").experiment_id])
    assert len([r for r in runs if r.data.tags.get("segbisect.role") == "hybrid"]) == len(report["hybrids"])
    assert not list(elsewhere.iterdir()), "nothing lands where segbisect was run from"


@pytest.fixture
def failing_server() -> Iterator[str]:
    """An HTTP server on loopback that answers every request with 500, as a broken MLflow server does."""

    class Broken(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(500)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["500", "closed"])
def test_a_broken_tracking_server_costs_seconds_and_turns_tracking_off(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_server: str, store: str
) -> None:
    uri = failing_server if store == "500" else closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    code, report, human = bisect(repo, "good", "bad", "--results", str(tmp_path / "results"), mlflow=True)
    assert code == 0 and unit_names(report) == ["train.lr"]
    assert report["tracking"].startswith(f"off: {uri} unusable") and "run untracked" in human
    assert time.monotonic() - start < 90


@pytest.mark.e2e
def test_a_read_only_sqlite_store_turns_tracking_off(repo: Path, tmp_path: Path) -> None:
    """The store's folder is a read-only bind mount (root ignores file modes), in a private mount namespace."""
    store = tmp_path / "store"
    store.mkdir()
    MlflowClient(f"sqlite:///{store / 'mlflow.db'}").search_experiments()
    command = (
        f"mount --bind {store} {store} && mount -o remount,ro,bind {store} && "
        f"MLFLOW_TRACKING_URI=sqlite:///{store / 'mlflow.db'} exec {SEGBISECT} good bad --repo {repo} --json "
        f"--results {tmp_path / 'results'}"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and unit_names(report) == ["train.lr"], done.stderr
    assert report["tracking"].startswith("off:") and "readonly" in report["tracking"].replace("-", "")


@pytest.mark.e2e
def test_mlflow_run_reference_and_tracking(toy: Path, tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("toy")
    good_sha = sh(toy, "git", "rev-parse", "good").strip()
    recorded = client.create_run(
        experiment,
        tags={
            "stage": "train",
            "git_commit": f"{good_sha}-dirty",
            "numerics.host": "gpu-node-7",
            "numerics.cpu": "Another CPU",
        },
    )
    for key, value in {"lr": "2.0", "momentum": "0.5", "epochs": "5", "max_n": "45"}.items():
        client.log_param(recorded.info.run_id, key, value)
    code, report, human = bisect(toy, "good", recorded.info.run_id, mlflow=True)
    assert code == 0 and report["bad"]["kind"] == "mlflow" and "dirty" in human
    words = " ".join(human.split())
    assert "ran on another machine (host 'gpu-node-7'" in words and "cpu 'Another CPU'" in words
    here = machine.describe()
    assert all(h["machine"] == here for h in report["hybrids"]) and here["host"] == socket.gethostname()
    assert (report["culprit"]["stage"], unit_names(report)) == ("train", ["train.lr"])
    unit = report["culprit"]["units"][0]
    assert (unit["good"], unit["bad"]) == (0.1, 2.0)
    assert isinstance(report["stage_executions"], int) and report["hybrids"][0]["outcome"] == "good"

    bisection = client.get_experiment_by_name("segbisect")
    runs = client.search_runs([bisection.experiment_id])
    parents = [r for r in runs if r.data.tags.get("segbisect.role") == "session"]
    children = [r for r in runs if r.data.tags.get("segbisect.role") == "hybrid"]
    assert len(parents) == 1 and parents[0].data.tags["verdict"] == "culprit"
    assert parents[0].data.tags["culprit.stage"] == "train"
    assert len(children) == len(report["hybrids"])
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    by_id = {h["id"]: h for h in report["hybrids"]}
    for child in children:
        hybrid = by_id[child.data.tags["segbisect.hybrid"]]
        timed = {k.removeprefix("stage_seconds."): v for k, v in child.data.metrics.items() if "stage_seconds." in k}
        assert timed == hybrid["stage_seconds"] and set(timed) == set(hybrid["executed"])
    assert {c.data.tags["side.train"] for c in children} == {"good", "bad"}
    assert {(c.data.tags["machine.host"], c.data.tags["machine.cpu"]) for c in children} == {
        (here["host"], here["cpu"])
    }
