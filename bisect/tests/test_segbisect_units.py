"""Units of change from two snapshots' params: which keys they compare under, and work that grows with the keys."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from segbisect.project import changes
from segbisect.project.changes import diff
from segbisect.project.refs import Reference
from segbisect.project.snapshot import ABSENT, Key, Snapshot, StageSnap

# Stages reading params at several depths, some of them the same keys (`p` and `p.a`), and a second params file.
READS = {
    "prep": {("params.yaml", ("p",)), ("params.yaml", ("p", "a"))},
    "train": {("params.yaml", ("q", "a")), ("other.yaml", ("p", 0))},
    "evaluate": {("params.yaml", ("q",)), ("params.yaml", ("r", "b", "c"))},
}


def snapshot(name: str, params: dict[str, Any]) -> Snapshot:
    stages = [StageSnap(stage, params=set(keys)) for stage, keys in READS.items()]
    dvcyaml = {"stages": {stage: {"cmd": f"python {stage}.py"} for stage in READS}}
    return Snapshot(Reference(name, "git", "0" * 40), Path("/nonexistent"), stages, params, dvcyaml)


def found(good: dict[str, Any], bad: dict[str, Any]) -> dict[str, tuple[Any, Any, tuple[str, ...]]]:
    """Each unit's name with its GOOD and BAD values and its stages."""
    inventory = diff(snapshot("good", good), snapshot("bad", bad))
    return {u.name: (u.good, u.bad, u.stages) for u in inventory.units}


@pytest.mark.parametrize(
    ("good", "bad", "expected"),
    [
        pytest.param(
            {"p": {"a": 1}}, {"p": {"a": {"b": {"c": 2}}}}, {"p.a": (1, {"b": {"c": 2}}, ("prep",))}, id="value-to-tree"
        ),
        pytest.param(
            {"p": {"a": {"b": 2, "c": 3}}},
            {"p": {"a": None}},
            {"p.a": ({"b": 2, "c": 3}, None, ("prep",))},
            id="tree-to-value",
        ),
        pytest.param({"p": {"a": {"x": 1}}}, {"p": {"a": {}}}, {"p.a.x": (1, ABSENT, ("prep",))}, id="tree-to-empty"),
        pytest.param({"p": {"a": {}}}, {"p": {"a": {}}}, {}, id="empty-both"),
        pytest.param({"p": {"a": {}}}, {"p": {"a": 0}}, {"p.a": ({}, 0, ("prep",))}, id="empty-to-value"),
        pytest.param({"p": {"a": [1, 2]}}, {"p": {"a": [1, 3]}}, {"p.a": ([1, 2], [1, 3], ("prep",))}, id="list-whole"),
        pytest.param(
            {"p": {"gone": 1, "a": 1}},
            {"p": {"a": 1, "new": {"deep": 2}}},
            {"p.gone": (1, ABSENT, ("prep",)), "p.new.deep": (ABSENT, 2, ("prep",))},
            id="added-removed",
        ),
        pytest.param({"p": {"a": 1, "b": 2}}, {}, {"p": ({"a": 1, "b": 2}, ABSENT, ("prep",))}, id="section-removed"),
        pytest.param(
            {"q": {"a": {"k": 1}}},
            {"q": {"a": {"k": 2}}},
            {"q.a.k": (1, 2, ("train", "evaluate"))},
            id="read-by-two-stages",
        ),
        pytest.param(
            {"r": {"b": 5}}, {"r": {"b": {"c": 5}}}, {"r.b.c": (ABSENT, 5, ("evaluate",))}, id="value-above-a-read-key"
        ),
        pytest.param(
            {"p": {"a": 1}},
            {"q": {"a": {}}},
            {"p": ({"a": 1}, ABSENT, ("prep",)), "q": (ABSENT, {"a": {}}, ("train", "evaluate"))},
            id="section-added-holding-an-empty-mapping",
        ),
    ],
)
def test_units_of_nested_added_and_removed_keys(good: dict, bad: dict, expected: dict) -> None:
    assert found({"params.yaml": good}, {"params.yaml": bad}) == expected


