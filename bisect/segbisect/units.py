"""Diff two snapshots into units of change, grouped by stage (a unit several stages read is its own group)."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from segbisect.errors import UsageError
from segbisect.snapshot import ABSENT, Snapshot, digest


@dataclass(frozen=True)
class Unit:
    """One independently swappable difference: a params key, a file, a .dvc data file or a stage definition."""

    id: str
    kind: str
    name: str
    stages: tuple[str, ...]
    key: tuple
    good: Any
    bad: Any
    summary: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "stages": list(self.stages),
                "good": self.good, "bad": self.bad, "summary": self.summary}


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


def diff(good: Snapshot, bad: Snapshot) -> Inventory:
    """Compare GOOD and BAD key by key; raises UsageError when their pipelines have different stages."""
    good_names, bad_names = [s.name for s in good.stages], [s.name for s in bad.stages]
    if set(good_names) != set(bad_names):
        only_good, only_bad = set(good_names) - set(bad_names), set(bad_names) - set(good_names)
        raise UsageError(
            f"GOOD and BAD have different stages (only in GOOD: {sorted(only_good) or '-'}, "
            f"only in BAD: {sorted(only_bad) or '-'}); segbisect needs the same stage graph"
        )
    readers: dict[tuple, list[str]] = {}
    for name in good_names:
        for key in _stage_keys(good, bad, name):
            readers.setdefault(key, []).append(name)
    base, bad_digests, units = {}, {}, []
    for key, stages in readers.items():
        unit = _unit(good, bad, key, tuple(stages))
        base[unit.id] = _digest(good, key)
        bad_digests[unit.id] = _digest(bad, key)
        if base[unit.id] != bad_digests[unit.id]:
            units.append(unit)
    order = {n: i for i, n in enumerate(good_names)}
    units.sort(key=lambda u: (order[u.stages[0]], len(u.stages) > 1, u.kind != "stage", u.id))
    return Inventory(base, bad_digests, units)


def group(units: list[Unit]) -> list[Group]:
    """Groups in pipeline order: each stage's own units, then each shared unit on its own."""
    groups: dict[str, Group] = {}
    for unit in units:
        name = unit.stages[0] if len(unit.stages) == 1 else unit.name
        groups.setdefault(name, Group(name, unit.stages)).units.append(unit)
    return list(groups.values())


def _stage_keys(good: Snapshot, bad: Snapshot, name: str) -> list[tuple]:
    keys: list[tuple] = [("stage", name)]
    sides = [s for s in (good.stage(name), bad.stage(name)) if s is not None]
    for file, keypath in sorted({p for s in sides for p in s.params}, key=str):
        keys.extend(("param", file, leaf) for leaf in _leaves(good.param(file, keypath), bad.param(file, keypath), keypath))
    keys.extend(("file", p) for p in sorted({f for s in sides for f in s.files}))
    keys.extend(("data", p) for p in sorted({d for s in sides for d in s.data}))
    return keys


def _leaves(good: Any, bad: Any, keypath: tuple) -> list[tuple]:
    """Split nested params into leaf keys so a unit is as small as a single value."""
    if isinstance(good, dict) and isinstance(bad, dict) and (good or bad):
        subkeys = list(dict.fromkeys([*good, *bad]))
        return [leaf for k in subkeys for leaf in _leaves(good.get(k, ABSENT), bad.get(k, ABSENT), (*keypath, k))]
    return [keypath]


def _digest(snap: Snapshot, key: tuple) -> str:
    kind = key[0]
    if kind == "param":
        return digest(snap.param(key[1], key[2]))
    if kind == "stage":
        return digest(snap.stage_definition(key[1]))
    return snap.file_digest(key[1])


def _unit(good: Snapshot, bad: Snapshot, key: tuple, stages: tuple[str, ...]) -> Unit:
    kind = key[0]
    if kind == "param":
        dotted = ".".join(str(p) for p in key[2])
        name = dotted if key[1] == "params.yaml" else f"{key[1]}:{dotted}"
        g, b = good.param(key[1], key[2]), bad.param(key[1], key[2])
        return Unit(f"param:{name}", kind, name, stages, key, g, b, f"{_short(g)} -> {_short(b)}")
    if kind == "stage":
        g, b = good.stage_definition(key[1]), bad.stage_definition(key[1])
        return Unit(f"stage:{key[1]}", kind, f"dvc.yaml stages.{key[1]}", stages, key, g, b, "stage definition changed")
    path = key[1]
    g, b = good.file_digest(path), bad.file_digest(path)
    summary, detail = _file_change(good.file_bytes(path), bad.file_bytes(path))
    return Unit(f"{kind}:{path}", kind, path, stages, key, g[:12], b[:12], summary, detail)


def _file_change(good: bytes | None, bad: bytes | None) -> tuple[str, str]:
    if good is None or bad is None:
        return ("added in BAD" if good is None else "deleted in BAD"), ""
    try:
        old, new = good.decode().splitlines(), bad.decode().splitlines()
    except UnicodeDecodeError:
        return "binary content changed", ""
    lines = list(difflib.unified_diff(old, new, "GOOD", "BAD", lineterm="", n=1))
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return f"+{added} -{removed} lines", "\n".join(lines[:80])


def _short(value: Any) -> str:
    text = "absent" if value == ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
