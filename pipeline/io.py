"""Atomic output writing: a stage that fails leaves no half-written output behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh sibling temp folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `target`; it is renamed over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_json(target: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str, producer: str) -> Any:
    """A JSON input written by the `producer` stage; missing or malformed is a one-line PipelineError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the {producer} stage first)") from None
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


def _umask() -> int:
    """The process umask, so temp files end up with the permissions a plain open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
