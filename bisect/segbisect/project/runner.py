"""Run `dvc repro` (and an optional `--run` check) in a workspace and read what happened.

DVC runs under `segbisect.project.dvc_run`, which reports the stages it executed or restored and the errors it raised as
structured events, so cache reuse is measured rather than assumed and no console text is parsed. The session's DVC
gateway starts each DVC command (see `gateway`); `Processes` keeps track of it as of every other process it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from segbisect.core.attempt import Attempt, AttemptPolicy, AttemptStatus
from segbisect.project import metrics as metrics_files
from segbisect.project.dvc_run import Events, remove_temporaries, running_file, temporaries_file
from segbisect.project.gateway import DIRECT, Command, Dvc, Started

OWN_WORDS = 300
GRACE_SECONDS = 5.0
WAIT_SLICE = 0.5
# Exit status a stage uses for a fault of its environment (sysexits' EX_TEMPFAIL), distinct from its own `error:` 2.
EXIT_ENVIRONMENT = 75
SHELL_SIGNAL_BASE = 128
# segbisect's DVC commands are its own, not the user's: unless told not to, DVC ends each one by starting a detached
# interpreter that imports DVC to send a usage report, about 0.8 s of CPU beside the stages per command.
OWN_DVC_ENV = {"DVC_NO_ANALYTICS": "1"}
_SIGNALS = frozenset(int(number) for number in signal.valid_signals())
# Names, in every hybrid's stage environment, a folder of the session's that outlives the hybrid's workspace: a stage
# keeps there what a later run of the session may resume, such as a training's backup of its last finished epoch.
STATE_VARIABLE = "SEGBISECT_STATE_DIR"


class TimedOut(Exception):
    """A process outlived its hybrid's `--timeout`; its process group was ended."""


class Processes:
    """Child process groups of this session, so Ctrl-C, a crash or a later session can stop them all.

    Each group's id is also a file in `registry` while it runs: a session killed with SIGKILL cannot stop its
    stages, so the next session reads the registry of the dead one and ends them (see `workspace.remove_stale`).
    `dvc`: the session's DVC gateway, which starts its DVC commands.
    """

    def __init__(self, registry: Path | None = None, dvc: Dvc = DIRECT) -> None:
        self._procs: set[Started] = set()
        self._lock = threading.Lock()
        self.stopping = False
        self.registry = registry
        if registry:
            registry.mkdir(parents=True, exist_ok=True)
        self._gateway = dvc

    def run(self, args: list[str], cwd: Path, env: dict[str, str], log: Path, deadline: float | None = None) -> int:
        """Run `args` in a process group of its own; past `deadline` (monotonic) the group ends and TimedOut."""

        def start() -> Started:
            with open(log, "ab") as out:
                return subprocess.Popen(
                    args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )

        return self._run(start, cwd, deadline)

    def dvc(
        self, events_file: Path, args: list[str], cwd: Path, env: dict[str, str], log: Path, deadline: float | None
    ) -> int:
        """A DVC command under the events driver, as the gateway starts it (forked, or in a fresh interpreter)."""
        command = Command(events_file, args, cwd, {**env, **OWN_DVC_ENV}, log)
        return self._run(lambda: self._gateway.start(command), cwd, deadline)

    def close(self) -> None:
        """Close the DVC gateway: its fork server, if any, ends after the commands it forked have ended."""
        self._gateway.close()

    def _run(self, start: Callable[[], Started], cwd: Path, deadline: float | None) -> int:
        with self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = start()
            self._procs.add(proc)
            marker = self.registry / str(proc.pid) if self.registry else None
            if marker:
                marker.write_text(str(cwd), encoding="utf-8")
        try:
            return _wait(proc, deadline)
        except BaseException:
            _end(proc)  # past its time, or interrupted (Ctrl-C, a cancelled cluster task): its group goes too
            raise
        finally:
            with self._lock:
                self._procs.discard(proc)
            if marker:
                marker.unlink(missing_ok=True)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)


def _wait(proc: Started, deadline: float | None) -> int:
    """The exit status, or TimedOut past `deadline`. Waits in short slices, so an interruption (Ctrl-C, or a
    cluster task being cancelled) reaches this thread while a stage runs.
    """
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimedOut
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=WAIT_SLICE if left is None else min(WAIT_SLICE, left))


