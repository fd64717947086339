"""Errors that map to segbisect's documented exit codes."""

from __future__ import annotations

EXIT_CULPRIT = 0
EXIT_NO_CULPRIT = 1
EXIT_USAGE = 2
EXIT_PRECONDITION = 3
EXIT_ABORTED = 4
EXIT_INTERRUPTED = 130


class SegbisectError(Exception):
    """A failure the user must fix; carries the exit code the CLI returns."""

    exit_code = EXIT_USAGE


class UsageError(SegbisectError):
    """Bad reference, bad predicate, or nothing to bisect."""


class PreconditionError(SegbisectError):
    """GOOD does not pass or BAD does not fail, so there is nothing to bisect."""

    exit_code = EXIT_PRECONDITION


class UndecidableError(SegbisectError):
    """The environment failed a hybrid even after retries, or its repeats disagreed: no verdict can be trusted."""

    exit_code = EXIT_NO_CULPRIT

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class AbortError(SegbisectError):
    """A `--run` check asked to abort (exit code outside 0..127)."""

    exit_code = EXIT_ABORTED
