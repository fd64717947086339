"""Diff two snapshots' leaves into units of change (linear in the keys: the keys that hold others are found in one
pass over each key's prefixes)."""

from __future__ import annotations

import difflib
import json
from typing import Any

from segbisect.core.errors import UsageError
from segbisect.core.units import Inventory, Unit, UnitKind
from segbisect.project.snapshot import ABSENT, Key, Leaf, Snapshot


def diff(good: Snapshot, bad: Snapshot) -> Inventory:
    """Compare GOOD's and BAD's leaves; raises UsageError when their pipelines have different stages."""
    good_names, bad_names = [s.name for s in good.stages], [s.name for s in bad.stages]
    if set(good_names) != set(bad_names):
        only_good, only_bad = set(good_names) - set(bad_names), set(bad_names) - set(good_names)
        raise UsageError(
            f"GOOD and BAD have different stages (only in GOOD: {sorted(only_good) or '-'}, "
            f"only in BAD: {sorted(only_bad) or '-'}); segbisect needs the same stage graph"
        )
    order = {n: i for i, n in enumerate(good_names)}
    base, bad_digests, units = {}, {}, []
    for key, readers in _keys(good, bad).items():
        g, b = _leaf(good, key), _leaf(bad, key)
        ident = _unit_id(key)
        base[ident], bad_digests[ident] = g.digest, b.digest
        if g.digest != b.digest:
            units.append(_unit(good, bad, key, tuple(sorted(readers, key=order.__getitem__)), g, b))
    units.sort(key=lambda u: (order[u.stages[0]], len(u.stages) > 1, u.kind != UnitKind.STAGE, u.id))
    return Inventory(base, bad_digests, units)


def _leaf(snap: Snapshot, key: Key) -> Leaf:
    """The value and digest at `key`: as flattened already where this side reads it, else looked up."""
    return snap.leaves.get(key) or snap.leaf_at(key)


def _keys(good: Snapshot, bad: Snapshot) -> dict[Key, set[str]]:
    """Every key either side reads, with the stages that read it on either side.

    Where one side has a single value and the other a mapping below the same params key (`a: 1` against
    `a: {b: 2}`), the key is the shorter one, holding the whole value; an empty mapping has no leaves of its own.
    """
    keys: dict[Key, set[str]] = {}
    for snap in (good, bad):
        for key, leaf in snap.leaves.items():
            keys.setdefault(key, set()).update(leaf.readers)
    enclosing = _enclosing(keys)
    merged: dict[Key, set[str]] = {}
    for key, readers in keys.items():
        target = _target(key, enclosing, good, bad)
        if target is not None:
            merged.setdefault(target, set()).update(readers)
    return merged


def _enclosing(keys: dict[Key, set[str]]) -> set[Key]:
    """The params keys read with other keys below them: one pass over each key's prefixes, so that a section of
    many keys costs as many set lookups, not a comparison with every other key.
    """
    prefixes = {
        Key(kind, path, keypath[:length])
        for kind, path, keypath in keys
        if kind == "param"
        for length in range(1, len(keypath))
    }
    return prefixes & keys.keys()


def _target(key: Key, enclosing: set[Key], good: Snapshot, bad: Snapshot) -> Key | None:
    """The key `key` is compared under: itself, an enclosing key that one side holds as a single value, or none
    (an empty mapping whose other side has values below it).
    """
    if key.kind != "param":
        return key
    for length in range(1, len(key.keypath) + 1):
        prefix = key._replace(keypath=key.keypath[:length])
        if prefix not in enclosing:
            continue
        if not all(isinstance(snap.param(key.path, prefix.keypath), dict) for snap in (good, bad)):
            return prefix
        if prefix == key:
            return None
    return key


def _unit_id(key: Key) -> str:
    """A unit's id: its kind, then its params key (dotted; after its file unless params.yaml), path or stage."""
    kind, path, keypath = UnitKind(key.kind), key.path, key.keypath
    if kind != UnitKind.PARAM:
        return f"{kind}:{path}"
    dotted = ".".join(str(p) for p in keypath)
    return f"{kind}:{dotted}" if path == "params.yaml" else f"{kind}:{path}:{dotted}"


def _unit(good: Snapshot, bad: Snapshot, key: Key, stages: tuple[str, ...], g: Leaf, b: Leaf) -> Unit:
    kind, path, keypath = UnitKind(key.kind), key.path, key.keypath
    ident = _unit_id(key)
    values, detail = (g.value, b.value), ""
    if kind == UnitKind.PARAM:
        name = ident.removeprefix(f"{kind}:")
        summary = f"{_short(g.value)} -> {_short(b.value)}"
    elif kind == UnitKind.STAGE:
        name, summary = f"dvc.yaml stages.{path}", "stage definition changed"
    else:
        name = path
        values = (g.digest[:12], b.digest[:12])
        summary, detail = _file_change(good.file_bytes(path), bad.file_bytes(path))
    return Unit(
        id=ident,
        kind=kind,
        name=name,
        stages=stages,
        path=path,
        keypath=keypath,
        good=values[0],
        bad=values[1],
        summary=summary,
        detail=detail,
    )


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