def _end(proc: Started) -> None:
    """SIGTERM to the whole group, SIGKILL if it is still there after a grace period."""
    for sig, grace in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


@dataclass(frozen=True, kw_only=True)
class Task:
    """What every attempt of a session needs besides its workspace and log. `state` names the folder, one per
    session and journal, where stages keep what must outlive a hybrid's workspace (`STATE_VARIABLE`): the local
    executor's is in the results folder (set in `env`), a cluster worker keeps one of that name on its own node.
    """

    env: dict[str, str]
    metrics_files: tuple[str, ...]
    check: str | None = None
    diagnostics: str | None = None
    data_sources: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    repro_args: tuple[str, ...] = ()
    state: str = ""


@dataclass(frozen=True, kw_only=True)
class Site:
    """Where one hybrid's attempts run: the session's processes, the hybrid's workspace and log, the session's
    task, and the environment the hybrid's stages get.
    """

    procs: Processes
    workspace: Path
    log: Path
    task: Task
    env: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class WorktreeHints:
    """What the executor knows of the worktree that spares DVC work: `lock_stages` (DVC targets; in a new
    worktree, the stages the hybrid takes as its commit has them), whose outputs are checked out from the commit's
    dvc.lock before the first attempt.
    """

    lock_stages: tuple[str, ...] = ()


def attempts(site: Site, policy: AttemptPolicy, hints: WorktreeHints | None = None) -> list[Attempt]:
    """A hybrid's attempts: `policy.repeat` of them, each forcing the stages the first one executed (the check runs
    every time), and each tried again while the environment fails it (at most `policy.retries` more times). `hints`:
    see `attempt` (the first attempt's).
    """

    def tried(force: tuple[str, ...] = (), lock: Sequence[str] = ()) -> Attempt:
        result = attempt(site, policy.timeout, force, lock)
        for _ in range(policy.retries):
            if result.status != AttemptStatus.ERROR:
                break
            result = attempt(site, policy.timeout, force, lock)
        return result

    first = tried(lock=hints.lock_stages if hints else ())
    done = [first]
    while len(done) < policy.repeat and first.status == AttemptStatus.OK:
        done.append(tried(first.executed))
    return done


def attempt(
    site: Site, timeout: float | None = None, force: Sequence[str] = (), lock_stages: Sequence[str] = ()
) -> Attempt:
    """`dvc repro` in the site's workspace (forcing `force` stages when repeating), then read metrics and run the
    check, all ended past `timeout` seconds.

    DVC-tracked data (`.dvc` files) is checked out from the shared cache first: a fresh worktree lacks it. The
    outputs of `lock_stages` (see `WorktreeHints`) are checked out from the commit's dvc.lock first, in one command:
    those stages are then skipped in place as unchanged, instead of restored one by one through the run-cache with a
    lock file rewrite each (about 0.5 s on the tiny pipeline). What the cache lacks, and any failure of that
    checkout, is left to `dvc repro`: it only saves work.
    """
    start, started = time.monotonic(), round(time.time(), 3)
    deadline = None if timeout is None else start + timeout
    try:
        done = _attempt(site, force, deadline, lock_stages)
    except TimedOut:
        done = Attempt(
            status=AttemptStatus.ERROR,
            reason=f"hybrid past its time limit (--timeout {timeout:g} s): its processes were ended",
            seconds=round(time.monotonic() - start, 2),
        )
    return replace(done, started=started)


