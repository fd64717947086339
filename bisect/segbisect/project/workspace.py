"""Isolated workspaces: detached git worktrees sharing the user's DVC cache, reused from hybrid to hybrid.

Worktrees live in a temporary folder outside the user's tree, marked with the owning process id, so a later
session can remove the leftovers of one that was killed. Nothing touches the user's index, refs or stash.

A worktree is handed to the next hybrid reset to the commit's tracked files, with every other file removed
except the stages' DVC outputs, the lock files that describe them and DVC's own state. DVC checks those outputs
and the hybrid's inputs against the lock by hash, so a stage whose inputs did not change is skipped in place
("didn't change") instead of being restored from the run-cache into a fresh worktree: about 0.1 s a stage on
tiny data, a copy of every upstream output on real data, plus `git worktree add`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil

from segbisect.project.gateway import DIRECT, Dvc
from segbisect.project.reading import git

OWNER_FILE = "segbisect-owner.json"
# The session's running process groups, one file each, named by group id (see runner.Processes).
PROCESSES = "processes"


class Workspaces:
    """The worktrees of one session, always removed at the end (unless `keep`); use as a context manager.

    With `keep`, every hybrid gets a worktree of its own, left for inspection. `dvc`: the session's DVC gateway.
    """

    def __init__(self, repo: Path, keep: bool = False, parent: Path | None = None, dvc: Dvc = DIRECT) -> None:
        self.repo, self.keep = repo, keep
        self.root = Path(tempfile.mkdtemp(prefix="segbisect-ws-", dir=parent))
        (self.root / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "repo": str(repo)}), encoding="utf-8")
        # The user's DVC cache folder (honours cache.dir in their config), asked now, needed by the first worktree.
        self._cache_answer = dvc.cache_dir(repo)
        self._cache: Path | None = None
        self._lock = threading.Lock()
        self._live: set[Path] = set()
        self._idle: list[Path] = []
        self._made = 0

    def __enter__(self) -> Workspaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(self, name: str, commit: str, outs: list[str], locks: list[str]) -> tuple[Path, bool]:
        """A worktree at `commit` sharing the user's DVC cache, holding only the commit's files, `outs` and `locks`;
        and whether it is new (no DVC outputs in it yet).
        """
        with self._lock:
            path = self._idle.pop() if self._idle else None
        if path is None:
            return self._create(name, commit), True
        try:
            _reset(path, commit, outs, locks)
        except BaseException:
            self._remove(path)
            raise
        return path, False

    def release(self, path: Path) -> None:
        """Give the worktree back for the next hybrid (kept as it is with `keep`)."""
        if not self.keep:
            with self._lock:
                self._idle.append(path)

    def close(self) -> None:
        """Remove every worktree this session made, then the temporary folder (or mark them kept)."""
        if self.keep:
            owner = {"pid": os.getpid(), "repo": str(self.repo), "keep": True}
            (self.root / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
            return
        for path in list(self._live):
            self._remove(path)
        shutil.rmtree(self.root, ignore_errors=True)
        git(self.repo, "worktree", "prune", check=False)

    def _create(self, name: str, commit: str) -> Path:
        with self._lock:
            self._made += 1
            path = self.root / (name if self.keep else f"w{self._made}")
            self._live.add(path)
            git(self.repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
            self._cache = self._cache or self._cache_answer()
        _share_cache(self.repo, path, self._cache)
        return path

    def _remove(self, path: Path) -> None:
        with self._lock:
            git(self.repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path, ignore_errors=True)
            self._live.discard(path)
            if path in self._idle:
                self._idle.remove(path)


def _reset(worktree: Path, commit: str, outs: list[str], locks: list[str]) -> None:
    """Back to `commit`'s tracked files; other files go, except `outs`, DVC's config and state, and the `locks`.

    The previous hybrid's lock files are put back even where the commit tracks its own: they describe the
    outputs left in place, so DVC can skip the stages whose inputs still match them.
    """
    kept = {lock: (worktree / lock).read_bytes() for lock in locks if (worktree / lock).is_file()}
    git(worktree, "checkout", "--detach", "--force", "--quiet", commit)
    keep = [f"--exclude=/{path.strip('/')}" for path in [*outs, *locks, ".dvc/config.local", ".dvc/tmp"]]
    git(worktree, "clean", "-d", "-x", "--force", "--quiet", *keep)
    for lock, content in kept.items():
        (worktree / lock).write_bytes(content)


def _share_cache(repo: Path, worktree: Path, cache_dir: Path) -> None:
    """The user's local DVC config (remotes, credentials) with `cache.dir` set to their cache. Edited with
    configobj, DVC's own config reader, which keeps every other setting as written; as UTF-8, which DVC reads,
    where configobj would write ASCII and fail on a path that is not.
    """
    from configobj import ConfigObj

    local = repo / ".dvc" / "config.local"
    target = worktree / ".dvc" / "config.local"
    if local.is_file():
        shutil.copyfile(local, target)
    conf = ConfigObj(str(target), encoding="utf-8")
    conf.setdefault("cache", {})["dir"] = str(cache_dir)
    conf.write()


def remove_stale(repo: Path) -> list[str]:
    """Clean up after killed segbisect sessions (owner process gone): end their stage processes, remove their
    worktrees and temporary folders. Returns what was removed, one line each.
    """
    removed = []
    for root in Path(tempfile.gettempdir()).glob("segbisect-ws-*"):
        info = _owner(root / OWNER_FILE)
        if info.get("repo") == str(repo) and not info.get("keep") and not _alive(info.get("pid", -1)):
            removed += [f"stage process group {pgid} of a killed session" for pgid in _end_groups(root)]
    listing = os.fsdecode(git(repo, "worktree", "list", "--porcelain", check=False).stdout)
    for line in listing.splitlines():
        if not line.startswith("worktree "):
            continue
        path = Path(line.removeprefix("worktree "))
        owner = path.parent / OWNER_FILE
        info = _owner(owner)
        if info and not info.get("keep") and not _alive(info.get("pid", -1)):
            git(repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(path.parent, ignore_errors=True)
            removed.append(f"workspace {path} of a killed session")
    for root in Path(tempfile.gettempdir()).glob("segbisect-ws-*"):
        info = _owner(root / OWNER_FILE)
        if info.get("repo") == str(repo) and not info.get("keep") and not _alive(info.get("pid", -1)):
            shutil.rmtree(root, ignore_errors=True)
    git(repo, "worktree", "prune", check=False)
    return removed


def _end_groups(root: Path) -> list[int]:
    """Kill the process groups a dead session registered under `root` that still run inside its folder.

    The working-directory check guards against a recycled process id.
    """
    ended = []
    for marker in sorted((root / PROCESSES).glob("*")):
        pgid = int(marker.name)
        if _runs_inside(pgid, root):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
                ended.append(pgid)
        marker.unlink(missing_ok=True)
    return ended


def _runs_inside(pgid: int, root: Path) -> bool:
    """Whether a live process of group `pgid` works inside `root` (its leader may be gone while its children run
    on). A zombie has no working folder, so a group of zombies is left alone, as is a process of another user.
    """
    # Fresh `Process` objects: `process_iter` hands out the ones it cached on earlier calls, and a process that
    # reused a cached one's id reads as gone.
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and Path(psutil.Process(pid).cwd()).is_relative_to(root):
                return True
        except (ProcessLookupError, psutil.Error):  # gone meanwhile, a zombie, or not ours to look at
            continue
    return False


def _alive(pid: int) -> bool:
    """Whether the session with this process id may still run: a zombie still counts (its parent has yet to see it
    end), and so does an owner file naming no process (-1), which is left alone.
    """
    return pid < 0 or bool(psutil.pid_exists(pid))


def _owner(marker: Path) -> dict[str, Any]:
    """What a session's owner file says (nothing where there is none)."""
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
