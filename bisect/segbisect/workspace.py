"""Isolated workspaces: one detached git worktree per hybrid, sharing the user's DVC cache.

Worktrees live in a temporary folder outside the user's tree, marked with the owning process id, so a later
session can remove the leftovers of one that was killed. Nothing touches the user's index, refs or stash.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from segbisect.gitutil import git

OWNER_FILE = "segbisect-owner.json"


class Workspaces:
    """Create and always remove (unless `keep`) the worktrees of one session; use as a context manager."""

    def __init__(self, repo: Path, cache_dir: Path, keep: bool = False, parent: Path | None = None) -> None:
        self.repo, self.cache_dir, self.keep = repo, cache_dir, keep
        self.root = Path(tempfile.mkdtemp(prefix="segbisect-ws-", dir=parent))
        (self.root / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "repo": str(repo)}))
        self._lock = threading.Lock()
        self._live: set[Path] = set()

    def __enter__(self) -> Workspaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, name: str, commit: str) -> Path:
        """A fresh worktree at `commit` whose DVC cache is the user's (so run-cache hits restore stages)."""
        path = self.root / name
        with self._lock:
            git(self.repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
            self._live.add(path)
        _share_cache(self.repo, path, self.cache_dir)
        return path

    def remove(self, path: Path) -> None:
        if self.keep:
            return
        with self._lock:
            git(self.repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path, ignore_errors=True)
            self._live.discard(path)

    def close(self) -> None:
        """Remove every worktree this session made, then the temporary folder (or mark them kept)."""
        if self.keep:
            (self.root / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "repo": str(self.repo), "keep": True}))
            return
        for path in list(self._live):
            self.remove(path)
        shutil.rmtree(self.root, ignore_errors=True)
        git(self.repo, "worktree", "prune", check=False)


def _share_cache(repo: Path, worktree: Path, cache_dir: Path) -> None:
    from dvc.config import Config

    local = repo / ".dvc" / "config.local"
    dvc_dir = worktree / ".dvc"
    if local.is_file():
        shutil.copyfile(local, dvc_dir / "config.local")
    with Config(dvc_dir=str(dvc_dir), validate=False).edit("local") as conf:
        conf["cache"]["dir"] = str(cache_dir)


def user_cache_dir(repo: Path) -> Path:
    """The user's DVC cache folder (honours cache.dir in their config)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return Path(dvc_repo.cache.local_cache_dir)


def remove_stale(repo: Path) -> list[str]:
    """Remove worktrees and snapshots left by killed segbisect sessions (owner process gone); returns worktrees."""
    listing = git(repo, "worktree", "list", "--porcelain", check=False).stdout.decode()
    removed = []
    for line in listing.splitlines():
        if not line.startswith("worktree "):
            continue
        path = Path(line.removeprefix("worktree "))
        owner = path.parent / OWNER_FILE
        info = json.loads(owner.read_text()) if owner.is_file() else {}
        if info and not info.get("keep") and not _alive(info.get("pid", -1)):
            git(repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path.parent, ignore_errors=True)
            removed.append(str(path))
    for root in Path(tempfile.gettempdir()).glob("segbisect-ws-*"):
        info = json.loads((root / OWNER_FILE).read_text()) if (root / OWNER_FILE).is_file() else {}
        if info.get("repo") == str(repo) and not info.get("keep") and not _alive(info.get("pid", -1)):
            shutil.rmtree(root, ignore_errors=True)
    git(repo, "worktree", "prune", check=False)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
