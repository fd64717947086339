"""The toy project as pytest fixtures, for segbisect's own tests and for the WiSe project's tests that bisect the
toy (both conftests load this module as a plugin)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from segbisect_toy import bad_commit, commit, dvc, make_toy_repo


@pytest.fixture(autouse=True, scope="session")
def venv_on_path() -> None:
    """dvc.yaml runs `python -m ...`: make that the interpreter running the tests, activated or not."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="session")
def toy_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_repo(tmp_path_factory.mktemp("template") / "toy")


@pytest.fixture
def toy(toy_template: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced toy repository (git history, dvc.lock and DVC cache included)."""
    return Path(shutil.copytree(toy_template, tmp_path / "toy", symlinks=True))


@pytest.fixture
def toy_with_remote(toy: Path, tmp_path: Path) -> Path:
    """The toy with a default DVC remote folder, committed (GOOD carries it), and BAD beside it: training collapses."""
    dvc(toy, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    commit(toy, "shared DVC remote")
    bad_commit(toy, params={"train": {"lr": 2.0}})
    return toy
