"""A hybrid's job that raises on this machine is an environment error like any other: never evidence, its reason
names the exception's type and message, and the hybrid's log has the traceback (the Ray executor's counterpart is
in tests/ray_cases.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segbisect_toy import bad_commit, bisect

pytestmark = pytest.mark.e2e


def test_a_job_that_raises_is_an_error_named_by_its_exception_with_the_traceback_in_the_log(toy: Path) -> None:
    """Git cannot make the hybrid's worktree: a file stands where it keeps the repository's worktrees."""
    bad_commit(toy, params={"train": {"lr": 2.0}})
    (toy / ".git" / "worktrees").write_text("not a folder\n")
    code, report, _ = bisect(toy, "good", "bad", "--retries", "0")
    assert code == 1 and report["verdict"] == "cannot-decide"
    good = next(h for h in report["hybrids"] if h["label"] == "GOOD")
    expected = "segbisect failed running the hybrid: subprocess.CalledProcessError: Command '['git', '-C', "
    assert good["outcome"] == "error" and good["note"].startswith(expected), good["note"]
    assert "'worktree', 'add'" in good["note"] and good["note"].endswith(f"(traceback in logs/{good['id']}.log)")
    log = (Path(report["results_dir"]) / "logs" / f"{good['id']}.log").read_text()
    assert "Traceback (most recent call last):" in log and "in acquire" in log
    assert "subprocess.CalledProcessError: Command '['git', '-C'" in log
