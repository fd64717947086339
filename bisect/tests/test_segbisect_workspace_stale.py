"""A later session cleans up after a killed one: it ends the stage process groups still running in the dead
session's folder, and leaves alone what a live session (a zombie included) still owns. Real processes, real git.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from segbisect.project.workspace import OWNER_FILE, PROCESSES, remove_stale


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary folder sessions keep their worktrees in, this test's own."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root


def session_folder(temp_root: Path, name: str, repo: Path, pid: int) -> Path:
    folder = temp_root / f"segbisect-ws-{name}"
    (folder / "w1").mkdir(parents=True)
    (folder / OWNER_FILE).write_text(json.dumps({"pid": pid, "repo": str(repo)}), encoding="utf-8")
    return folder


def stage(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """A stage process group working inside `folder`'s worktree, registered as the session registers it."""
    proc = subprocess.Popen(list(args), cwd=folder / "w1", start_new_session=True)
    (folder / PROCESSES).mkdir(exist_ok=True)
    (folder / PROCESSES / str(proc.pid)).write_text(str(folder / "w1"), encoding="utf-8")
    return proc


def zombie() -> subprocess.Popen[bytes]:
    """A process that has ended and that its parent (this test) has not yet waited for."""
    proc = subprocess.Popen(["true"], start_new_session=True)
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the process never ended"
        time.sleep(0.01)
    return proc


def test_a_dead_sessions_running_stages_end_and_its_folder_goes(tmp_path: Path, temp_root: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    dead = session_folder(temp_root, "dead", repo, pid=_gone_pid())
    running, finished = stage(dead, "sleep", "60"), zombie()
    (dead / PROCESSES / str(finished.pid)).write_text(str(dead / "w1"), encoding="utf-8")
    owner = zombie()
    kept = session_folder(temp_root, "zombie-owner", repo, pid=owner.pid)
    kept_stage = stage(kept, "sleep", "60")
    try:
        removed = remove_stale(repo)
        assert removed == [f"stage process group {running.pid} of a killed session"]
        assert running.wait(timeout=10) == -9
        assert not dead.exists()
        assert kept.is_dir() and kept_stage.poll() is None, "a session whose process is a zombie is still its owner"
    finally:
        for proc in (running, kept_stage):
            proc.kill()
            proc.wait()
        finished.wait()
        owner.wait()


def _gone_pid() -> int:
    """The process id of a process that has ended and been waited for."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
