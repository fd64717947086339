"""The seam between the search and the machines: submit a hybrid, receive its attempts when it finishes.

The search and the evaluator never learn where a hybrid ran or how its workspace was made; an executor owns
that (the local one makes git worktrees on this machine; a cluster executor would make them on its workers).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

from segbisect.attempt import Attempt, AttemptStatus
from segbisect.tracking import StageTracking
from segbisect.units import Unit


@dataclass(frozen=True, kw_only=True)
class Job:
    """One hybrid to run: GOOD with `units` taken from BAD, attempted `repeat` times; an attempt the environment
    failed is tried again up to `retries` times. `fingerprint` names the configuration across sessions. `tracking`,
    read as the job starts, says whether its stages log to MLflow (None: as the session's stage environment says).
    """

    hybrid_id: str
    fingerprint: str
    units: tuple[Unit, ...]
    repeat: int
    retries: int = 1
    tracking: StageTracking | None = None

    def stage_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The session's stage environment `env` as this job's stages, starting now, get it."""
        return dict(env) if self.tracking is None else self.tracking.stage_env(env, self.hybrid_id)


class Executor(Protocol):
    """Runs jobs concurrently, as many as it can; `stop` ends them all at once (Ctrl-C), `close` waits for them."""

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def environment(self) -> dict[str, Any]:
        """The numeric environment its hybrids run in, as their attempts record it (`machine.describe` where they
        run), against which a journaled hybrid's is compared before it is reused.
        """
        ...


class Tracked:
    """An `Executor` whose jobs follow the session's `tracking` as they start, and that runs a hybrid again,
    untracked, when the environment failed it while the store failed under its stages: a store that dies
    mid-bisection changes which runs are logged, never an outcome.
    """

    def __init__(self, executor: Executor, tracking: StageTracking) -> None:
        self.executor, self.tracking = executor, tracking

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]:
        job = replace(job, tracking=self.tracking)
        out: Future[tuple[Attempt, ...]] = Future()
        self.executor.submit(job).add_done_callback(lambda done: self._settle(job, done, out))
        return out

    def stop(self) -> None:
        self.executor.stop()

    def close(self) -> None:
        self.executor.close()

    def environment(self) -> dict[str, Any]:
        return self.executor.environment()

    def _settle(self, job: Job, done: Future[tuple[Attempt, ...]], out: Future[tuple[Attempt, ...]]) -> None:
        """Hand on the job's attempts, or run it once more when the store, not the hybrid, made them fail."""
        try:
            attempts = done.result()
            if attempts[-1].status == AttemptStatus.ERROR and self.tracking.store_failed(job.hybrid_id):
                self.executor.submit(job).add_done_callback(lambda again: _pass_on(again, out))
                return
        except BaseException as exc:  # cancelled, or the executor failed: the caller sees it as it would
            out.set_exception(exc)
            return
        out.set_result(attempts)


def _pass_on(done: Future[tuple[Attempt, ...]], out: Future[tuple[Attempt, ...]]) -> None:
    try:
        out.set_result(done.result())
    except BaseException as exc:
        out.set_exception(exc)