def _attempt(site: Site, force: Sequence[str], deadline: float | None, lock_stages: Sequence[str]) -> Attempt:
    start = time.monotonic()
    workspace, task = site.workspace, site.task
    if lock_stages:
        _dvc(site, ["checkout", "--quiet", "--allow-missing", *lock_stages], deadline)
    present = [d for d in task.data_sources if (workspace / d).is_file()]
    events = Events()
    if present:
        # Not --quiet: that silences DVC's logger, and with it the error that says why the checkout failed.
        events = _dvc(site, ["checkout", *present], deadline)
    if events.rc == 0:
        repro = ["repro", *task.repro_args]
        if force:
            repro += ["--force", "--single-item", *force]
        events = _dvc(site, repro, deadline)
    if events.rc != 0:
        return Attempt(
            status=failed_status(events),
            executed=tuple(events.executed),
            restored=tuple(events.restored),
            stage_seconds=events.stage_seconds,
            reason=_failure(events, site.log),
            seconds=round(time.monotonic() - start, 2),
        )
    found, unread = metrics_files.read_all(workspace, task.metrics_files)
    check_rc = None
    if task.check:
        check_rc = site.procs.run(["bash", "-c", task.check], workspace, site.env, site.log, deadline)
    return Attempt(
        status=AttemptStatus.OK,
        executed=tuple(events.executed),
        restored=tuple(events.restored),
        stage_seconds=events.stage_seconds,
        metrics=found,
        unread=unread,
        diagnostics=metrics_files.read_json(workspace / task.diagnostics) if task.diagnostics else None,
        check_rc=check_rc,
        seconds=round(time.monotonic() - start, 2),
    )


def _dvc(site: Site, args: list[str], deadline: float | None) -> Events:
    """One DVC command under the events driver; a driver that died unreported gets its exit status alone.

    The events file sits beside the log, in the results folder: a full disk under the worktree cannot lose it. The
    temporary files a driver listed and left (it was killed mid-transfer) go once it has ended, however it ended.
    """
    events_file = _events_file(site.log)
    try:
        rc = site.procs.dvc(events_file, args, site.workspace, site.env, site.log, deadline)
        events = Events.read(events_file)
    finally:
        events_file.unlink(missing_ok=True)
        running_file(events_file).unlink(missing_ok=True)
        remove_temporaries(temporaries_file(events_file))
    if events is None:
        why = f"dvc {args[0]} ended without a report ({describe_exit(rc)})"
        return Events(rc=rc, environment="dvc died", errors=[why])
    return events


def _events_file(log: Path) -> Path:
    return log.with_name(f".{log.stem}.events.json")


def running_stage(log: Path) -> str | None:
    """The stage the hybrid logging to `log` is running now (None between stages or when none runs)."""
    try:
        return running_file(_events_file(log)).read_text(encoding="utf-8") or None
    except OSError:
        return None


def failed_status(events: Events) -> AttemptStatus:
    """CRASH (a skip) only for the hybrid's own failure: a stage's command exiting non-zero by itself, or DVC
    rejecting the hybrid's configuration. ERROR for everything else: a signal, a stage's exit 75, the machine (a
    full disk), and DVC failing in any other way (its own errors, a missing cache object, no word at all).
    """
    status = events.command_status
    if events.environment or events.rc < 0:
        return AttemptStatus.ERROR
    if status is not None:
        killed = status < 0 or status - SHELL_SIGNAL_BASE in _SIGNALS
        return AttemptStatus.ERROR if killed or status == EXIT_ENVIRONMENT else AttemptStatus.CRASH
    return AttemptStatus.CRASH if events.configuration else AttemptStatus.ERROR


def describe_exit(rc: int) -> str:
    """A negative status is a signal; a shell reports a signalled child as 128 + the signal's number."""
    if rc < 0:
        return f"killed by signal {-rc}"
    if rc - SHELL_SIGNAL_BASE in _SIGNALS:
        return f"killed by signal {rc - SHELL_SIGNAL_BASE} (exit {rc})"
    return f"exit {rc}"


def _failure(events: Events, log: Path) -> str:
    """Why the run failed: the failing stage's own last words when its command failed, else DVC's errors."""
    if events.command_status is not None and events.executed:
        own = _last_words(log, events) or "; ".join(events.errors)
        return f"stage '{events.executed[-1]}' failed ({describe_exit(events.command_status)}): {own}"
    fault = f"{events.environment}: " if events.environment else ""
    return f"dvc failed ({describe_exit(events.rc)}): {fault}{'; '.join(events.errors) or 'no error message'}"


def _last_words(log: Path, events: Events) -> str:
    """The last line the failing stage printed itself (after DVC's echo of its command)."""
    with open(log, "rb") as handle:
        handle.seek(events.output_from)
        size = None if events.output_to is None else max(events.output_to - events.output_from, 0)
        output = handle.read(size).decode(errors="replace") if size is None or size else ""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if lines and lines[0].startswith("> "):
        lines = lines[1:]
    return lines[-1][:OWN_WORDS] if lines else ""
