"""Which commits brought each culprit unit's BAD value, read from git's history without running anything: after
"which change", a person asks who made it, when, and why.

The commits searched are those on the first-parent path from GOOD's commit to BAD's (`git log --first-parent
GOOD..BAD`), as the main line saw them: a change that came in through a merge is the merge's. A unit takes BAD's
value in a commit where it changes from another value to BAD's; a value reverted and brought back again has each
of those commits, the latest last. The cost is linear in the path: per unit, one path-limited `git log` lists the
commits touching the unit's file, and one `git cat-file --batch` reads that file at each of them.

A value BAD lays over its commit (a params file's, an MLflow run's logged params, the working tree's uncommitted
files) has no commit; its provenance says where it came from instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from segbisect.core.units import Unit, UnitKind
from segbisect.project import reading
from segbisect.project.reading import git
from segbisect.project.refs import WORKSPACE, Reference
from segbisect.project.snapshot import ABSENT, digest

# One field of a commit from the other: git's unit separator, which no name or subject holds.
_SEP = "\x1f"
_FORMAT = _SEP.join(("%H", "%P", "%an", "%aI", "%s"))
# A params file or dvc.yaml that is not YAML at some commit: a value equal to no other.
_UNREADABLE = "<unreadable>"
# The kinds whose value is read from the file's text; the others' is the file's blob id.
_PARSED = (UnitKind.PARAM, UnitKind.STAGE)


@dataclass(frozen=True, kw_only=True)
class Introduction:
    """A commit on the first-parent path where a unit took BAD's value; `date` is the author date (ISO 8601)."""

    commit: str
    author: str
    date: str
    subject: str

    def line(self) -> str:
        """As every report shows it: `abc1234 2026-11-02 Alice: subject`."""
        return f"{self.commit[:7]} {self.date[:10]} {self.author}: {self.subject}"

    def to_dict(self) -> dict[str, str]:
        return {"commit": self.commit, "author": self.author, "date": self.date, "subject": self.subject}


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where a unit's BAD value came from: the commits that brought it, oldest first, or, where no commit did, a
    `note` saying what can be told (laid over from a params file or run, uncommitted, no path between commits).
    """

    commits: tuple[Introduction, ...] = ()
    note: str = ""

    def lines(self, commits_after: str = "") -> list[str]:
        """One line per commit (each after `commits_after`), or the note; nothing when nothing was traced."""
        return [commits_after + c.line() for c in self.commits] or ([self.note] if self.note else [])


@dataclass(frozen=True)
class _Logged:
    """A commit `git log` listed, with its first parent (None: a root commit)."""

    introduction: Introduction
    parent: str | None


@dataclass(frozen=True)
class _Span:
    """GOOD's and BAD's references in one repository."""

    repo: Path
    good: Reference
    bad: Reference

    @cached_property
    def descends(self) -> bool:
        """Whether BAD's commit descends from GOOD's (or is it), so that a first-parent path may join them."""
        out = git(self.repo, "merge-base", "--is-ancestor", self.good.commit, self.bad.commit, check=False)
        return out.returncode == 0


def trace(repo: Path, good: Reference, bad: Reference, units: Iterable[Unit]) -> dict[str, Provenance]:
    """Each unit's provenance, by unit id."""
    span = _Span(repo, good, bad)
    return {unit.id: _trace(span, unit) for unit in units}


def _trace(span: _Span, unit: Unit) -> Provenance:
    """A history git cannot read (a missing or corrupt object) costs the unit its provenance, not the report."""
    try:
        [committed] = _values(span.repo, unit, [span.bad.commit])
        if _overlaid(span.bad, unit, committed):
            return Provenance(note=_origin(span.bad))
        if not span.descends:
            return Provenance(
                note=f"commit {span.bad.commit[:10]} does not descend from {span.good.commit[:10]}: no first-parent "
                "path leads from one to the other"
            )
        return _walk(span, unit, committed)
    except subprocess.CalledProcessError as exc:
        said = exc.stderr.decode(errors="replace").strip().splitlines()
        return Provenance(note=f"git could not read the history ({said[0] if said else f'exit {exc.returncode}'})")


def _walk(span: _Span, unit: Unit, target: str) -> Provenance:
    """The commits touching the unit's file where it turns into `target`, BAD's value at BAD's commit."""
    logged = _log(span, _file(unit))
    before = logged[0].parent if logged else None
    values = _values(span.repo, unit, [before, *(entry.introduction.commit for entry in logged)])
    found = [
        entry.introduction
        for entry, previous, value in zip(logged, values, values[1:], strict=False)
        if value == target != previous
    ]
    if found:
        return Provenance(commits=tuple(found))
    note = (
        f"no commit on the first-parent path from {span.good.commit[:10]} to {span.bad.commit[:10]} brings it: "
        "it is there where the path starts"
    )
    if _origin(span.good):
        note += f"; '{span.good.text}' lays its own value over that commit ({_origin(span.good)})"
    return Provenance(note=note)


