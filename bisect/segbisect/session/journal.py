"""JSONL journal of a session: a header, then one line per finished hybrid, keyed by configuration fingerprint.

Appending a line only after a hybrid finishes means a killed session loses at most the hybrids in flight;
the next run of the same GOOD/BAD reads every journal under the results folder and reuses their results.
The header carries the journal's schema: a journal written by another version of segbisect is set aside
(renamed, never deleted) and its hybrids run again, rather than being misread. A hybrid reused from another
session's journal is copied in marked `reused` (and with the session it came from), so the journal also tells what
this session's own runs executed. Every line is checked as it is read: one that is not a record segbisect writes
(torn by a kill, hand-edited, foreign) is skipped with a warning naming it, and what it held runs again.

Its lines are typed records (`Header`, `HybridRecord`, `MlflowRecord`): each is written by its `to_record` and
read back, once checked, by its `of`; nothing outside this module sees a line's JSON object.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import NoneType
from typing import Any, ClassVar, TypeVar

from segbisect.core.attempt import NUMBER, OPTIONAL_RECORD_FIELDS, RECORD_FIELDS, Attempt, Field
from segbisect.core.hybrid import Hybrid

JOURNAL = "journal.jsonl"
SCHEMA = 2
UNVERSIONED = 1
# Marks a hybrid record copied from another session's journal, and names the session whose run computed it.
REUSED = "reused"
ORIGIN = "origin"
# Each record type's fields as segbisect writes them: required, then optional.
RECORDS: dict[str, tuple[dict[str, Field], dict[str, Field]]] = {
    "session": (
        {},
        {name: Field((str,)) for name in ("id", "session", "good", "bad")} | {"schema": Field((int,))},
    ),
    "hybrid": (
        {
            "fingerprint": Field((str,)),
            "attempts": Field((list,), (dict,)),
            "check": Field((str, NoneType)),
            "id": Field((str,)),
            "label": Field((str,)),
            "from_bad": Field((list,), (str,)),
            "sides": Field((dict,), (str,)),
        },
        {REUSED: Field((bool,)), ORIGIN: Field((str,))},
    ),
    "mlflow": ({"parent": Field((str,))}, {}),
}
KINDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
    NoneType: "null",
}


@dataclass(frozen=True, kw_only=True)
class Header:
    """The first line: the journal's schema (UNVERSIONED where a journal from before schemas has none), the
    session, the id of this journal (see `journal_id`) and the references as the user gave them.
    """

    KIND: ClassVar[str] = "session"
    schema: int = SCHEMA
    session: str = ""
    id: str = ""
    good: str = ""
    bad: str = ""

    def to_record(self) -> dict[str, Any]:
        fields = {"session": self.session, "id": self.id, "good": self.good, "bad": self.bad}
        return {"type": self.KIND, "schema": self.schema, **fields}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Header:
        fields = {name: record[name] for name in ("session", "id", "good", "bad") if name in record}
        return cls(schema=record.get("schema", UNVERSIONED), **fields)


@dataclass(frozen=True, kw_only=True)
class HybridRecord:
    """A finished hybrid: its configuration and attempts (the outcome is judged again on reuse). `reused`: copied
    from another session's journal, `origin` naming the session whose run computed it.
    """

    KIND: ClassVar[str] = "hybrid"
    id: str
    label: str
    fingerprint: str
    from_bad: tuple[str, ...]
    sides: dict[str, str]
    attempts: tuple[Attempt, ...]
    check: str | None
    reused: bool = False
    origin: str | None = None

    @classmethod
    def from_hybrid(cls, hybrid: Hybrid) -> HybridRecord:
        return cls(
            id=hybrid.id,
            label=hybrid.label,
            fingerprint=hybrid.fingerprint,
            from_bad=hybrid.from_bad,
            sides=hybrid.sides,
            attempts=hybrid.attempts,
            check=hybrid.check,
            reused=hybrid.reused,
            origin=hybrid.origin,
        )

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "type": self.KIND,
            "id": self.id,
            "label": self.label,
            "fingerprint": self.fingerprint,
            "from_bad": list(self.from_bad),
            "sides": self.sides,
            "attempts": [a.to_record() for a in self.attempts],
            "check": self.check,
        }
        if self.reused:
            record[REUSED] = True
            if self.origin is not None:
                record[ORIGIN] = self.origin
        return record

    @classmethod
    def of(cls, record: dict[str, Any]) -> HybridRecord:
        return cls(
            id=record["id"],
            label=record["label"],
            fingerprint=record["fingerprint"],
            from_bad=tuple(record["from_bad"]),
            sides=record["sides"],
            attempts=tuple(Attempt.from_record(a) for a in record["attempts"]),
            check=record["check"],
            reused=record.get(REUSED, False),
            origin=record.get(ORIGIN),
        )


@dataclass(frozen=True, kw_only=True)
class MlflowRecord:
    """The session's MLflow parent run, so that a session run again reopens it."""

    KIND: ClassVar[str] = "mlflow"
    parent: str

    def to_record(self) -> dict[str, Any]:
        return {"type": self.KIND, "parent": self.parent}

    @classmethod
    def of(cls, record: dict[str, Any]) -> MlflowRecord:
        return cls(parent=record["parent"])


Record = Header | HybridRecord | MlflowRecord
R = TypeVar("R", Header, HybridRecord, MlflowRecord)
PARSERS = {kind.KIND: kind.of for kind in (Header, HybridRecord, MlflowRecord)}


