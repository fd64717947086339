"""Materialize a hybrid configuration into a checkout of GOOD's commit: GOOD's params and working-tree files plus
the chosen BAD units.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from segbisect.core.units import Unit, UnitKind
from segbisect.project import reading
from segbisect.project.snapshot import ABSENT, Snapshot, write_file


def materialize(workspace: Path, good: Snapshot, bad: Snapshot, units: list[Unit]) -> None:
    """Make `workspace` (a checkout of GOOD's commit) hold GOOD's configuration with `units` taken from BAD.

    GOOD's own files come first where GOOD is the working tree rather than its commit.
    """
    for path in good.ref.files:
        write_file(workspace / path, good.file_bytes(path))
    _write_params(workspace, good, [u for u in units if u.kind == UnitKind.PARAM])
    for unit in units:
        if unit.kind in (UnitKind.FILE, UnitKind.DATA):
            write_file(workspace / unit.path, bad.file_bytes(unit.path))
    stage_units = [u for u in units if u.kind == UnitKind.STAGE]
    if stage_units:
        pipeline = copy.deepcopy(good.dvcyaml)
        for unit in stage_units:
            _assign(pipeline.setdefault("stages", {}), (unit.path.split("@")[0],), unit.bad)
        (workspace / "dvc.yaml").write_text(reading.dump_yaml(pipeline), encoding="utf-8")


def _write_params(workspace: Path, good: Snapshot, units: list[Unit]) -> None:
    params = copy.deepcopy(good.params_data)
    for unit in units:
        _assign(params.setdefault(unit.path, {}), unit.keypath, unit.bad)
    for file, data in params.items():
        target = workspace / file
        current = reading.load_yaml(target.read_text(encoding="utf-8")) if target.is_file() else None
        if current != data:
            target.write_text(reading.dump_yaml(data), encoding="utf-8")


def _assign(tree: dict[Any, Any], keypath: tuple[Any, ...], value: Any) -> None:
    """Set (or, for ABSENT, delete) the value at `keypath`, creating intermediate mappings."""
    for part in keypath[:-1]:
        tree = tree.setdefault(part, {})
    if value == ABSENT:
        tree.pop(keypath[-1], None)
    else:
        tree[keypath[-1]] = copy.deepcopy(value)
