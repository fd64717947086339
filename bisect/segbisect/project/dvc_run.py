"""`python -m segbisect.project.dvc_run EVENTS -- ARGS...`: DVC's command line, plus a JSON account of what it did.

DVC tells which stages it ran, which it restored and why it failed only through its logger. This driver runs
DVC's own `main` in-process and listens to the log records themselves (DVC's message templates and their
arguments, not the formatted console text) and to the exceptions DVC logs, then writes them to EVENTS. The
output DVC and the stages print is unchanged. The templates below are DVC's own: a test pins them against the
installed DVC.

A transfer DVC does not finish (a full disk, a killed command) leaves its temporary file where the data was
going, the user's DVC cache included. The driver lists every temporary file its process creates, and it and the
session remove the ones left when the command ends: by name, so never another process's in-flight one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

RAN = "Running stage '%s':"
RESTORED = ("Stage '%s' is cached - skipping run, checking out outputs", "Stage '%s' didn't change, skipping")
# `repro --pull`: an unchanged stage whose outputs are missing here is pulled from the remote, unless it cannot be
# (then it runs). The argument is the Stage itself.
PULLED, NOT_PULLED = "Pulling data for %s", "Unable to pull data for %s"
# The loggers DVC logs its failures to, its data layer's (a failed transfer into the cache) included.
LOGGERS = ("dvc", "dvc_data", "dvc_objects")
# Failures of the machine rather than of the project: full or read-only disks, exhausted memory, dead networks.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file size limit",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
}
UNKNOWN_STATUS = "a stage's command failed, and this DVC did not say with which exit status"
# How dvc-objects names a file it writes before moving it into place (`dvc_objects.fs.utils.tmp_fname`: an optional
# prefix, a dot, 16 random bytes in URL-safe base64, `.tmp`); a test pins it against the installed version.
TEMPORARY = re.compile(r"\.[A-Za-z0-9_-]{22}\.tmp\Z")


@dataclass
class Events:
    """What one DVC command did: stages in order, DVC's error messages (outermost first) and its exit status.

    `command_status` is the exit status of a stage's command that failed (None when DVC failed around it);
    `environment` names a fault that is not the hybrid's: of the machine (full disk, lost lock, no memory) or of DVC
    itself (an exception it did not expect, a missing cache object); `configuration` says DVC rejected the hybrid's
    own configuration (a missing dependency, a bad dvc.yaml), which is the hybrid's fault as a failing stage is.
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
    configuration: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rc: int = 0

    @classmethod
    def read(cls, path: Path) -> Events | None:
        """The events a driver wrote, or None when it died before writing them (killed, out of memory)."""
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


class _Listener(logging.Handler):
    def __init__(self, events: Events, running: Path) -> None:
        super().__init__(logging.DEBUG)
        self.events, self.running = events, running
        self.root = Path.cwd()  # the repository DVC runs in
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
                self.running.write_text(name, encoding="utf-8")
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
            _classify(_chain(record), self.events, self.root)


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


def _chain(record: logging.LogRecord) -> list[BaseException]:
    """The exception the record carries and every one in its chain, outermost first."""
    found = []
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def _messages(record: logging.LogRecord) -> list[str]:
    """The record's message and every exception in the chain it carries, outermost first."""
    found = [record.getMessage(), *(str(exc) for exc in _chain(record))]
    return [m for m in dict.fromkeys(found) if m.strip()]


def _classify(chain: list[BaseException], events: Events, root: Path) -> None:
    """Note who failed, from the exceptions DVC logged: a stage's command (its exit status), the hybrid's
    configuration, or else the machine or DVC itself. An exception DVC does not raise for the hybrid's configuration
    (a missing cache object, a fork-server patch that no longer fits DVC, any DVC did not expect) is never the
    hybrid's fault.
    """
    from dvc.stage.exceptions import StageCmdFailedError

    understood = False
    for exc in chain:
        if isinstance(exc, StageCmdFailedError):
            status = _command_status(exc)
            if status is None:
                events.environment = events.environment or UNKNOWN_STATUS
            else:
                events.command_status = status
        elif fault := _environment_fault(exc):
            events.environment = events.environment or fault
        elif _configuration_fault(exc, root):
            events.configuration = True
        else:
            continue
        understood = True
    if chain and not understood:
        events.environment = events.environment or f"{type(chain[-1]).__name__} inside DVC"


def _command_status(exc: BaseException) -> int | None:
    """The exit status of the stage's command as its process reported it to DVC. DVC's StageCmdFailedError keeps it
    only in its message, so it is read from the `subprocess.Popen` in the frames that raised the error, innermost
    first; None where there is none (a DVC that runs commands otherwise).
    """
    frames = []
    trace = exc.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, subprocess.Popen) and value.returncode is not None:
                return int(value.returncode)
    return None


def _environment_fault(exc: BaseException) -> str:
    """What failed in the machine, or "" when `exc` is no such fault."""
    from dvc.lock import LockError

    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return ENVIRONMENT_ERRNOS[exc.errno]
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, LockError):
        return "DVC lock held by another process"
    return ""


def _configuration_fault(exc: BaseException, root: Path) -> bool:
    """Whether DVC failed on the hybrid's own configuration. A missing dependency or working folder is a bare
    FileNotFoundError from hashing it: one naming a file of the repository's tree is that; one naming a file
    elsewhere (a cache object) is not.
    """
    if isinstance(exc, FileNotFoundError):
        return _in_tree(exc.filename, root)
    return isinstance(exc, _configuration_errors())