@dataclass(frozen=True)
class Known:
    """The finished hybrids of every current-schema journal under a results folder, by fingerprint, each one's
    records oldest first and marked with the session whose run computed it (`origin`); `skipped` says, one
    warning each, which lines were set aside.
    """

    hybrids: dict[str, list[HybridRecord]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class Journal:
    """Append-only log in `folder`; `fresh` discards what an earlier run of this session wrote."""

    def __init__(self, folder: Path, header: Header, fresh: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / JOURNAL
        self._lock = threading.Lock()
        self.set_aside: Path | None = None
        if fresh:
            self.path.unlink(missing_ok=True)
        schema = schema_of(self.path)
        if schema is not None and schema != SCHEMA:
            self.set_aside = self.path.rename(folder / f"journal.schema{schema}.jsonl")
        if not self.path.is_file():
            self.append(header)

    def records(self, kind: type[R]) -> list[R]:
        """The journal's valid records of one kind, oldest first."""
        return _records(_read(self.path), kind)

    def executed_here(self) -> frozenset[str]:
        """Fingerprints of the hybrids that runs of this session executed (not reused from another's journal)."""
        return frozenset(r.fingerprint for r in self.records(HybridRecord) if not r.reused)

    def append(self, record: Record) -> None:
        """One line, flushed to disk before returning; a line torn by an earlier kill is closed off first."""
        line = json.dumps(record.to_record(), default=str) + "\n"
        with self._lock, open(self.path, "a+b") as out:
            out.seek(0, 2)
            if out.tell():
                out.seek(-1, 2)
                if out.read(1) != b"\n":
                    line = "\n" + line
            out.write(line.encode())
            out.flush()
            os.fsync(out.fileno())


def journal_id(folder: Path, fresh: bool) -> str:
    """The id in the header of the journal that `Journal(folder, ..., fresh)` appends to: the existing one's, or a
    new one where that journal starts anew (`fresh`, none yet, or another schema's set aside). State a session keeps
    where it cannot remove it with the journal (a cluster node's folder) is named with it, so `--fresh` never finds it.
    """
    path = folder / JOURNAL
    if not fresh and schema_of(path) == SCHEMA:
        return next((h.id for h in _records(_read(path), Header)), "")
    return uuid.uuid4().hex[:12]


def schema_of(path: Path) -> int | None:
    """The schema a journal was written with (None when there is no journal)."""
    if not path.is_file():
        return None
    return next((h.schema for h in _records(_read(path), Header)), UNVERSIONED)


def known_hybrids(results_root: Path) -> Known:
    """What every current-schema session under `results_root` finished (journals by age, the latest last)."""
    known = Known()
    for path in sorted(results_root.glob(f"*/{JOURNAL}"), key=lambda p: p.stat().st_mtime):
        if schema_of(path) != SCHEMA:
            continue
        lines = _read(path)
        known.skipped.extend(lines.warnings(path))
        for record in _records(lines, HybridRecord):
            origin = record.origin or path.parent.name
            known.hybrids.setdefault(record.fingerprint, []).append(replace(record, origin=origin))
    return known


@dataclass(frozen=True)
class _Lines:
    """A journal's valid records; the numbers of the lines a kill cut short, and of the invalid records with what
    is wrong with them.
    """

    records: list[Record]
    torn: list[int]
    invalid: list[tuple[int, str]]

    def warnings(self, path: Path) -> list[str]:
        said = [f"{path}:{number}: invalid journal record, skipped ({problem})" for number, problem in self.invalid]
        if self.torn:
            numbers = f"line{'s' if len(self.torn) > 1 else ''} {', '.join(map(str, self.torn))}"
            said.append(f"{path}: skipped {len(self.torn)} line(s) not JSON, cut short by a kill or edited ({numbers})")
        return said


def _read(path: Path) -> _Lines:
    lines = _Lines([], [], [])
    if not path.is_file():
        return lines
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            lines.torn.append(number)
            continue
        problem = _problem(record)
        if problem:
            lines.invalid.append((number, problem))
        else:
            lines.records.append(PARSERS[record["type"]](record))
    return lines


def _records(lines: _Lines, kind: type[R]) -> list[R]:
    return [r for r in lines.records if isinstance(r, kind)]


def _problem(record: Any) -> str | None:
    """What makes `record` other than a record segbisect writes (None: nothing)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    kind = record.get("type")
    if kind not in RECORDS:
        return f"type: {_shown(kind)} is not one of {', '.join(RECORDS)}"
    problem = _fields(record, *RECORDS[kind])
    if problem or kind != "hybrid":
        return problem
    for number, attempt in enumerate(record["attempts"]):
        problem = _fields(attempt, RECORD_FIELDS, OPTIONAL_RECORD_FIELDS)
        if problem:
            return f"attempts[{number}].{problem}"
    return None


def _fields(record: dict[str, Any], required: dict[str, Field], optional: dict[str, Field]) -> str | None:
    missing = next((name for name in required if name not in record), None)
    if missing:
        return f"{missing}: missing"
    for name, spec in (required | optional).items():
        problem = _mismatch(record[name], spec) if name in record else None
        if problem:
            return f"{name}: {problem}"
    return None


def _mismatch(value: Any, spec: Field) -> str | None:
    if not _is(value, spec.types):
        return f"{_shown(value)} is not {_kind(spec.types)}"
    if spec.choices and value not in spec.choices:
        return f"{_shown(value)} is not one of {', '.join(spec.choices)}"
    elements = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    if spec.items and not all(_is(element, spec.items) for element in elements):
        return f"holds a value that is not {_kind(spec.items)}"
    return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """JSON's true and false are Python's bools, which are ints too: a number field must not take them."""
    if isinstance(value, bool) and bool not in types and object not in types:
        return False
    return isinstance(value, types)


def _kind(types: tuple[type, ...]) -> str:
    return " or ".join(KINDS.get(t, t.__name__) for t in types if not (t is int and set(NUMBER) <= set(types)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
