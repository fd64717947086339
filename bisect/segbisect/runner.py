"""Run `dvc repro` (and an optional `--run` check) in a workspace and read what happened.

DVC runs under `segbisect.dvc_run`, which reports the stages it executed or restored and the errors it raised as
structured events, so cache reuse is measured rather than assumed and no console text is parsed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segbisect import metrics as metrics_files
from segbisect.attempt import Attempt, AttemptStatus
from segbisect.dvc_run import Events

OWN_WORDS = 300


class Processes:
    """Child process groups of this session, so Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
        with open(log, "ab") as out, self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)


@dataclass(frozen=True, kw_only=True)
class Task:
    """What every attempt of a session needs besides its workspace and log."""

    env: dict[str, str]
    metrics_files: tuple[str, ...]
    check: str | None = None
    diagnostics: str | None = None
    data_sources: tuple[str, ...] = ()


def attempt(
    procs: Processes, workspace: Path, log: Path, task: Task, env: dict[str, str], force: Sequence[str] = ()
) -> Attempt:
    """`dvc repro` in `workspace` (forcing `force` stages when repeating), then read metrics and run the check.

    DVC-tracked data (`.dvc` files) is checked out from the shared cache first: a fresh worktree lacks it.
    """
    start = time.monotonic()
    present = [d for d in task.data_sources if (workspace / d).is_file()]
    events = _dvc(procs, workspace, env, log, ["checkout", "--quiet", *present]) if present else Events()
    if events.rc == 0:
        events = _dvc(procs, workspace, env, log, ["repro", *(["--force", "--single-item", *force] if force else [])])
    if events.rc != 0:
        return Attempt(
            status=AttemptStatus.CRASH,
            executed=tuple(events.executed),
            restored=tuple(events.restored),
            reason=_failure(events, log),
            seconds=round(time.monotonic() - start, 2),
        )
    found, unread = metrics_files.read_all(workspace, task.metrics_files)
    check_rc = procs.run(["bash", "-c", task.check], workspace, env, log) if task.check else None
    return Attempt(
        status=AttemptStatus.OK,
        executed=tuple(events.executed),
        restored=tuple(events.restored),
        metrics=found,
        unread=unread,
        diagnostics=metrics_files.read_json(workspace / task.diagnostics) if task.diagnostics else None,
        check_rc=check_rc,
        seconds=round(time.monotonic() - start, 2),
    )


def _dvc(procs: Processes, workspace: Path, env: dict[str, str], log: Path, args: list[str]) -> Events:
    """One DVC command under the events driver; a driver that died unreported gets its exit status alone."""
    with tempfile.TemporaryDirectory(prefix="segbisect-events-") as tmp:
        events_file = Path(tmp) / "events.json"
        rc = procs.run([sys.executable, "-m", "segbisect.dvc_run", str(events_file), "--", *args], workspace, env, log)
        events = Events.read(events_file)
    if events is None:
        return Events(rc=rc, errors=[f"dvc {args[0]} ended without a report ({_status(rc)})"])
    return events


def _status(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"


def _failure(events: Events, log: Path) -> str:
    """Why the run failed: the failing stage's own last words when its command failed, else DVC's errors."""
    if events.command_failed and events.executed:
        own = _last_words(log, events) or "; ".join(events.errors)
        return f"stage '{events.executed[-1]}' failed ({_status(events.rc)}): {own}"
    return f"dvc failed ({_status(events.rc)}): {'; '.join(events.errors) or 'no error message'}"


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
