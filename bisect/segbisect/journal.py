"""JSONL journal of a session: a header, then one line per finished hybrid, keyed by configuration fingerprint.

Appending a line only after a hybrid finishes means a killed session loses at most the hybrids in flight;
the next run of the same GOOD/BAD reads every journal under the results folder and reuses their results.
The header carries the journal's schema: a journal written by another version of segbisect is set aside
(renamed, never deleted) and its hybrids run again, rather than being misread. A hybrid reused from another
session's journal is copied in marked `reused`, so the journal also tells what this session's own runs executed.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"
SCHEMA = 2
UNVERSIONED = 1
# Marks a hybrid record copied from another session's journal.
REUSED = "reused"


class Journal:
    """Append-only log in `folder`; `fresh` discards what an earlier run of this session wrote."""

    def __init__(self, folder: Path, header: dict[str, Any], fresh: bool = False) -> None:
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
            self.append({"type": "session", "schema": SCHEMA, **header})

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in _read(self.path) if kind is None or r.get("type") == kind]

    def executed_here(self) -> frozenset[str]:
        """Fingerprints of the hybrids that runs of this session executed (not reused from another's journal)."""
        return frozenset(r["fingerprint"] for r in self.records("hybrid") if not r.get(REUSED))

    def torn(self) -> int:
        """How many lines a kill cut short (skipped when reading)."""
        return _read_counting(self.path)[1]

    def append(self, record: dict[str, Any]) -> None:
        """One line, flushed to disk before returning; a line torn by an earlier kill is closed off first."""
        line = json.dumps(record, default=str) + "\n"
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
        header = next((r for r in _read(path) if r.get("type") == "session"), {})
        return str(header.get("id", ""))
    return uuid.uuid4().hex[:12]


def schema_of(path: Path) -> int | None:
    """The schema a journal was written with (None when there is no journal)."""
    if not path.is_file():
        return None
    header = next((r for r in _read(path) if r.get("type") == "session"), {})
    return int(header.get("schema", UNVERSIONED))


def known_hybrids(results_root: Path) -> dict[str, dict[str, Any]]:
    """Finished hybrids of every current-schema session under `results_root`, by fingerprint (latest wins)."""
    known: dict[str, dict[str, Any]] = {}
    for path in sorted(results_root.glob(f"*/{JOURNAL}"), key=lambda p: p.stat().st_mtime):
        if schema_of(path) != SCHEMA:
            continue
        for record in _read(path):
            if record.get("type") == "hybrid":
                known[record["fingerprint"]] = record
    return known


def _read(path: Path) -> list[dict[str, Any]]:
    return _read_counting(path)[0]


def _read_counting(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records, and how many lines were cut short by a kill (skipped)."""
    if not path.is_file():
        return [], 0
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            torn += 1
    return records, torn
