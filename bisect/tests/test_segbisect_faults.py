"""The fault table: what segbisect does when the environment fails, one test per fault.

Only pass and fail decide anything. A hybrid the environment failed (a killed or hung stage, a full disk, a
stage's exit 75) is retried, never journaled, and if it keeps failing the bisection says it cannot decide.
Every test also checks the user's workspace is untouched. (Tracking faults, which turn tracking off and never
decide a verdict, need MLflow: tests/test_segbisect_tracking.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segbisect.tracking.store import BOUNDED_WAITS
from segbisect_toy import bad_commit, bisect, tree_state, unit_names

pytestmark = pytest.mark.e2e
SEGBISECT = str(Path(sys.executable).parent / "segbisect")
COLLAPSE = {"train": {"lr": 2.0}}
THRESHOLD_BUG = {"evaluate": {"postprocess": "threshold", "threshold": 0.995}}


@pytest.fixture(autouse=True)
def bounded_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """segbisect sets these in its own process; keep them from leaking from one in-process test to the next."""
    for name in BOUNDED_WAITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOY_FAULT", raising=False)


@pytest.fixture
def repo(toy: Path) -> Iterator[Path]:
    """The toy with two BAD branches: `bad` (training collapses) and `threshold` (evaluate's threshold bug).

    Whatever a test does to segbisect, the user's repository must come out of it untouched.
    """
    bad_commit(toy, COLLAPSE)
    bad_commit(toy, THRESHOLD_BUG, tag="threshold")
    before = tree_state(toy)
    yield toy
    assert tree_state(toy) == before, "segbisect changed the user's repository"


def bisect_outside(repo: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """`bisect` with the results folder beside the repository, so the repository itself stays untouched."""
    return bisect(repo, *args, "--results", str(repo.parent / "results"))


def journal_hybrids(results: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for path in results.glob("*/journal.jsonl") for line in path.read_text().splitlines()]
    return [r for r in lines if r["type"] == "hybrid"]


def test_a_killed_stage_is_an_error_never_evidence_and_never_journaled(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    monkeypatch.setenv("TOY_FAULT", "train:kill")
    code, report, _ = bisect(repo, "good", "bad", "--results", str(results))
    assert code == 1 and report["verdict"] == "cannot-decide"
    assert "the environment failed for h02 (BAD)" in report["message"]
    failed = next(h for h in report["hybrids"] if h["label"] == "BAD")
    assert failed["outcome"] == "error" and "killed by signal 9" in failed["note"]
    assert [h["label"] for h in journal_hybrids(results)] == ["GOOD"]

    monkeypatch.delenv("TOY_FAULT")
    code, report, _ = bisect(repo, "good", "bad", "--results", str(results))
    assert code == 0 and unit_names(report) == ["train.lr"]
    reused = {h["label"]: h["reused"] for h in report["hybrids"]}
    assert reused["GOOD"] and not reused["BAD"], "the errored hybrid ran again after the fix"


def test_a_fault_that_passes_on_retry_changes_nothing(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOY_FAULT", f"train:kill:{tmp_path / 'once'}")
    code, report, _ = bisect_outside(repo, "good", "bad")
    assert code == 0 and report["culprit"]["stage"] == "train" and unit_names(report) == ["train.lr"]
    assert (tmp_path / "once").exists(), "the fault did happen"


def test_a_stage_reporting_an_environment_fault_with_exit_75_is_an_error(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOY_FAULT", "train:full")
    code, report, _ = bisect_outside(repo, "good", "bad", "--retries", "0")
    assert code == 1 and report["verdict"] == "cannot-decide"
    assert "stage 'train' failed (exit 75): error: /dev/full: No space left on device" in report["message"]


def test_a_full_disk_in_the_worktree_is_an_error(repo: Path, tmp_path: Path) -> None:
    """A real full disk: the worktrees live on a 16 MiB tmpfs, mounted in a private mount namespace."""
    small = tmp_path / "small"
    small.mkdir()
    command = (
        f"mount -t tmpfs -o size=16m tmpfs {small} && TMPDIR={small} TOY_FAULT=train:fill exec "
        f"{SEGBISECT} good bad --repo {repo} --json --no-mlflow --retries 0 --results {tmp_path / 'results'}"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["verdict"] == "cannot-decide", done.stderr
    assert "stage 'train' failed (exit 75)" in report["message"] and "No space left on device" in report["message"]


def live_stage(name: str, repo: Path) -> list[int]:
    """Processes of `repo`'s stage still running from a segbisect worktree of it: other tests' toy stages, running
    beside this one, are not its.
    """
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if name.encode() in cmdline and "segbisect-ws-" in cwd and worktree_of(Path(cwd), repo):
            found.append(int(proc.name))
    return found


def worktree_of(folder: Path, repo: Path) -> bool:
    """Whether `folder` is inside a git worktree of `repo` (its `.git` file points into `repo`'s git folder)."""
    for parent in (folder, *folder.parents):
        marker = parent / ".git"
        if marker.is_file():
            with contextlib.suppress(OSError):
                return marker.read_text(encoding="utf-8").strip().startswith(f"gitdir: {repo / '.git'}")
            return False
    return False


def test_a_hybrid_past_its_time_limit_is_ended_and_is_an_error(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOY_FAULT", "train:hang")
    start = time.monotonic()
    code, report, _ = bisect_outside(repo, "good", "bad", "--timeout", "4", "--retries", "0")
    assert code == 1 and "hybrid past its time limit (--timeout 4 s)" in report["message"]
    assert time.monotonic() - start < 60 and not live_stage("train.py", repo)


def test_repeats_that_disagree_end_with_verdict_flaky(repo: Path, tmp_path: Path) -> None:
    """The check is re-run on every repetition even though every stage is restored from the cache."""
    counter = tmp_path / "count"
    check = (
        f'python -c "import pathlib, sys; p = pathlib.Path({str(counter)!r}); '
        f'n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); sys.exit(n % 2)"'
    )
    code, report, _ = bisect_outside(repo, "good", "bad", "--run", check, "--repeat", "3")
    assert code == 1 and report["verdict"] == "flaky"
    assert "h01 (GOOD)" in report["message"] and "repeats disagree (good, bad, good)" in report["message"]
    assert counter.read_text() == "3"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--fail-if", "   "], "--fail-if is empty"),
        (["--fail-if", "not " * 60 + "accuracy > 0"], "--fail-if: nested deeper than 50 levels"),
        (["--fail-if", "not " * 1200 + "accuracy > 0"], "--fail-if: nested deeper than 50 levels"),
        (["--run", "./no-such-check.sh"], "no-such-check.sh is not an executable file"),
        (["--run", "no-such-program --flag"], "'no-such-program' is not a command here"),
        (["--run", "test -f x &&"], "not valid shell syntax"),
    ],
)
def test_bad_input_is_a_one_line_usage_error_and_nothing_runs(
    repo: Path, tmp_path: Path, args: list[str], error: str
) -> None:
    code, report, human = bisect(repo, "good", "bad", *args, "--results", str(tmp_path / "results"))
    assert code == 2 and report["verdict"] == "usage-error" and error in report["error"]
    assert "Traceback" not in human and not (tmp_path / "results").exists()


def test_a_misspelt_key_in_a_params_file_is_named_with_the_closest_declared_one(repo: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("prepare:\n  fg_valeu: 1\n")
    code, report, _ = bisect_outside(repo, "good", str(overlay))
    assert code == 2
    expected = (
        f"params file '{overlay}': no stage in dvc.yaml reads 'prepare.fg_valeu'; did you mean 'prepare.fg_value'?"
    )
    assert report["error"] == expected


def test_a_torn_journal_line_is_skipped_with_a_warning_and_later_records_stay_readable(
    repo: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    code, first, _ = bisect(repo, "good", "threshold", "--results", str(results))
    journal = next(results.glob("*/journal.jsonl"))
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:4]) + lines[4][:25])
    code, again, human = bisect(repo, "good", "threshold", "--results", str(results))
    assert code == 0 and unit_names(again) == unit_names(first)
    assert "skipped 1 line(s) not JSON, cut short by a kill or edited" in human
    records = journal.read_text().splitlines()
    assert len(records) > 5 and sum(1 for line in records if not _parses(line)) == 1


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_after_a_kill_9_the_next_session_ends_the_dead_sessions_stage_processes(repo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TOY_FAULT": "train:hang"}
    args = [SEGBISECT, "good", "bad", "--repo", str(repo), "--no-mlflow", "--results", str(tmp_path / "r")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not live_stage("train.py", repo) and time.monotonic() < deadline:
        time.sleep(0.2)
    hung = live_stage("train.py", repo)
    assert hung, "the hung stage never started"
    proc.kill()
    proc.wait()
    assert live_stage("train.py", repo) == hung, "SIGKILL leaves the stage running"
    code, report, human = bisect(repo, "good", "bad", "--results", str(tmp_path / "r"))
    assert "cleaned up after a killed session: stage process group" in human
    assert code == 0 and unit_names(report) == ["train.lr"] and not live_stage("train.py", repo)


def test_two_sessions_on_one_repository_at_once_both_reach_their_verdicts(repo: Path, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [SEGBISECT, "good", bad, "--repo", str(repo), "--json", "--no-mlflow", "--results", str(tmp_path / bad)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for bad in ("bad", "threshold")
    ]
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [unit_names(r) for r in reports] == [["train.lr"], ["evaluate.postprocess", "evaluate.threshold"]]
