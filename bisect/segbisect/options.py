"""The options of one bisection, as the command line (or a caller) gives them to the session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segbisect.tracking import DEFAULT_EXPERIMENT


@dataclass(frozen=True, kw_only=True)
class Options:
    """Completed by the project's `[tool.segbisect]` settings where the command line is silent."""

    good: str
    bad: str
    repo: Path = Path(".")
    fail_if: str | None = None
    run: str | None = None
    metrics: str | None = None
    jobs: int = 1
    repeat: int = 1
    retries: int = 1
    timeout: float | None = None
    keep_workspaces: bool = False
    mlflow: bool = True
    fresh: bool = False
    results: Path | None = None
    experiment: str = DEFAULT_EXPERIMENT
    diagnostics: str | None = None
    find_fix: bool = False
    summary_md: Path | None = None
