"""The seam between the search and the machines: submit a hybrid, receive its attempts when it finishes.

The search and the evaluator never learn where a hybrid ran or how its workspace was made; an executor owns
that (the local one makes git worktrees on this machine; a cluster executor would make them on its workers).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from segbisect.attempt import Attempt
from segbisect.units import Unit


@dataclass(frozen=True, kw_only=True)
class Job:
    """One hybrid to run: GOOD with `units` taken from BAD, attempted `repeat` times; an attempt the environment
    failed is tried again up to `retries` times. `fingerprint` names the configuration across sessions.
    """

    hybrid_id: str
    fingerprint: str
    units: tuple[Unit, ...]
    repeat: int
    retries: int = 1


class Executor(Protocol):
    """Runs jobs concurrently, as many as it can; `stop` ends them all at once (Ctrl-C), `close` waits for them."""

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...
