"""A scratch copy of this project, committed in a fresh git + DVC repository: what the tests, the casebook and the
benchmarks run on. No stage imports it.

It copies what a user's clone has that matters to DVC and segbisect (the pipeline code, `dvc.yaml`, the params,
`pyproject.toml` with segbisect's settings, the ignore files), so it needs a source checkout of the project.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pipeline", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")

# Small enough that a full `dvc repro` takes well under a minute on 2 cores, big enough to exercise every stage.
TINY_PARAMS: dict[str, Any] = {
    "synthesize": {"n_images": 12, "image_size": 40},
    "prepare": {"split": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "preprocess": {"image_size": 32},
    "train": {"epochs": 1, "batch_size": 4},
    "evaluate": {"batch_size": 4, "n_overlays": 2},
}


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` laid over it, nested mappings merged key by key, so an overlay names only what it
    changes."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(
    dest: Path,
    params: dict[str, Any] | None = None,
    branch: str = "main",
    message: str = "scratch copy of the pipeline",
) -> Path:
    """Copy the project into `dest` with `params` laid over its params.yaml, and commit it on `branch`."""
    missing = [name for name in PROJECT_FILES if not (ROOT / name).exists()]
    if missing:
        raise FileNotFoundError(f"{ROOT}: not a source checkout of the project (missing {', '.join(missing)})")
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    merged = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    git(dest, "init", "-q", "-b", branch)
    git(dest, "config", "user.email", "scratch@example.com")
    git(dest, "config", "user.name", "scratch")
    for args in (("init", "-q"), ("config", "core.analytics", "false")):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=dest, check=True)
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", message)
    return dest
