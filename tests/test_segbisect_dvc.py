"""What segbisect learns from DVC, pinned against the installed DVC: stages executed or restored, failure
reasons, and metrics files found the way `dvc metrics show` finds them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from segbisect.attempt import AttemptStatus
from segbisect.cli import app
from segbisect.runner import Processes, Task, attempt

pytestmark = pytest.mark.e2e

STAGES: dict[str, Any] = {
    "make": {"cmd": "python make.py", "deps": ["make.py"], "params": ["make"], "outs": ["data.txt"]},
    "score": {
        "cmd": "python score.py",
        "deps": ["score.py", "data.txt"],
        "outs": [{"out/metrics.json": {"cache": False}}],
    },
}
MAKE = 'import yaml\nn = yaml.safe_load(open("params.yaml"))["make"]["n"]\nopen("data.txt", "w").write(str(n))\n'
SCORE = (
    "import json, os, sys\nn = int(open('data.txt').read())\n"
    "if n < 0:\n    print('error: data.txt: negative count', file=sys.stderr)\n    sys.exit(2)\n"
    "os.makedirs('out', exist_ok=True)\njson.dump({'fg': 0 if n > 5 else 0.1, 'n': n}, open('out/metrics.json', 'w'))\n"
)


def sh(repo: Path, *args: str) -> None:
    subprocess.run(args, cwd=repo, check=True, capture_output=True)


def project(root: Path, stages: dict[str, Any], top_level_metrics: list[str] | None = None) -> Path:
    root.mkdir()
    (root / "make.py").write_text(MAKE)
    (root / "score.py").write_text(SCORE)
    (root / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 3}}))
    pipeline: dict[str, Any] = {"stages": stages}
    if top_level_metrics:
        pipeline = {"metrics": top_level_metrics, **pipeline}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "t@example.com")
    sh(root, "git", "config", "user.name", "t")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    return root


def repro(repo: Path, log: Path) -> Any:
    task = Task(env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}, metrics_files=("out/metrics.json",))
    return attempt(Processes(), repo, log, task, task.env)


def set_n(repo: Path, n: int) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"make": {"n": n}}))


def test_executed_unchanged_and_run_cache_restores_are_told_apart(tmp_path: Path) -> None:
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    first = repro(repo, log)
    assert first.status == AttemptStatus.OK and first.executed == ("make", "score") and first.restored == ()
    assert first.metrics == {"out/metrics.json": {"fg": 0.1, "n": 3}}
    again = repro(repo, log)
    assert again.executed == () and again.restored == ("make", "score"), "unchanged stages are skipped in place"
    set_n(repo, 4)
    assert repro(repo, log).executed == ("make", "score")
    set_n(repo, 3)
    back = repro(repo, log)
    assert back.restored == ("make",), "restored from the run-cache"
    assert back.executed == ("score",), "an output with cache: false cannot come from the run-cache"


def test_stages_pulled_from_a_remote_count_as_restored(tmp_path: Path) -> None:
    """`repro --pull` (the cluster executor's): an unchanged stage whose outputs only the remote holds is pulled,
    not run; where the remote lacks them, the stage runs.
    """
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    sh(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    assert repro(repo, log).executed == ("make", "score")
    sh(repo, sys.executable, "-m", "dvc", "push", "-q")
    sh(repo, "rm", "-rf", ".dvc/cache", "data.txt")
    task = Task(
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}, metrics_files=(), repro_args=("--pull",)
    )
    pulled = attempt(Processes(), repo, log, task, task.env)
    assert pulled.executed == () and pulled.restored == ("make", "score")
    sh(repo, "rm", "-rf", ".dvc/cache", "data.txt", str(tmp_path / "remote"))
    missing = attempt(Processes(), repo, log, task, task.env)
    assert missing.executed == ("make",) and missing.restored == ("score",)


def test_failure_reason_names_the_stage_and_its_own_last_words(tmp_path: Path) -> None:
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    set_n(repo, -1)
    crashed = repro(repo, log)
    assert crashed.status == AttemptStatus.CRASH and crashed.executed == ("make", "score")
    assert crashed.reason == "stage 'score' failed (exit 2): error: data.txt: negative count"


def test_a_dvc_error_outside_any_command_still_has_a_reason(tmp_path: Path) -> None:
    stages = {**STAGES, "score": {**STAGES["score"], "deps": ["score.py", "data.txt", "missing.csv"]}}
    repo, log = project(tmp_path / "p", stages), tmp_path / "log"
    crashed = repro(repo, log)
    assert crashed.status == AttemptStatus.CRASH
    assert crashed.reason.startswith("dvc failed (exit 255): failed to reproduce 'score'; ")
    assert crashed.reason.endswith("missing.csv'")


def test_top_level_metrics_are_found_without_metrics_flag(tmp_path: Path) -> None:
    """A dvclive-style project: the metrics file is declared at the top level of dvc.yaml, not on a stage."""
    stages = {**STAGES, "score": {**STAGES["score"], "outs": [{"out": {"cache": False}}]}}
    repo = project(tmp_path / "p", stages, top_level_metrics=["out/metrics.json"])
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "good")
    set_n(repo, 9)
    sh(repo, "git", "commit", "-qam", "bad")
    result = CliRunner().invoke(
        app,
        [
            "HEAD~1",
            "HEAD",
            "--fail-if",
            "fg == 0",
            "--repo",
            str(repo),
            "--json",
            "--no-mlflow",
            "--results",
            str(tmp_path / "results"),
        ],
    )
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert report["culprit"]["stage"] == "make" and [u["name"] for u in report["culprit"]["units"]] == ["make.n"]
    assert report["hybrids"][0]["metrics"] == {"fg": 0.1, "n": 3}
