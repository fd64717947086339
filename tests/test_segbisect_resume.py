"""A bisection interrupted and run again keeps its work: the train stage's epoch backup lives in the session's state
folder, outside the hybrid's worktree, and the reports count the stage executions of the earlier runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.resume import BACKUP_ROOT, STATE_BACKUPS, STATE_VARIABLE, claimed
from pipeline.scratch import git
from segbisect.core.attempt import AttemptPolicy
from segbisect.executors.ray_worker import WorkerJob, node_states, stage_env
from segbisect.project.runner import Task
from support import ThresholdBisection, write_params

SEGBISECT = str(Path(sys.executable).parent / "segbisect")
EPOCHS = 4
HOLD = """
import sys
from pathlib import Path
from pipeline.resume import claimed

with claimed(sys.argv[1]) as backup:
    print(backup.folder.resolve(), flush=True)
    sys.stdin.readline()
"""


def test_one_training_holds_a_key_in_the_state_folder_and_a_twin_keeps_its_backup_in_its_worktree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hybrids training the same inputs at once must not write one backup: the second keeps its own."""
    state, worktree = tmp_path / "state", tmp_path / "worktree"
    worktree.mkdir()
    monkeypatch.setenv(STATE_VARIABLE, str(state))
    monkeypatch.chdir(worktree)
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, "k1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as first:
        assert first.stdout is not None and first.stdin is not None
        held = Path(first.stdout.readline().strip())
        assert held == state / STATE_BACKUPS / "k1"
        held.mkdir()
        with claimed("k1") as twin, claimed("k2") as other:
            assert twin.folder.resolve() == worktree / BACKUP_ROOT / "k1"
            assert other.folder == state / STATE_BACKUPS / "k2"
        assert held.is_dir(), "another key's training never removes a backup in the state folder"
        first.stdin.write("\n")
        first.stdin.flush()
    assert first.returncode == 0
    with claimed("k1") as again:
        assert again.folder == state / STATE_BACKUPS / "k1", "a training that ended (or was killed) lets go"


def test_without_a_state_folder_the_backup_is_in_the_workspace_and_stale_ones_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STATE_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    (BACKUP_ROOT / "stale").mkdir(parents=True)
    with claimed("k1") as backup:
        assert backup.folder == BACKUP_ROOT / "k1"
    assert not (BACKUP_ROOT / "stale").exists()


def test_a_cluster_worker_keeps_the_sessions_state_on_its_own_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's folder is on another machine: the stages get one of the session's name on the worker's node."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    driver = {STATE_VARIABLE: "/driver/results/s/state", "SEGBISECT_SESSION": "s"}
    job = WorkerJob(
        hybrid_id="h03",
        remote={},
        env=driver,
        task=Task(env=driver, metrics_files=(), state="s-0123abcd"),
        policy=AttemptPolicy(),
    )
    env = stage_env(job)
    assert env[STATE_VARIABLE] == str(node_states() / "s-0123abcd") == str(tmp_path / "segbisect-state/s-0123abcd")
    assert Path(env[STATE_VARIABLE]).is_dir() and env["SEGBISECT_HYBRID"] == "h03"


@pytest.mark.e2e
def test_ctrl_c_during_train_then_the_same_command_resumes_after_the_last_finished_epoch(
    threshold_bisection: ThresholdBisection, tmp_path: Path
) -> None:
    """The tiny pipeline, GOOD reproduced; GOOD' changes evaluate (so the first run executes a stage that the second
    reuses), BAD trains EPOCHS epochs instead of one. Ctrl-C while BAD trains, once an epoch is backed up; the same
    command then trains only the remaining epochs, and its reports count GOOD's evaluate from the first run.
    """
    repo = Path(shutil.copytree(threshold_bisection.repo, tmp_path / "repo", symlinks=True))
    write_params(repo, {"evaluate": {"n_overlays": 3}})  # a value no hybrid of the fixture's bisection ran
    git(repo, "commit", "-q", "-am", "GOOD': three overlays")
    git(repo, "tag", "good-prime")
    git(repo, "checkout", "-q", "-b", "longer")
    write_params(repo, {"train": {"epochs": EPOCHS}})
    git(repo, "commit", "-q", "-am", f"BAD: {EPOCHS} epochs")
    git(repo, "checkout", "-q", "main")
    results, summary = tmp_path / "results", tmp_path / "summary.md"
    command = [SEGBISECT, "good-prime", "longer", "--repo", str(repo), "--results", str(results), "--jobs", "1"]
    command += ["--fail-if", "epochs_run > 1", "--no-mlflow", "--json"]

    with open(tmp_path / "first.out", "wb") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        backup = wait_for_backup(results, first)
        os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C on a terminal: the whole foreground process group
        assert first.wait(timeout=120) == 130, (tmp_path / "first.out").read_text()[-3000:]
    done = json.loads((backup / "latest.json").read_text())["progress"]["epochs_done"]
    assert 1 <= done < EPOCHS, "the backup survived the interrupt, its worktree did not"
    assert git(repo, "worktree", "list").count("\n") == 1, "the interrupted session removed its worktrees"
    logs = {log.name: log.stat().st_size for log in (backup.parents[2] / "logs").glob("*.log")}

    second = subprocess.run([*command, "--summary-md", str(summary)], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert [u["name"] for u in report["culprit"]["units"]] == ["train.epochs"]
    bad = next(h for h in report["hybrids"] if h["label"] == "BAD")
    assert not bad["reused"] and "train" in bad["executed"]
    log = Path(report["results_dir"]) / "logs" / f"{bad['id']}.log"
    resumed = log.read_bytes()[logs.get(log.name, 0) :].decode(errors="replace")
    assert f"train: resuming after epoch {done} from {backup}" in resumed
    assert [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", resumed, re.M)] == list(range(done + 1, EPOCHS + 1))

    earlier = report["stage_executions_earlier"]
    assert earlier == 1 and next(h for h in report["hybrids"] if h["label"] == "GOOD")["executed"] == ["evaluate"]
    total = earlier + sum(len(h["executed"]) for h in report["hybrids"] if not h["reused"])
    assert report["stage_executions"] == total
    folder = Path(report["results_dir"])
    said = f"{total} (1 in earlier runs of this session)"
    assert f"stage executions: {said}" in (folder / "report.md").read_text()
    assert f"stage executions: {said}" in (folder / "report.html").read_text()
    assert f"{total} stage executions (1 in earlier runs of this session)" in summary.read_text()
    assert not (folder / "state").exists(), "a session with its answer keeps nothing to resume"


def wait_for_backup(results: Path, proc: subprocess.Popen[bytes], timeout: float = 480) -> Path:
    """The backup folder of the training that runs, once it holds a finished epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for latest in results.glob(f"*/state/{STATE_BACKUPS}/*/latest.json"):
            if json.loads(latest.read_text())["progress"]["epochs_done"] >= 1:
                return latest.parent
        assert proc.poll() is None, "segbisect ended before the training backed up an epoch"
        time.sleep(0.2)
    raise AssertionError("no epoch backed up in time")
