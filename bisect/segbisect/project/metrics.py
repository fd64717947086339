"""Metrics files found the way `dvc metrics show` finds them, read, and the one a predicate judges chosen.

DVC declares metrics on stages (`metrics:` of an output) and at the top level of `dvc.yaml` (dvclive projects);
the gateway asks DVC itself (`gateway.read_pipeline`). With several files, the predicate's keys pick the one to judge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from segbisect.core.errors import UsageError
from segbisect.core.predicate import Predicate
from segbisect.project import reading


def read(path: Path) -> tuple[dict[str, Any], str]:
    """The file's metrics as flat dotted keys, and why there are none when the file is missing or unreadable."""
    if not path.is_file():
        return {}, f"metrics file {path.name} is missing"
    try:
        data = reading.load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return {}, f"metrics file {path.name} is unreadable: {str(exc).splitlines()[0]}"
    flat = flatten(data)
    return flat, "" if flat else f"metrics file {path.name} is empty"


def read_all(root: Path, files: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The readable `files` under `root` by path, and for the others why not."""
    found: dict[str, dict[str, Any]] = {}
    unread: dict[str, str] = {}
    for file in files:
        flat, why = read(root / file)
        if flat:
            found[file] = flat
        else:
            unread[file] = why
    return found, unread


def read_json(path: Path) -> Any:
    """A JSON evidence file (the project's diagnostics); None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def choose(files: Sequence[str], predicate: Predicate | None, found: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The file to judge: the only one, the last one for a `--run` check (evidence only), else the single file
    whose keys the predicate names. None while `found` (the files read so far) cannot tell yet. A key that the
    files read lack is a usage error offering the closest key.
    """
    if predicate is None:
        return files[-1] if files else None
    if not files:
        raise UsageError("no metrics file: dvc.yaml declares none (stage or top-level metrics); pass --metrics PATH")
    if len(files) == 1:
        if found.get(files[0]):
            predicate.check({files[0]: list(found[files[0]])})
        return files[0]
    if any(file not in found for file in files):
        return None
    predicate.check({file: list(found[file]) for file in files})
    fitting = [file for file in files if predicate.fits(list(found[file]))]
    if len(fitting) == 1:
        return fitting[0]
    keys = ", ".join(predicate.keys)
    if fitting:
        raise UsageError(
            f"--fail-if reads {keys}, which several metrics files hold ({', '.join(fitting)}); pass --metrics PATH"
        )
    raise UsageError(
        f"--fail-if reads {keys}, which no single metrics file holds ({', '.join(files)}): a check reads one file"
    )


def flatten(metrics: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted keys (`{"a": {"b": 1}}` -> `{"a.b": 1}`)."""
    if not isinstance(metrics, dict):
        return {prefix.rstrip("."): metrics} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat
