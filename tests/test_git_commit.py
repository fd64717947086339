"""The commit a stage run records: DVC's own `.gitignore` entries are not a dirty worktree, a code change is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tracking import git_commit

pytestmark = pytest.mark.e2e


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(list(args), cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed project whose outputs DVC has not produced yet, as a fresh clone is; then `dvc repro`."""
    origin = tmp_path / "origin"
    (origin / "data").mkdir(parents=True)
    (origin / "make.py").write_text(
        "import pathlib\npathlib.Path('models').mkdir(exist_ok=True)\n"
        "pathlib.Path('models/m.txt').write_text('m')\n"
        "pathlib.Path('data/raw.txt').write_text('r')\n"
    )
    (origin / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: python make.py\n    deps: [make.py]\n    outs: [models, data/raw.txt]\n"
    )
    (origin / ".gitignore").write_text("__pycache__/\n")
    (origin / "data" / ".gitignore").write_text("# data\n")
    sh(origin, "git", "init", "-q")
    sh(origin, "git", "config", "user.email", "t@example.com")
    sh(origin, "git", "config", "user.name", "t")
    sh(origin, sys.executable, "-m", "dvc", "init", "-q")
    sh(origin, "git", "add", "-A")
    sh(origin, "git", "commit", "-qm", "project")
    repo = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(repo))
    sh(repo, sys.executable, "-m", "dvc", "repro", "-q")
    monkeypatch.chdir(repo)
    return repo


def test_dvc_gitignore_entries_after_a_first_repro_are_not_dirty(clone: Path) -> None:
    assert sh(clone, "git", "status", "--porcelain", "--untracked-files=no").split() == [
        "M",
        ".gitignore",
        "M",
        "data/.gitignore",
    ], "DVC wrote its entries into both tracked .gitignore files"
    assert git_commit() == sh(clone, "git", "rev-parse", "HEAD").strip()


def test_a_real_change_is_dirty_even_beside_dvc_entries(clone: Path) -> None:
    with open(clone / "make.py", "a", encoding="utf-8") as handle:
        handle.write("# changed\n")
    assert git_commit().endswith("-dirty")


def test_a_line_of_the_users_own_in_a_gitignore_is_dirty(clone: Path) -> None:
    with open(clone / ".gitignore", "a", encoding="utf-8") as handle:
        handle.write("/notes\n")
    assert git_commit().endswith("-dirty")
