"""Units of change between GOOD and BAD, and their groups by stage (a unit several stages read is its own group).
What the search swaps; `project.changes` computes them from two snapshots."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class UnitKind(StrEnum):
    """What a unit swaps: a params value, a code file, a `.dvc` data file or a stage's definition."""

    PARAM = "param"
    FILE = "file"
    DATA = "data"
    STAGE = "stage"


@dataclass(frozen=True, kw_only=True)
class Unit:
    """One independently swappable difference: a params value, a file, a .dvc data file or a stage definition.

    `path` is the params file, the file or the stage name; `keypath` the key inside a params file.
    """

    id: str
    kind: UnitKind
    name: str
    stages: tuple[str, ...]
    path: str
    keypath: tuple[Any, ...] = ()
    good: Any
    bad: Any
    summary: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": str(self.kind),
            "stages": list(self.stages),
            "good": self.good,
            "bad": self.bad,
            "summary": self.summary,
        }


@dataclass
class Group:
    """The units stage search swaps together: one stage's own units, or one shared unit."""

    name: str
    stages: tuple[str, ...]
    units: list[Unit] = field(default_factory=list)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(u.id for u in self.units)


@dataclass
class Inventory:
    """Every key the pipeline reads, with its GOOD digest, and the units where BAD differs."""

    base: dict[str, str]
    bad: dict[str, str]
    units: list[Unit]

    def fingerprint(self, from_bad: frozenset[str]) -> str:
        """Content fingerprint of the configuration GOOD + the BAD side of `from_bad`."""
        config = {k: (self.bad[k] if k in from_bad else v) for k, v in self.base.items()}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def group(units: list[Unit]) -> list[Group]:
    """Groups in pipeline order: each stage's own units, then each shared unit on its own."""
    groups: dict[str, Group] = {}
    for unit in units:
        name = unit.stages[0] if len(unit.stages) == 1 else unit.name
        groups.setdefault(name, Group(name, unit.stages)).units.append(unit)
    return list(groups.values())
