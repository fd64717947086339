"""Atomic output writing: a stage that fails leaves no half-written output behind.

Outputs are written into a temp sibling of the target, `.<name>.<pid>.<random>.tmp`, renamed over the target
on success and removed on failure. A stage killed outright (SIGKILL, out-of-memory killer) cannot remove its
temp, so the next write of the same target removes those whose process is gone; `.gitignore` hides them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, PipelineError, environment_fault

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh sibling temp folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_output(exc, target)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `target`; it is renamed over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_the_output(exc, target)
        raise
    os.replace(tmp, target)


def file_sha256(path: Path | str) -> str:
    """A file's SHA-256, read in chunks so a large file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(target: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str, producer: str) -> Any:
    """A JSON input written by the `producer` stage; missing or malformed is a one-line PipelineError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the {producer} stage first)") from None
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


def remove_stale_temps(target: Path | str) -> list[Path]:
    """Remove the temp siblings of `target` left by processes that no longer run; returns what was removed.

    Only `.<target name>.<pid>.<random>.tmp` entries are considered, and only those whose pid is not alive on this
    machine: a write of the same target in progress elsewhere is left alone.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}")
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _name_the_output(exc: BaseException, target: Path) -> None:
    """A full disk and the like often fail a write with no file name (a flush, a library's own file handle): say
    which output was being written, so the stage's one error line names a file."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in ENVIRONMENT_ERRNOS:
        fault = environment_fault(exc)
        if fault is not None:
            raise EnvironmentFault(f"while writing {target}", fault[1]) from exc


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one we may not signal counts as alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number too large to be a pid
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    """The process umask, so temp files end up with the permissions a plain open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
