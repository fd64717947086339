"""Thin read-only git helpers (plus worktree commands used by workspace.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git in `repo`, capturing output; raises CalledProcessError when `check`."""
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=check, input=stdin)


def rev_parse_commit(repo: Path, rev: str) -> str | None:
    """The full commit sha `rev` names, or None when git does not know it."""
    if rev.startswith("-"):
        return None
    out = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False)
    if out.returncode != 0:
        return None
    return out.stdout.decode().strip() or None


def toplevel(path: Path) -> Path:
    """The root of the git working tree containing `path`."""
    return Path(git(path, "rev-parse", "--show-toplevel").stdout.decode().strip())


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """Write the tracked files of `commit` into `dest` without touching the repository's index or worktree."""
    archive = git(repo, "archive", "--format=tar", commit).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
