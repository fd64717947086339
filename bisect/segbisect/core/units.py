"""Units of change between GOOD and BAD, and their groups by stage (a unit several stages read is its own group).
What the search swaps; `project.changes` computes them from two snapshots."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
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
    # A probe's: the id of the unit whose key it sets, to a value neither GOOD's nor BAD's (see `Inventory.probe`).
    sets: str = ""

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
    """Every key the pipeline reads, with its GOOD digest, and the units where BAD differs; `probes`: units that
    set a unit's key to another value (see `probe`), each with that value's digest.
    """

    base: dict[str, str]
    bad: dict[str, str]
    units: list[Unit]
    probes: dict[str, tuple[Unit, str]] = field(default_factory=dict)
    _by_id: dict[str, Unit] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {u.id: u for u in self.units}

    def fingerprint(self, from_bad: frozenset[str]) -> str:
        """Content fingerprint of the configuration GOOD + the BAD side of `from_bad` (a probe's value for a probe's
        key).
        """
        config = {k: (self.bad[k] if k in from_bad else v) for k, v in self.base.items()}
        for ident in from_bad & self.probes.keys():
            probe, value_digest = self.probes[ident]
            config[probe.sets] = value_digest
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def probe(self, unit: Unit, value: Any, value_digest: str) -> Unit:
        """A unit that takes `unit`'s key to `value` instead of BAD's, fingerprinted by `value_digest` (the digest
        the snapshots give params values), so that a probe at BAD's or GOOD's value is that side's hybrid.
        """
        probe = replace(unit, id=f"{unit.id}={value}", bad=value, summary=f"{unit.good} -> {value}", sets=unit.id)
        self.probes[probe.id] = (probe, value_digest)
        return probe

    def unit(self, ident: str) -> Unit:
        """The unit, or probe, of `ident`."""
        if ident in self.probes:
            return self.probes[ident][0]
        return self._by_id[ident]

    def taken(self, config: frozenset[str]) -> tuple[str, ...]:
        """The ids of `config`'s units in inventory order, its probes after them."""
        return tuple(u.id for u in self.units if u.id in config) + tuple(i for i in self.probes if i in config)


def group(units: list[Unit]) -> list[Group]:
    """Groups in pipeline order: each stage's own units, then each shared unit on its own."""
    groups: dict[str, Group] = {}
    for unit in units:
        name = unit.stages[0] if len(unit.stages) == 1 else unit.name
        groups.setdefault(name, Group(name, unit.stages)).units.append(unit)
    return list(groups.values())
