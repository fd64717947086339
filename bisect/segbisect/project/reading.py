"""Reading the user's repository: thin read-only git helpers (plus worktree commands used by workspace.py), and
YAML through libyaml where PyYAML was built with it: its parser takes about a seventh of the time of PyYAML's own
and its emitter about a fifth, and a bisection reads params, pipelines and metrics between every two hybrids and
writes each hybrid's params.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


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


@dataclass(frozen=True)
class Uncommitted:
    """Where the working tree differs from HEAD: tracked paths modified, staged or deleted (`changed`), and files
    git neither tracks nor ignores (`untracked`), relative to the repository root.
    """

    changed: tuple[str, ...]
    untracked: tuple[str, ...]


def uncommitted(repo: Path) -> Uncommitted:
    """`git status` of the repository at `repo` (its root). Without `--no-optional-locks` status would refresh the
    user's index and write it back; submodules and nested repositories are not looked into.
    """
    out = git(
        repo,
        "--no-optional-locks",
        "status",
        "--porcelain=v1",
        "-z",
        "--no-renames",
        "--untracked-files=all",
        "--ignore-submodules=all",
    ).stdout
    entries = [os.fsdecode(entry) for entry in out.split(b"\0") if entry]
    files = [(entry[:2], entry[3:]) for entry in entries if not entry.endswith("/")]
    changed = tuple(path for code, path in files if code != "??")
    untracked = tuple(path for code, path in files if code == "??")
    return Uncommitted(changed, untracked)


def head_bytes(repo: Path, path: str) -> bytes | None:
    """`path` as HEAD has it, as a checkout would write it (git's filters and line endings applied); None when
    HEAD has no such file.
    """
    out = git(repo, "cat-file", "--filters", f"HEAD:{path}", check=False)
    return out.stdout if out.returncode == 0 else None


def toplevel(path: Path) -> Path:
    """The root of the git working tree containing `path`."""
    return Path(os.fsdecode(git(path, "rev-parse", "--show-toplevel").stdout).strip())


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """Write the tracked files of `commit` into `dest` without touching the repository's index or worktree."""
    archive = git(repo, "archive", "--format=tar", commit).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def load_yaml(text: str | bytes) -> Any:
    """As `yaml.safe_load`: plain Python data, `yaml.YAMLError` for text that is not YAML."""
    return yaml.load(text, Loader=_LOADER)


def dump_yaml(data: Any) -> str:
    """As `yaml.safe_dump(data, sort_keys=False)`: keys in their order, plain Python data only."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
