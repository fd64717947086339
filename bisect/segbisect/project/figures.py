"""The images a hybrid's pipeline declares as DVC plots, kept out of its worktree for the report.

segbisect knows nothing of what the images show: it keeps every image file under the paths `dvc.yaml` declares
as plots, and the report sets the same paths side by side for GOOD, BAD and the culprit.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"})
# A pipeline may declare a folder of thousands of images as a plot; a report shows a few.
MAX_KEPT = 24
# Images are kept per configuration (a fingerprint prefix), so a later session reusing a hybrid finds them.
KEY_LENGTH = 16


def folder(root: Path, fingerprint: str) -> Path:
    """Where the images of the configuration with this fingerprint are kept under the results' `root`."""
    return root / fingerprint[:KEY_LENGTH]


def keep(workspace: Path, declared: Sequence[str], dest: Path) -> dict[str, str]:
    """Copy the declared image files (by path inside the workspace, first MAX_KEPT by name) into `dest`.

    Returns each kept image's path in the pipeline mapped to where it is kept now.
    """
    found = sorted({image for path in declared for image in _images(workspace, workspace / path)})[:MAX_KEPT]
    if dest.exists():
        shutil.rmtree(dest)
    kept: dict[str, str] = {}
    for name in found:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workspace / name, target)
        kept[name] = str(target)
    return kept


def _images(root: Path, path: Path) -> Iterable[str]:
    """Image files at or under `path`, never outside `root` (a declared `../` path or a link out keeps nothing)."""
    candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
    for candidate in candidates:
        inside = candidate.resolve().is_relative_to(root.resolve())
        if inside and candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            yield candidate.relative_to(root).as_posix()
