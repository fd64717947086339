"""segbisect's MLflow bookkeeping runs beside the bisection: off the critical path, and never able to sink it."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from segbisect.report import Culprit, Report
from segbisect.tracking import StageTracking, Tracker, store_ready, unusable
from segbisect.verdict import VerdictKind

SUMMARY = Report(
    verdict=VerdictKind.CULPRIT,
    message="stage 'evaluate' is sufficient and necessary; minimal change: 1 unit(s)",
    culprit=Culprit(
        stage="evaluate",
        stages=("evaluate",),
        units=({"name": "evaluate.threshold"},),
        sufficient=True,
        necessary=True,
        minimal=True,
        also_sufficient=(),
        diagnostics=None,
    ),
    candidates=(),
    good={"text": "g"},
    bad={"text": "b"},
    units=(),
    hybrids=({},),
    stage_executions=1,
    stage_executions_total=1,
    results_dir="results",
    key_metrics=(),
)
HYBRID = {
    "id": "h01",
    "label": "GOOD",
    "outcome": "good",
    "reused": False,
    "sides": {"evaluate": "good"},
    "metrics": {"foreground_fraction": 0.2},
    "executed": [],
    "seconds": 1.0,
    "from_bad": [],
    "note": "ok",
}


def open_tracker(
    uri: str, warnings: list[str], gate: threading.Event | None = None
) -> tuple[Tracker, list[str | None]]:
    """A started tracker, and the parent ids its `on_open` callback got (it waits for `gate` first, if given)."""
    opened: list[str | None] = []

    def on_open(parent: str | None) -> None:
        if gate is not None:
            gate.wait(timeout=10)
        opened.append(parent)

    tracker = Tracker(StageTracking(uri, warnings.append), "segbisect")
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
    first, opened = open_tracker(uri, warnings)
    assert opened, "hybrids' stages must not race us to create the store and experiment"
    first.finish(SUMMARY)

    gate = threading.Event()
    second, opened = open_tracker(uri, warnings, gate)
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
        tracker, opened = open_tracker(uri, warnings)
        tracker.hybrid({**HYBRID, "executed": ["evaluate"], "stage_seconds": {"evaluate": 0.5}})
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
    tracker, opened = open_tracker(f"sqlite:///{blocker / 'mlflow.db'}", warnings)
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
