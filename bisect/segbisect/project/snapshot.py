"""Resolve a reference to a snapshot: per dvc.yaml stage, its params keys, code/file deps and data deps.

The reference's tree is exported to a temporary folder (git archive, params overlay or the working tree's files
written in) and read with DVC's own index, so templated `${...}` deps and whole-file params resolve exactly as
`dvc repro` would. The session's DVC gateway reads both references at once (see `gateway.Dvc.pipelines`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from segbisect.core.errors import UsageError
from segbisect.core.terms import Terms
from segbisect.project import reading
from segbisect.project.gateway import Dvc, StageSnap, under
from segbisect.project.reading import export_tree, head_bytes, rev_parse_commit, uncommitted
from segbisect.project.refs import WORKSPACE, Reference, with_files

ABSENT = "<absent>"
# `json.dumps(value, sort_keys=True, default=str)` without building an encoder per call: a params file of many
# keys digests every value on both sides.
_DIGEST_JSON = json.JSONEncoder(sort_keys=True, default=str)


class Key(NamedTuple):
    """Where one thing the pipeline reads lives: `kind` (a unit kind's name: param, file, data, stage), `path` (the
    params file, the file or the stage) and `keypath` inside a params file.
    """

    kind: str
    path: str
    keypath: tuple[Any, ...]


@dataclass
class Snapshot:
    """One reference's pipeline, materialized read-only under `root`."""

    ref: Reference
    root: Path
    stages: list[StageSnap]
    params_data: dict[str, Any]
    dvcyaml: dict[str, Any]
    data_sources: list[str] = field(default_factory=list)
    metrics_files: list[str] = field(default_factory=list)

    @property
    def plot_paths(self) -> list[str]:
        """The plots `dvc.yaml` declares: stage outputs marked as plots, then top-level entries (files or
        folders; an entry that is no path simply matches nothing).
        """
        declared = [path for stage in self.stages for path in stage.plots]
        for entry in self.dvcyaml.get("plots") or []:
            declared.extend([entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else [])
        return list(dict.fromkeys(declared))

    @property
    def read_paths(self) -> set[str]:
        return _read_paths(self.stages, set(self.params_data))

    @cached_property
    def leaves(self) -> dict[Key, Leaf]:
        """Everything the pipeline reads, flattened once: each stage definition, each params value down to its
        leaves, each code file and each `.dvc` data file, with the stages that read it (pipeline order).
        """
        readers: dict[Key, list[str]] = {}
        for stage in self.stages:
            for key in self._keys_read_by(stage):
                readers.setdefault(key, []).append(stage.name)
        found: dict[Key, Leaf] = {}
        for key, names in readers.items():
            leaf = self.leaf_at(key)
            found[key] = Leaf(readers=tuple(names), value=leaf.value, digest=leaf.digest)
        return found

    def _keys_read_by(self, stage: StageSnap) -> list[Key]:
        keys: list[Key] = [Key("stage", stage.name, ())]
        for file, keypath in sorted(stage.params, key=str):
            keys.extend(Key("param", file, path) for path in _param_leaves(self.param(file, keypath), keypath))
        keys.extend(Key("file", path, ()) for path in sorted(stage.files))
        keys.extend(Key("data", path, ()) for path in sorted(stage.data))
        return keys

    def leaf_at(self, key: Key) -> Leaf:
        """The value and digest at any key, whether or not this side's stages read it (readers left empty)."""
        kind, path, keypath = key
        if kind == "param":
            value = self.param(path, keypath)
        elif kind == "stage":
            value = self.stage_definition(path)
        else:
            return Leaf(readers=(), value=None, digest=self.file_digest(path))
        return Leaf(readers=(), value=value, digest=digest(value))

    def param(self, file: str, keypath: tuple[Any, ...]) -> Any:
        """The value at `keypath` in params file `file`, or ABSENT."""
        node: Any = self.params_data.get(file, {})
        for part in keypath:
            if not isinstance(node, dict) or part not in node:
                return ABSENT
            node = node[part]
        return node

    def file_bytes(self, path: str) -> bytes | None:
        target = self.root / path
        return target.read_bytes() if target.is_file() else None

    def file_digest(self, path: str) -> str:
        data = self.file_bytes(path)
        return ABSENT if data is None else hashlib.sha256(data).hexdigest()

    def stage_definition(self, name: str) -> Any:
        return self.dvcyaml.get("stages", {}).get(name.split("@")[0], ABSENT)


@dataclass(frozen=True, kw_only=True)
class Leaf:
    """One thing the pipeline reads: its value (None for files) and a digest that changes when it does."""

    readers: tuple[str, ...]
    value: Any
    digest: str


def _param_leaves(value: Any, keypath: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """Key paths of nested params down to single values, so a unit of change is as small as one value."""
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _param_leaves(child, (*keypath, key))
    else:
        yield keypath


def load_all(pairs: Sequence[tuple[Reference, Path]], repo: Path, dvc: Dvc) -> list[Snapshot]:
    """Export each reference into its folder and read the pipelines, all asked of `dvc` at once."""
    for ref, dest in pairs:
        _export(ref, repo, dest)
    answers = dvc.pipelines([dest for _, dest in pairs])
    snapshots = []
    for (ref, dest), answer in zip(pairs, answers, strict=True):
        try:
            pipeline = answer()
        except UsageError as exc:
            raise UsageError(f"{ref.describe()}: {exc}") from None
        stages, param_files = pipeline.stages, pipeline.param_files
        if ref.kind == WORKSPACE:
            ref = _settle_working_tree(ref, repo, dest, stages, param_files)
        params_data = {f: _load_yaml(dest / f) for f in sorted(param_files)}
        dvcyaml = _load_yaml(dest / "dvc.yaml")
        snapshots.append(Snapshot(ref, dest, stages, params_data, dvcyaml, pipeline.sources, pipeline.metrics_files))
    return snapshots


def _export(ref: Reference, repo: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    export_tree(repo, ref.commit, dest)
    for name, data in ref.params.items():
        (dest / name).write_text(reading.dump_yaml(data), encoding="utf-8")
    for path in ref.files:
        write_file(dest / path, _on_disk(repo, path))
    for path in set(ref.untracked) - set(ref.files):
        # A link, not a copy, until the pipeline is known to read it: an untracked file may be large data.
        target = dest / path
        target.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((repo / path).absolute())
    if not (dest / "dvc.yaml").is_file():
        raise UsageError(f"{ref.describe()}: no dvc.yaml at commit {ref.commit[:10]}")


def _settle_working_tree(
    ref: Reference, repo: Path, dest: Path, stages: list[StageSnap], param_files: set[str]
) -> Reference:
    """The working tree's files that hybrids take: its tracked changes except stage outputs (DVC's to produce or
    restore, as for any reference), and the untracked files the pipeline reads, copied now. The export goes back
    to HEAD's version of the others (an untracked file: none).
    """
    outs = [out for stage in stages for out in stage.outs]
    read = _read_paths(stages, param_files)
    kept = {path for path in ref.files if not any(under(path, out) for out in outs)}
    taken = {path for path in ref.untracked if path in read} - kept
    for path in taken:
        write_file(dest / path, _on_disk(repo, path))
    for path in {*ref.files, *ref.untracked} - kept - taken:
        write_file(dest / path, head_bytes(repo, path))
    return replace(with_files(ref, tuple(sorted(kept | taken))), untracked=())


def _read_paths(stages: list[StageSnap], param_files: set[str]) -> set[str]:
    """Every file the pipeline reads as configuration: code and file deps, `.dvc` files, params files, and the
    `dvc.yaml` files defining the stages.
    """
    dvcfiles = {Path(stage.lock_file).with_suffix(".yaml").as_posix() for stage in stages}
    return {path for stage in stages for path in stage.files | stage.data} | param_files | dvcfiles


def uncommitted_warnings(repo: Path, good: Snapshot, bad: Snapshot, terms: Terms) -> list[str]:
    """One line per side that is HEAD's commit (a git reference, or a params file laid over it) while the working
    tree has uncommitted changes to files its pipeline reads, which that side leaves out. Nothing when the other
    side is the working tree itself: the user is comparing the two already.
    """
    head = rev_parse_commit(repo, "HEAD")
    sides = [
        (role, snap)
        for role, snap, other in ((terms.old, good, bad), (terms.new, bad, good))
        if snap.ref.kind in ("git", "params-file") and snap.ref.commit == head and other.ref.kind != WORKSPACE
    ]
    if not sides:
        return []
    tree = uncommitted(repo)
    lines = []
    for role, snap in sides:
        read = snap.read_paths
        dirty = [path for path in (*tree.changed, *tree.untracked) if path in read and _differs(repo, path)]
        if dirty:
            how = "is HEAD's commit" if snap.ref.kind == "git" else "is laid over HEAD's commit"
            lines.append(
                f"{role} '{snap.ref.text}' {how}; uncommitted changes to {', '.join(dirty)} are not part of it "
                f"(use '{WORKSPACE}' for the tree as it is on disk)"
            )
    return lines


def _differs(repo: Path, path: str) -> bool:
    """Whether the working tree's `path` is not HEAD's (git status also lists a file staged and then edited
    back).
    """
    return _on_disk(repo, path) != head_bytes(repo, path)


def _on_disk(repo: Path, path: str) -> bytes | None:
    source = repo / path
    return source.read_bytes() if source.is_file() else None


def write_file(target: Path, content: bytes | None) -> None:
    """Write `content` at `target` (its folders made), or delete `target` when `content` is None. A link at
    `target` is replaced, never written through; a file is written over in place, so it keeps its mode (a stage's
    executable script stays executable).
    """
    if content is None or target.is_symlink():
        target.unlink(missing_ok=True)
    if content is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        return {}
    return reading.load_yaml(path.read_text(encoding="utf-8")) or {}


def digest(value: Any) -> str:
    """A stable digest of a params value or stage definition."""
    return hashlib.sha256(_DIGEST_JSON.encode(_canonical(value)).encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value