def _log(span: _Span, path: str) -> list[_Logged]:
    """The first-parent commits from GOOD's to BAD's that change `path` against their first parent, oldest first
    (renames not followed: the unit names one file).
    """
    out = git(
        span.repo,
        "--literal-pathspecs",
        "log",
        "--first-parent",
        "--no-follow",
        "--no-show-signature",
        "--reverse",
        "-z",
        f"--format={_FORMAT}",
        f"{span.good.commit}..{span.bad.commit}",
        "--",
        path,
    ).stdout.decode(errors="replace")
    logged = []
    for record in filter(None, out.split("\0")):
        commit, parents, author, date, subject = record.split(_SEP, 4)
        introduction = Introduction(commit=commit, author=author, date=date, subject=subject)
        logged.append(_Logged(introduction, parents.split()[0] if parents else None))
    return logged


def _file(unit: Unit) -> str:
    """The file that holds the unit at a commit: its params file, its file or `.dvc` file, or dvc.yaml."""
    return "dvc.yaml" if unit.kind == UnitKind.STAGE else unit.path


def _values(repo: Path, unit: Unit, commits: Sequence[str | None]) -> list[str]:
    """The unit's value at each commit as one comparable text (None: before a root commit, nothing there): a
    file's blob id, a params value's or stage definition's digest. One `git cat-file` reads them all.
    """
    wanted = [c for c in commits if c is not None]
    found = iter(_objects(repo, [f"{c}:{_file(unit)}" for c in wanted], contents=unit.kind in _PARSED))
    value = _READ[unit.kind]
    return [value(unit, None) if c is None else value(unit, next(found)) for c in commits]


def _objects(repo: Path, names: list[str], contents: bool) -> list[tuple[str, bytes] | None]:
    """Each named object's id and (with `contents`) bytes, None where the commit has no such file."""
    if not names:
        return []
    batch = "--batch" if contents else "--batch-check"
    out = git(repo, "cat-file", batch, stdin="".join(f"{name}\n" for name in names).encode()).stdout
    found: list[tuple[str, bytes] | None] = []
    at = 0
    for _ in names:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if header[-1] == b"missing":
            found.append(None)
            continue
        size = int(header[2]) if contents else 0
        found.append((header[0].decode(), out[at : at + size]) if header[1] == b"blob" else None)
        at += size + 1 if contents else 0
    return found


def _blob(_unit: Unit, found: tuple[str, bytes] | None) -> str:
    """A file's value: its blob id (equal contents, equal ids), ABSENT where the commit has no such file."""
    return found[0] if found else ABSENT


def _param(unit: Unit, found: tuple[str, bytes] | None) -> str:
    try:
        data = _yaml(found)
    except yaml.YAMLError:
        return _UNREADABLE
    return digest(_at(data, unit.keypath))


def _stage(unit: Unit, found: tuple[str, bytes] | None) -> str:
    """A stage's definition in dvc.yaml, as a snapshot reads it (a `foreach` stage's whole group)."""
    try:
        data = _yaml(found)
    except yaml.YAMLError:
        return _UNREADABLE
    stages = data.get("stages") if isinstance(data, dict) else None
    return digest(stages.get(unit.path.split("@")[0], ABSENT) if isinstance(stages, dict) else ABSENT)


_READ: dict[UnitKind, Callable[[Unit, tuple[str, bytes] | None], str]] = {
    UnitKind.PARAM: _param,
    UnitKind.FILE: _blob,
    UnitKind.DATA: _blob,
    UnitKind.STAGE: _stage,
}


def _yaml(found: tuple[str, bytes] | None) -> Any:
    """A params file or dvc.yaml as data ({} where the commit has none, as a snapshot reads a missing file)."""
    return (reading.load_yaml(found[1]) or {}) if found else {}


def _at(data: Any, keypath: tuple[Any, ...]) -> Any:
    """The value at `keypath`, or ABSENT (as `Snapshot.param` looks it up)."""
    node = data
    for part in keypath:
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _overlaid(bad: Reference, unit: Unit, committed: str) -> bool:
    """Whether BAD lays its value over its commit: a file BAD takes from elsewhere, or a params value or stage
    definition in such a file that differs from the commit's.
    """
    if _file(unit) not in {*bad.params, *bad.files}:
        return False
    return unit.kind in (UnitKind.FILE, UnitKind.DATA) or digest(unit.bad) != committed


def _origin(ref: Reference) -> str:
    """Where a value a reference lays over its commit comes from ("" for a plain commit)."""
    if ref.kind == WORKSPACE:
        return "uncommitted in the working tree"
    if ref.kind == "params-file":
        return f"from params file {ref.text}, laid over commit {ref.commit[:10]}"
    if ref.kind == "mlflow":
        return f"logged by MLflow run {ref.text}, whose recorded git commit is {ref.commit[:10]}"
    return ""
