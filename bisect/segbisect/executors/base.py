"""The seam between the search and the machines: submit a hybrid, receive its attempts when it finishes.

The search and the evaluator never learn where a hybrid ran or how its workspace was made; an executor owns
that (the local one makes git worktrees on this machine; a cluster executor would make them on its workers).

A job that raises instead of returning its attempts (segbisect's own code failing on this machine, a worker's
Python lacking what the task calls) is an environment error, never evidence (`guarded`, `failed`): its reason
names the exception as the last line of a traceback does, type and message; the hybrid's log keeps the traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from segbisect.core.attempt import Attempt, AttemptPolicy, AttemptStatus
from segbisect.core.units import Unit
from segbisect.project.gateway import Dvc
from segbisect.project.runner import Task
from segbisect.project.snapshot import Snapshot
from segbisect.project.workspace import Workspaces
from segbisect.tracking.switch import StageTracking


@dataclass(frozen=True, kw_only=True)
class Job:
    """One hybrid to run: GOOD with `units` taken from BAD, attempted as `policy` says. `fingerprint` names the
    configuration across sessions. `tracking`, read as the job starts, says whether its stages log to MLflow (None:
    as the session's stage environment says).
    """

    hybrid_id: str
    fingerprint: str
    units: tuple[Unit, ...]
    policy: AttemptPolicy
    tracking: StageTracking | None = None

    def stage_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The session's stage environment `env` as this job's stages, starting now, get it."""
        return dict(env) if self.tracking is None else self.tracking.stage_env(env, self.hybrid_id)


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """For `--executor ray`: `address` (None: Ray's own rule, RAY_ADDRESS else a local instance), `remote` (None:
    the repository's default DVC remote) and the Ray resources one hybrid asks for.
    """

    address: str | None = None
    remote: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Preflight:
    """What an executor may check before anything runs (a cluster that cannot take a hybrid is reported before a
    reference is even resolved): the repository, the cluster's options, the MLflow store the stages log to.
    """

    repo: Path
    cluster: ClusterOptions
    tracking: str | None


@dataclass(frozen=True, kw_only=True)
class ExecutorContext:
    """What every executor is built from, one record for all of them (each takes what it uses): both sides'
    snapshots, the session's task and results `folder` (hybrids' logs and kept figures go under it), how many hybrids
    at once, the worktrees and DVC of this machine, and the cluster's options with what its preflight found.
    """

    good: Snapshot
    bad: Snapshot
    task: Task
    folder: Path
    jobs: int
    workspaces: Workspaces
    dvc: Dvc
    cluster: ClusterOptions
    checked: Mapping[str, str]

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def figures_root(self) -> Path:
        return self.folder / "figures"


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
