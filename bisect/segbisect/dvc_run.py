"""`python -m segbisect.dvc_run EVENTS -- ARGS...`: DVC's command line, plus a JSON account of what it did.

DVC tells which stages it ran, which it restored and why it failed only through its logger. This driver runs
DVC's own `main` in-process and listens to the log records themselves (DVC's message templates and their
arguments, not the formatted console text) and to the exceptions DVC logs, then writes them to EVENTS. The
output DVC and the stages print is unchanged. The templates below are DVC's own: a test pins them against the
installed DVC.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RAN = "Running stage '%s':"
RESTORED = ("Stage '%s' is cached - skipping run, checking out outputs", "Stage '%s' didn't change, skipping")
# `repro --pull`: an unchanged stage whose outputs are missing here is pulled from the remote, unless it cannot be
# (then it runs). The argument is the Stage itself.
PULLED, NOT_PULLED = "Pulling data for %s", "Unable to pull data for %s"
# How DVC's StageCmdFailedError states the command's exit status (it keeps no attribute for it).
EXITED = re.compile(r", exited with (-?\d+)$")
# Failures of the machine rather than of the project: full or read-only disks, exhausted memory, dead networks.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
}


@dataclass
class Events:
    """What one DVC command did: stages in order, DVC's error messages (outermost first) and its exit status.

    `command_status` is the exit status of a stage's command that failed (None when DVC failed around it);
    `environment` names a fault of the machine (full disk, lost lock, no memory) that DVC itself ran into.
    `output_from`/`output_to` are byte offsets in the log (stdout) around the last executed stage's own output.
    `stage_seconds`: each executed stage's wall time, from DVC announcing it to DVC's next news of a stage (or an
    error, or the command's end), so its command and DVC saving its outputs: what the hybrid spent computing
    rather than on segbisect's and DVC's bookkeeping around it.
    """

    executed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    output_from: int = 0
    output_to: int | None = None
    command_status: int | None = None
    environment: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rc: int = 0

    @classmethod
    def read(cls, path: Path) -> Events | None:
        """The events a driver wrote, or None when it died before writing them (killed, out of memory)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class _Listener(logging.Handler):
    def __init__(self, events: Events, running: Path) -> None:
        super().__init__(logging.DEBUG)
        self.events, self.running = events, running
        self._started: tuple[str, float] | None = None

    def stage_ended(self) -> None:
        """The stage running until now (if any) is done: record its seconds."""
        if self._started is not None:
            name, since = self._started
            seconds = self.events.stage_seconds.get(name, 0.0) + time.monotonic() - since
            self.events.stage_seconds[name] = round(seconds, 2)
            self._started = None

    def emit(self, record: logging.LogRecord) -> None:
        name = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        if record.msg in (RAN, *RESTORED, PULLED, NOT_PULLED) or record.levelno >= logging.ERROR:
            self.stage_ended()
        if record.msg == RAN:
            self._started = (name, time.monotonic())
            self.events.executed.append(name)
            with contextlib.suppress(OSError):
                self.running.write_text(name)
            self.events.output_from, self.events.output_to = _offset(), None
        elif record.msg in RESTORED:
            self.events.restored.append(name)
        elif record.msg in (PULLED, NOT_PULLED):
            stage = getattr(record.args[0], "addressing", name) if isinstance(record.args, tuple) else name
            if record.msg == PULLED:
                self.events.restored.append(stage)
            elif stage in self.events.restored:
                self.events.restored.remove(stage)
        elif record.levelno >= logging.ERROR:
            if self.events.output_to is None:
                self.events.output_to = _offset()
            self.events.errors.extend(_messages(record))
            _classify(record, self.events)


def running_file(events_file: Path) -> Path:
    """Where the driver keeps the name of the stage it is running, for a live progress display."""
    return events_file.with_name(events_file.name + ".running")


def _offset() -> int:
    """Where stdout (the log file) stands now, after what this process buffered."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return os.lseek(sys.stdout.fileno(), 0, os.SEEK_END)
    except (OSError, ValueError):
        return 0


def _messages(record: logging.LogRecord) -> list[str]:
    """The record's message and every exception in the chain it carries, outermost first."""
    found = [record.getMessage()]
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        found.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return [m for m in dict.fromkeys(found) if m.strip()]


def _classify(record: logging.LogRecord, events: Events) -> None:
    """Note a stage command's exit status, or a fault of the environment, among the exceptions DVC logged."""
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageCmdFailedError

    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        if isinstance(exc, StageCmdFailedError) and (found := EXITED.search(str(exc))):
            events.command_status = int(found.group(1))
        elif isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            events.environment = events.environment or ENVIRONMENT_ERRNOS[exc.errno]
        elif isinstance(exc, MemoryError):
            events.environment = events.environment or "out of memory"
        elif isinstance(exc, LockError):
            events.environment = events.environment or "DVC lock held by another process"
        exc = exc.__cause__ or exc.__context__


def main(argv: list[str]) -> int:
    events_file, separator, args = argv[0], argv[1], argv[2:]
    if separator != "--":
        raise SystemExit("usage: python -m segbisect.dvc_run EVENTS -- DVC-ARGS...")
    from dvc.cli import main as dvc_main

    events = Events()
    listener = _Listener(events, running_file(Path(events_file)))
    logging.getLogger("dvc").handlers.insert(0, listener)
    events.rc = dvc_main(args)
    listener.stage_ended()
    Path(events_file).write_text(json.dumps(asdict(events)))
    return events.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