def test_a_second_params_file_names_its_units_after_it() -> None:
    good, bad = {"params.yaml": {}, "other.yaml": {"p": {0: 1}}}, {"params.yaml": {}, "other.yaml": {"p": {0: 2}}}
    assert found(good, bad) == {"other.yaml:p.0": (1, 2, ("train",))}


def pairwise_keys(good: Snapshot, bad: Snapshot) -> dict[Key, set[str]]:
    """The definition the units follow, written as plainly as possible: compare every key with every other."""

    def below(key: Key, prefix: Key) -> bool:
        return key[:2] == prefix[:2] and len(key[2]) > len(prefix[2]) and key[2][: len(prefix[2])] == prefix[2]

    def target(key: Key, keys: dict[Key, set[str]]) -> Key | None:
        if key[0] != "param":
            return key
        for length in range(1, len(key[2]) + 1):
            prefix = (key[0], key[1], key[2][:length])
            if prefix not in keys or not any(below(other, prefix) for other in keys):
                continue
            if not all(isinstance(snap.param(key[1], prefix[2]), dict) for snap in (good, bad)):
                return prefix
            if prefix == key:
                return None
        return key

    keys: dict[Key, set[str]] = {}
    for snap in (good, bad):
        for key, leaf in snap.leaves.items():
            keys.setdefault(key, set()).update(leaf.readers)
    merged: dict[Key, set[str]] = {}
    for key, readers in keys.items():
        where = target(key, keys)
        if where is not None:
            merged.setdefault(where, set()).update(readers)
    return merged


NAMES = ["a", "b", "c", 0, "p"]
SCALARS = [1, 2, "x", None, True, [1, 2], [], {}]


def tree(rng: random.Random, depth: int) -> Any:
    if depth == 0 or rng.random() < 0.35:
        return rng.choice(SCALARS)
    return {name: tree(rng, depth - 1) for name in rng.sample(NAMES, rng.randint(0, 3))}


def mutated(rng: random.Random, value: Any, depth: int) -> Any:
    """`value` with some values changed, mappings turned into values and back, keys added and removed."""
    if rng.random() < 0.2:
        return tree(rng, depth)
    if not isinstance(value, dict):
        return value
    out = {k: mutated(rng, v, depth - 1) for k, v in value.items() if rng.random() > 0.15}
    if rng.random() < 0.3:
        out[rng.choice(NAMES)] = tree(rng, depth - 1)
    return out


def test_units_match_the_pairwise_definition_on_random_nested_params() -> None:
    rng = random.Random(7)
    for _ in range(300):
        good = {"params.yaml": {name: tree(rng, 3) for name in "pqr"}, "other.yaml": {"p": tree(rng, 2)}}
        bad = {file: {name: mutated(rng, value, 3) for name, value in data.items()} for file, data in good.items()}
        g, b = snapshot("good", good), snapshot("bad", bad)
        assert changes._keys(g, b) == pairwise_keys(g, b), (good, bad)


def calls_to_diff(keys: int) -> int:
    """Python function calls `diff` makes for a section of `keys` keys of which one changes: a count of work that,
    unlike seconds, does not depend on the machine or its load.
    """
    section = {f"k{i}": i for i in range(keys)}
    good = snapshot("good", {"params.yaml": {"p": section}})
    bad = snapshot("bad", {"params.yaml": {"p": {**section, "k0": -1}}})
    count = 0

    def profile(_frame: object, event: str, _arg: object) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        diff(good, bad)
    finally:
        sys.setprofile(None)
    return count


def test_diffing_work_grows_no_faster_than_n_log_n_in_the_keys_of_a_section() -> None:
    small, large = calls_to_diff(100), calls_to_diff(1000)
    # 10x the keys: 10x the calls when linear, 15x at n log n, 100x when every key meets every other.
    assert large < 20 * small, f"10x the keys cost {large / small:.1f}x the calls ({small} -> {large})"
