"""The README, executed: its quick start and walkthrough run as written in a fresh clone, and print what it quotes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.scratch import ROOT
from readme_commands import Block, blocks, expected_output, install_steps, is_install, steps, suite_command

TAIL = 3000


def fresh_clone(dest: Path) -> Path:
    """A clone of this checkout as it is on disk (uncommitted edits included), its commit on branch `main` as in
    the README: a developer's unfinished README is tested as they will push it."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, dest / name
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.exists():
            target.unlink()
    git = ["git", "-c", "user.name=readme", "-c", "user.email=readme@localhost"]
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the checkout as it is"], cwd=dest, check=True)
    subprocess.run(["git", "checkout", "-q", "-B", "main"], cwd=dest, check=True)
    return dest


def user_env() -> dict[str, str]:
    """A user's shell with the quick start's venv active: no test's MLflow store or segbisect variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SEGBISECT_", "PYTEST_"))}
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run(block: Block, clone: Path) -> str:
    output = []
    for command in block.commands():
        own = " && ".join(step for step in steps(command) if not is_install(step))
        if not own:
            continue
        done = subprocess.run(
            ["bash", "-c", f"set -eo pipefail\n{own}"],
            cwd=clone,
            env=user_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert done.returncode == 0, f"README.md:{block.line}: `{own}` exited {done.returncode}:\n{done.stdout[-TAIL:]}"
        output.append(done.stdout)
    return "".join(output)


def test_the_readme_commands_are_marked() -> None:
    """The test below runs what is marked: a quick start or walkthrough that lost its markers would pass untested."""
    kinds = [block.kind for block in blocks()]
    assert kinds.count("run") >= 4 and kinds.count("output") >= 2 and "mlflow-filter" in kinds, kinds
    assert install_steps() == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        "pip install -r requirements/cpu.txt",
        "pip install --no-deps -e ./bisect -e .",
        ".venv/bin/pip install -r requirements/test.txt",
    ]
    assert suite_command() == ".venv/bin/python -m pytest -n 2"


@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_the_quick_start_and_walkthrough_run_as_written(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "wise")
    printed: str | None = None
    for block in blocks():
        if block.kind == "run":
            printed = run(block, clone)
        elif block.kind == "ci":
            continue  # the test command: CI runs it, and this test is one of its tests
        elif block.kind == "output":
            assert printed is not None, f"README.md:{block.line}: output block with no run block before it"
            assert expected_output(block.text).fullmatch(printed), (
                f"README.md:{block.line}: the README quotes\n{block.text}\nbut the command printed\n{printed[-TAIL:]}"
            )
        else:
            client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
            experiment = client.get_experiment_by_name(block.argument)
            assert experiment is not None, f"README.md:{block.line}: no MLflow experiment {block.argument!r}"
            found = client.search_runs([experiment.experiment_id], block.text.strip())
            assert found, f"README.md:{block.line}: `{block.text.strip()}` finds no run in {block.argument!r}"
