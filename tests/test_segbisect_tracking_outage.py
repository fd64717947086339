"""A tracking store that dies in the middle of a bisection: tracking goes off, the verdict stays the untracked one.

The toy's evaluate stage logs through `pipeline.tracking`, as the real pipeline's stages do, to a real `mlflow server`
on loopback; the server is killed from inside one hybrid's stage, after that stage's probe passed and its run began.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segbisect.tracking.store import BOUNDED_WAITS
from segbisect_toy import STAGES, bad_commit, bisect, commit, dvc, sh, unit_names
from ui_server import MlflowServer

pytestmark = pytest.mark.e2e

# evaluate.py of the toy, then its metrics logged as the pipeline's stages log theirs: a run per execution, metrics
# logged inside it, exit 75 for a store that fails mid-run. TOY_KILL_STORE=<hybrid>:<pid file> kills the server's
# process group once, inside that hybrid's stage run (the stage's probe has passed by then).
TRACKED_EVALUATE = (
    STAGES["evaluate"]
    + """
import signal
import socket
import time
import urllib.parse

from pipeline.errors import run_stage
from pipeline.tracking import log_metrics, stage_run


def store_dies():
    hybrid, _, pid_file = os.environ.get("TOY_KILL_STORE", "").partition(":")
    if hybrid != os.environ.get("SEGBISECT_HYBRID") or not os.path.exists(pid_file):
        return
    with open(pid_file) as f:
        os.killpg(int(f.read()), signal.SIGKILL)
    os.unlink(pid_file)
    address = urllib.parse.urlsplit(os.environ["MLFLOW_TRACKING_URI"])
    for _ in range(100):
        try:
            socket.create_connection((address.hostname, address.port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)


def log():
    with stage_run("evaluate", p, "eval/evaluate_run.json"):
        store_dies()
        log_metrics({"foreground_fraction": fg, "accuracy": acc})


run_stage(log)
"""
)
# BAD: training collapses (train.lr), among harmless changes to prepare, preprocess and train, so that hybrids keep
# running after the one that kills the store.
BAD = {"prepare": {"n": 42}, "preprocess": {"scale": 1.0001}, "train": {"lr": 2.0, "epochs": 7}}


@pytest.fixture(autouse=True)
def bounded_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """segbisect sets these in its own process; keep them from leaking into the next in-process test."""
    for name in [*BOUNDED_WAITS, "TOY_KILL_STORE"]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(toy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy with a tracked evaluate stage, reproduced (untracked) and committed as `good`, and BAD beside it."""
    (toy / "evaluate.py").write_text(TRACKED_EVALUATE)
    monkeypatch.setenv("SEGBISECT_TRACKING", "off")
    dvc(toy, "repro", "-q")
    monkeypatch.delenv("SEGBISECT_TRACKING")
    commit(toy, "evaluate logs to MLflow")
    sh(toy, "git", "tag", "-f", "good")
    bad_commit(toy, BAD)
    return toy


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """A real `mlflow server` on loopback, the tracking store of the bisection."""
    with MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server.log") as started:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", started.url)
        yield started


def verdict(report: dict[str, Any]) -> tuple[str, str | None, list[str]]:
    culprit = report["culprit"]
    return report["verdict"], culprit and culprit["stage"], unit_names(report) if culprit else []


def test_a_store_killed_under_a_hybrids_stage_leaves_the_untracked_verdict(
    repo: Path, server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No retries: the hybrid whose stage the store failed runs again untracked, not as a retry; every hybrid after
    it runs untracked from the start (its stages do not even probe the dead store).
    """
    args = ("good", "bad", "--retries", "0")
    untracked_copy = Path(shutil.copytree(repo, tmp_path / "untracked", symlinks=True))
    code, expected, _ = bisect(untracked_copy, *args, "--results", str(tmp_path / "untracked-results"))
    assert code == 0 and verdict(expected) == ("culprit", "train", ["train.lr"])

    assert server.proc is not None
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(str(server.proc.pid))
    monkeypatch.setenv("TOY_KILL_STORE", f"h03:{pid_file}")
    results = tmp_path / "results"
    tracked_code, report, human = bisect(repo, *args, "--results", str(results), mlflow=True)
    assert not pid_file.exists(), "the store did die during the bisection"
    assert (tracked_code, verdict(report)) == (code, verdict(expected)), report["message"]
    assert "went off mid-run" in report["tracking"] and report["tracking"].endswith("hybrids untracked from h03 on")
    assert human.count("runs untracked") == 1, human
    logs = {path.stem: path.read_text() for path in results.glob("*/logs/h*.log")}
    assert "exited with 75" in logs["h03"], "the store failed under h03's stage"
    later = [text for hybrid, text in logs.items() if hybrid > "h03"]
    assert later and not any("MLflow" in text for text in later), "a hybrid after the outage still tracked"
