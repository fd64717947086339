"""A hybrid's job that raised instead of returning its attempts (segbisect's own code failing on this machine, a
worker's Python lacking what the task calls): an environment error, never evidence. Its reason names the exception
as the last line of a traceback does, type and message; the hybrid's log keeps the whole traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from segbisect.attempt import Attempt, AttemptStatus
from segbisect.executor import Job


def summary(exc: BaseException) -> str:
    """`Type: message`, on one line."""
    return " ".join("".join(traceback.format_exception_only(type(exc), exc)).split())


def failed(what: str, cause: str, trace: str, log: Path) -> tuple[Attempt, ...]:
    """One ERROR attempt, `what: cause`; `trace` goes to the end of the hybrid's `log`, after what its stages wrote."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n{what}:\n{trace.rstrip()}\n")
    reason = f"{what}: {cause} (traceback in {log.parent.name}/{log.name})"
    return (Attempt(status=AttemptStatus.ERROR, reason=reason),)


def guarded(run: Callable[[Job], tuple[Attempt, ...]], job: Job, log: Path) -> tuple[Attempt, ...]:
    """`run(job)`, or, where it raises, `failed` with its traceback. Ctrl-C (not an `Exception`) passes through."""
    try:
        return run(job)
    except Exception as exc:
        return failed("segbisect failed running the hybrid", summary(exc), traceback.format_exc(), log)
