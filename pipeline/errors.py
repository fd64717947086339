"""The one exception type stages raise for bad input, and the wrapper that turns it into a clean exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad input or configuration: reported as one line, never as a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage entry point; a PipelineError becomes `error: ...` on stderr and exit code 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
