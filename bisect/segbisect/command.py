"""The `segbisect` console script: the DVC fork server starts before the command line is even imported."""

from __future__ import annotations

from segbisect import forked


def main() -> None:
    forked.start_early()
    from segbisect.cli import app

    app()
