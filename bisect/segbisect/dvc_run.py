"""`python -m segbisect.dvc_run EVENTS -- ARGS...`: DVC's command line, plus a JSON account of what it did.

DVC tells which stages it ran, which it restored and why it failed only through its logger. This driver runs
DVC's own `main` in-process and listens to the log records themselves (DVC's message templates and their
arguments, not the formatted console text) and to the exceptions DVC logs, then writes them to EVENTS. The
output DVC and the stages print is unchanged. The templates below are DVC's own: a test pins them against the
installed DVC.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

RAN = "Running stage '%s':"
RESTORED = ("Stage '%s' is cached - skipping run, checking out outputs", "Stage '%s' didn't change, skipping")


@dataclass
class Events:
    """What one DVC command did: stages in order, DVC's error messages (outermost first) and its exit status.

    `command_failed` when the error is a stage's command exiting non-zero rather than DVC failing around it.
    `output_from`/`output_to` are byte offsets in the log (stdout) around the last executed stage's own output.
    """

    executed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    output_from: int = 0
    output_to: int | None = None
    command_failed: bool = False
    rc: int = 0

    @classmethod
    def read(cls, path: Path) -> Events | None:
        """The events a driver wrote, or None when it died before writing them (killed, out of memory)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class _Listener(logging.Handler):
    def __init__(self, events: Events) -> None:
        super().__init__(logging.DEBUG)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        name = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        if record.msg == RAN:
            self.events.executed.append(name)
            self.events.output_from, self.events.output_to = _offset(), None
        elif record.msg in RESTORED:
            self.events.restored.append(name)
        elif record.levelno >= logging.ERROR:
            if self.events.output_to is None:
                self.events.output_to = _offset()
            self.events.errors.extend(_messages(record))
            self.events.command_failed |= _command_failed(record)


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


def _command_failed(record: logging.LogRecord) -> bool:
    """Whether a stage's own command exited non-zero (then its last words say why), not DVC around it."""
    from dvc.stage.exceptions import StageCmdFailedError

    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        if isinstance(exc, StageCmdFailedError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main(argv: list[str]) -> int:
    events_file, separator, args = argv[0], argv[1], argv[2:]
    if separator != "--":
        raise SystemExit("usage: python -m segbisect.dvc_run EVENTS -- DVC-ARGS...")
    from dvc.cli import main as dvc_main

    events = Events()
    logging.getLogger("dvc").handlers.insert(0, _Listener(events))
    events.rc = dvc_main(args)
    Path(events_file).write_text(json.dumps(asdict(events)))
    return events.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
