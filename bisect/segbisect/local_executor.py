"""The local executor: hybrids run on this machine, `jobs` at a time, in worktrees sharing the user's DVC cache."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from segbisect import figures, runner
from segbisect.attempt import Attempt, AttemptStatus
from segbisect.executor import Job
from segbisect.forked import ForkServer
from segbisect.materialize import materialize
from segbisect.runner import Processes, Task
from segbisect.snapshot import Snapshot
from segbisect.workspace import PROCESSES, Workspaces


class LocalExecutor:
    """An `Executor` over a thread pool. A repeat re-runs (forced) the stages the first attempt executed and the
    check every time, restored stages or not. DVC commands fork from `dvc_server` when given (see `forked`).
    """

    def __init__(
        self,
        *,
        workspaces: Workspaces,
        good: Snapshot,
        bad: Snapshot,
        task: Task,
        logs: Path,
        figures_root: Path,
        jobs: int,
        dvc_server: ForkServer | None = None,
    ) -> None:
        self.workspaces, self.good, self.bad, self.task, self.logs = workspaces, good, bad, task, logs
        self.figures_root = figures_root
        self._procs = Processes(workspaces.root / PROCESSES, dvc_server)
        self._pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="segbisect-hybrid")
        stages = [stage for snap in (good, bad) for stage in snap.stages]
        self._outs = sorted({out for stage in stages for out in stage.outs})
        self._locks = sorted({stage.lock_file for stage in stages})

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]:
        return self._pool.submit(self._run, job)

    def stop(self) -> None:
        self._procs.stop_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._procs.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._procs.close()

    def _run(self, job: Job) -> tuple[Attempt, ...]:
        workspace, new = self.workspaces.acquire(job.hybrid_id, self.good.ref.commit, self._outs, self._locks)
        try:
            materialize(workspace, self.good, self.bad, list(job.units))
            env = {**self.task.env, "SEGBISECT_HYBRID": job.hybrid_id}
            log = self.logs / f"{job.hybrid_id}.log"
            lock_stages = self._unchanged_stages(job) if new else ()
            attempts = runner.attempts(
                self._procs, workspace, log, self.task, env, job.repeat, job.retries, lock_stages=lock_stages
            )
            last = attempts[-1]
            if last.status == AttemptStatus.OK and self.task.plots:
                kept = figures.keep(workspace, self.task.plots, figures.folder(self.figures_root, job.fingerprint))
                attempts[-1] = replace(last, figures=kept)
            return tuple(attempts)
        finally:
            self.workspaces.release(workspace)

    def _unchanged_stages(self, job: Job) -> tuple[str, ...]:
        """The stages before the first one the hybrid changes (pipeline order), whose outputs a new worktree can
        check out from GOOD's dvc.lock: none of them is downstream of a change, so nothing is copied only to be
        replaced. Nothing when GOOD is a params overlay: its commit's lock describes other params.
        """
        if self.good.ref.params:
            return ()
        order = [stage.name for stage in self.good.stages]
        changed = {stage for unit in job.units for stage in unit.stages}
        return tuple(order[: min((order.index(stage) for stage in changed), default=len(order))])
