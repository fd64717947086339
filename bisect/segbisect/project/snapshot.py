"""Resolve a reference to a snapshot: per dvc.yaml stage, its params keys, code/file deps and data deps.

The reference's tree is exported to a temporary folder (git archive, params overlay or the working tree's files
written in) and read with DVC's own index, so templated `${...}` deps and whole-file params resolve exactly as
`dvc repro` would.
Given the fork server (see `forked`), both references are read at once in children that have DVC imported
already; `main` is that child's entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from segbisect.core.errors import UsageError
from segbisect.core.terms import Terms
from segbisect.project import metrics, reading
from segbisect.project.forked import ForkServer, ask
from segbisect.project.reading import export_tree, head_bytes, rev_parse_commit, uncommitted
from segbisect.project.refs import WORKSPACE, Reference, with_files

ABSENT = "<absent>"
# `json.dumps(value, sort_keys=True, default=str)` without building an encoder per call: a params file of many
# keys digests every value on both sides.
_DIGEST_JSON = json.JSONEncoder(sort_keys=True, default=str)
# A leaf's address: (kind, params file | file | stage name, key path inside a params file).
Key = tuple[str, str, tuple[Any, ...]]


@dataclass
class StageSnap:
    """What one stage reads: declared params keys, git-tracked files, and DVC-tracked data (.dvc files)."""

    name: str
    params: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    data: set[str] = field(default_factory=set)
    metrics: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    lock_file: str = "dvc.lock"
    # DVC runs it on every `dvc repro` (`always_changed`, or a command with neither deps nor outs).
    always_runs: bool = False


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
        keys: list[Key] = [("stage", stage.name, ())]
        for file, keypath in sorted(stage.params, key=str):
            keys.extend(("param", file, path) for path in _param_leaves(self.param(file, keypath), keypath))
        keys.extend(("file", path, ()) for path in sorted(stage.files))
        keys.extend(("data", path, ()) for path in sorted(stage.data))
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


# What DVC's index says of one tree: its stages, the params files they read, `.dvc` data sources, metrics files.
Reading = tuple[list[StageSnap], set[str], list[str], list[str]]


def load_all(pairs: Sequence[tuple[Reference, Path]], repo: Path, server: ForkServer | None) -> list[Snapshot]:
    """Export each reference into its folder and read the pipelines, at once in children of `server` when given
    (in this process when there is none or it fails them).
    """
    for ref, dest in pairs:
        _export(ref, repo, dest)
    answers = [
        ask(server, "segbisect.project.snapshot", [str(dest)], dest, dest.with_suffix(".json")) for _, dest in pairs
    ]
    snapshots = []
    for (ref, dest), answer in zip(pairs, answers, strict=True):
        try:
            stages, param_files, sources, metrics_files = _decode(answer.get()) or _read_stages(dest)
        except UsageError as exc:
            raise UsageError(f"{ref.describe()}: {exc}") from None
        if ref.kind == WORKSPACE:
            ref = _settle_working_tree(ref, repo, dest, stages, param_files)
        params_data = {f: _load_yaml(dest / f) for f in sorted(param_files)}
        snapshots.append(
            Snapshot(ref, dest, stages, params_data, _load_yaml(dest / "dvc.yaml"), sources, metrics_files)
        )
    return snapshots


def main(argv: list[str]) -> int:
    """A fork server child: write the pipeline under `argv[1]`, or why it cannot be read, as JSON to `argv[0]`."""
    out, root = Path(argv[0]), Path(argv[1])
    try:
        stages, param_files, sources, metrics_files = _read_stages(root)
    except UsageError as exc:
        out.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 0
    encoded = [
        {
            **vars(s),
            "params": sorted([f, list(k)] for f, k in s.params),
            "files": sorted(s.files),
            "data": sorted(s.data),
        }
        for s in stages
    ]
    found = {"stages": encoded, "param_files": sorted(param_files), "sources": sources, "metrics_files": metrics_files}
    out.write_text(json.dumps(found), encoding="utf-8")
    return 0


def _decode(found: Any) -> Reading | None:
    if found is None:
        return None
    if "error" in found:
        raise UsageError(found["error"])
    stages = [
        StageSnap(
            **{**s, "params": {(f, tuple(k)) for f, k in s["params"]}, "files": set(s["files"]), "data": set(s["data"])}
        )
        for s in found["stages"]
    ]
    return stages, set(found["param_files"]), found["sources"], found["metrics_files"]


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
    kept = {path for path in ref.files if not any(_under(path, out) for out in outs)}
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


def _read_stages(root: Path) -> Reading:
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root), config={"core": {"no_scm": True}}) as repo:
            index = repo.index
            pipeline = [s for s in index.stages if not s.is_data_source]
            order = {s: i for i, s in enumerate(index.stages)}
            graph = index.graph.reverse()
            ordered = [s for s in nx.lexicographical_topological_sort(graph, key=order.get) if s in pipeline]
            produced = [_rel(root, o.fs_path) for s in pipeline for o in s.outs]
            tracked = {
                _rel(root, o.fs_path): _rel(root, s.path) for s in index.stages if s.is_data_source for o in s.outs
            }
            param_files: set[str] = set()
            snaps = [_stage_snap(root, s, produced, tracked, param_files) for s in ordered]
            metrics_files = metrics.candidates(repo)
    except DvcException as exc:
        raise UsageError(f"cannot read the DVC pipeline: {exc}") from None
    return snaps, param_files, sorted(set(tracked.values())), metrics_files


def _stage_snap(
    root: Path, stage: Any, produced: list[str], tracked: dict[str, str], param_files: set[str]
) -> StageSnap:
    from dvc.dependency.param import ParamsDependency

    dvcfile = _rel(root, stage.dvcfile.path)
    snap = StageSnap(
        stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}",
        lock_file=Path(dvcfile).with_suffix(".lock").as_posix(),
        always_runs=bool(stage.always_changed or stage.is_callback),
    )
    file_deps = []
    for dep in stage.deps:
        path = _rel(root, dep.fs_path)
        if isinstance(dep, ParamsDependency):
            param_files.add(path)
            keys = dep.params or list(dep.read_params())
            snap.params.update((path, tuple(str(k).split("."))) for k in keys)
        else:
            file_deps.append(path)
    for path in file_deps:
        if path in param_files or any(_under(path, out) for out in produced):
            continue
        source = next((dvcfile for out, dvcfile in tracked.items() if _under(path, out)), None)
        if source:
            snap.data.add(source)
        else:
            snap.files.update(_expand(root, path))
    snap.outs = [_rel(root, o.fs_path) for o in stage.outs]
    snap.metrics = [_rel(root, o.fs_path) for o in stage.outs if o.metric]
    snap.plots = [_rel(root, o.fs_path) for o in stage.outs if o.plot]
    return snap


def _expand(root: Path, path: str) -> set[str]:
    target = root / path
    if target.is_dir():
        return {_rel(root, str(p)) for p in target.rglob("*") if p.is_file()}
    return {path}


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _rel(root: Path, path: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


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
