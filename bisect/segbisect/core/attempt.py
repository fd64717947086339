"""One execution of a hybrid: what DVC did, the metrics it left, and the machine it ran on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import NoneType
from typing import Any

from segbisect.core import machine


class AttemptStatus(StrEnum):
    """OK: `dvc repro` succeeded (the metrics may still be missing); CRASH: a stage failed through its own code
    (untestable, like `git bisect`'s skip); ERROR: the environment failed (a signal, a stage's exit 75, a full
    disk, the time limit), which says nothing about the configuration.
    """

    OK = "ok"
    CRASH = "crash"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class AttemptPolicy:
    """How a hybrid is attempted, from the command line to the runner as one record: `repeat` attempts while each
    succeeds (repeats that disagree make it FLAKY), each tried again up to `retries` more times while the environment
    fails it, each ended past `timeout` seconds (None: no limit) as an environment error.
    """

    repeat: int = 1
    retries: int = 1
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """`metrics` holds every readable metrics file (flattened) by path; `unread` says why the others are not;
    `figures` maps each declared plot image to where it was kept (see figures.py); `placement` says where a
    cluster executor ran it (node, seconds spent fetching, running and pushing, where restored stages came from);
    `stage_seconds` how long each executed stage took (see `dvc_run.Events`), the rest of `seconds` being overhead;
    `started` when it began (Unix time; None for an attempt that never ran), so the record shows which hybrids ran
    at once.
    """

    status: AttemptStatus
    executed: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)
    diagnostics: Any = None
    figures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    started: float | None = None
    reason: str = ""
    check_rc: int | None = None
    machine: dict[str, Any] = field(default_factory=machine.describe)
    placement: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Attempt:
        """From a record `journal` has checked against `RECORD_FIELDS`."""
        return cls(
            status=AttemptStatus(record["status"]),
            executed=tuple(record["executed"]),
            restored=tuple(record["restored"]),
            stage_seconds=record.get("stage_seconds", {}),
            metrics=record["metrics"],
            unread=record["unread"],
            diagnostics=record["diagnostics"],
            figures=record.get("figures", {}),
            seconds=record["seconds"],
            started=record.get("started"),
            reason=record["reason"],
            check_rc=record["check_rc"],
            machine=record["machine"],
            placement=record.get("placement", {}),
        )


@dataclass(frozen=True)
class Field:
    """The JSON types of a record's field (`items`: of a list's elements or a mapping's values; `choices`: the
    strings allowed), so that a record segbisect did not write is told apart before anything relies on it.
    """

    types: tuple[type, ...]
    items: tuple[type, ...] = ()
    choices: tuple[str, ...] = ()


NUMBER = (int, float)
# An attempt's record as `to_record` writes it and JSON gives it back: required fields, then those that earlier
# versions of the same journal schema did not write.
RECORD_FIELDS = {
    "status": Field((str,), choices=tuple(AttemptStatus)),
    "executed": Field((list,), (str,)),
    "restored": Field((list,), (str,)),
    "metrics": Field((dict,), (dict,)),
    "unread": Field((dict,), (str,)),
    "diagnostics": Field((object,)),
    "seconds": Field(NUMBER),
    "reason": Field((str,)),
    "check_rc": Field((int, NoneType)),
    "machine": Field((dict,)),
}
OPTIONAL_RECORD_FIELDS = {
    "stage_seconds": Field((dict,), NUMBER),
    "figures": Field((dict,), (str,)),
    "started": Field((*NUMBER, NoneType)),
    "placement": Field((dict,)),
}