def _in_tree(filename: object, root: Path) -> bool:
    """Whether an OSError's `filename` (relative to the folder DVC runs in) is in the repository's tree, outside
    DVC's own folder.
    """
    if not isinstance(filename, str | bytes):
        return False
    path = Path(os.path.abspath(os.fsdecode(filename)))
    return path.is_relative_to(root) and not path.is_relative_to(root / ".dvc")


@cache
def _configuration_errors() -> tuple[type[BaseException], ...]:
    """DVC's exceptions for faults of the hybrid's own files: dvc.yaml (syntax, schema, interpolation, stage names,
    overlapping outputs, cycles), params files, dependencies, and the outputs its stages must write.
    """
    from dvc import exceptions as repo
    from dvc import output
    from dvc.dependency import base as dependency
    from dvc.dependency import param
    from dvc.parsing import EntryNotFound, ResolveError
    from dvc.parsing.context import ContextError
    from dvc.stage import exceptions as stage
    from dvc.utils.serialize import ParseError
    from dvc.utils.strictyaml import YAMLValidationError

    return (
        repo.ArgumentDuplicationError,
        repo.CircularDependencyError,
        repo.CyclicGraphError,
        repo.OutputDuplicationError,
        repo.OverlappingOutputPathsError,
        repo.StagePathAsOutputError,
        dependency.DependencyDoesNotExistError,
        dependency.DependencyIsNotFileOrDirError,
        dependency.DependencyIsStageFileError,
        param.BadParamFileError,
        param.MissingParamsError,
        param.MissingParamsFile,
        param.ParamsIsADirectoryError,
        output.OutputDoesNotExistError,
        output.OutputIsIgnoredError,
        output.OutputIsNotFileOrDirError,
        output.OutputIsStageFileError,
        EntryNotFound,
        ResolveError,
        ContextError,
        stage.DuplicateStageName,
        stage.InvalidStageName,
        stage.MissingDataSource,
        stage.StagePathNotDirectoryError,
        stage.StagePathNotFoundError,
        stage.StagePathOutsideError,
        ParseError,
        YAMLValidationError,
    )


def temporaries_file(events_file: Path) -> Path:
    """Where the driver lists the temporary files its process creates (NUL-terminated paths)."""
    return events_file.with_name(events_file.name + ".temporaries")


def remove_temporaries(listing: Path) -> None:
    """Remove the temporary files `listing` names that are still there (a transfer that did not finish), then the
    listing. A file that was moved into place is no longer there under its temporary name.
    """
    try:
        paths = listing.read_bytes().split(b"\0")
    except OSError:
        return
    for path in paths:
        if TEMPORARY.search(os.path.basename(os.fsdecode(path))):
            with contextlib.suppress(OSError):
                os.remove(path)
    listing.unlink(missing_ok=True)


class _Temporaries:
    """The temporary files this process creates, seen through an audit hook (dvc-objects creates them in several
    places, each named by `tmp_fname`): kept in memory for the driver, and listed in a file as each is created,
    before any data goes in, for the session to remove when the driver cannot (killed mid-transfer).
    """

    def __init__(self, listing: Path) -> None:
        self.listing = listing
        self.made: list[str] = []
        try:
            self._fd: int | None = os.open(listing, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            self._fd = None

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Never raises: an exception here would fail the operation audited."""
        if event == "open" and isinstance(args[2], int) and args[2] & os.O_CREAT:
            path = args[0]
        elif event in ("os.rename", "os.link", "os.symlink"):
            path = args[1]
        else:
            return
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str | bytes) or not TEMPORARY.search(os.path.basename(os.fsdecode(path))):
            return
        made = os.path.abspath(os.fsdecode(path))
        self.made.append(made)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, os.fsencode(made) + b"\0")

    def remove_left(self) -> None:
        """Remove what is still there under a temporary name, then the listing (nothing is left to remove)."""
        for path in self.made:
            with contextlib.suppress(OSError):
                os.remove(path)
        if self._fd is not None:
            os.close(self._fd)
        self.listing.unlink(missing_ok=True)


_recording: _Temporaries | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None:
        _recording.audit(event, args)


@contextlib.contextmanager
def _temporaries_removed(listing: Path) -> Iterator[None]:
    """Record the temporary files created meanwhile, and remove the ones left at the end. An audit hook stays for
    the process's life, so it is added once; commands of one process run one at a time.
    """
    global _recording, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    recording = _recording = _Temporaries(listing)
    try:
        yield
    finally:
        _recording = None
        recording.remove_left()


def main(argv: list[str]) -> int:
    events_file, separator, args = argv[0], argv[1], argv[2:]
    if separator != "--":
        raise SystemExit("usage: python -m segbisect.project.dvc_run EVENTS -- DVC-ARGS...")
    from dvc.cli import main as dvc_main

    events = Events()
    listener = _Listener(events, running_file(Path(events_file)))
    for name in LOGGERS:
        logging.getLogger(name).handlers.insert(0, listener)
    with _temporaries_removed(temporaries_file(Path(events_file))):
        events.rc = dvc_main(args)
    listener.stage_ended()
    Path(events_file).write_text(json.dumps(asdict(events)), encoding="utf-8")
    return events.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
