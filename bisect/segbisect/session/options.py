"""The options of one bisection, as the command line (or a caller) gives them to the session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segbisect.core.attempt import AttemptPolicy
from segbisect.core.tipping import Tipping
from segbisect.executors.base import ClusterOptions
from segbisect.executors.registry import ExecutorKind
from segbisect.tracking.store import DEFAULT_EXPERIMENT


@dataclass(frozen=True, kw_only=True)
class Options:
    """Completed by the project's `[tool.segbisect]` settings where the command line is silent.
    `reuse_any_environment`: reuse journaled hybrids computed in another numeric environment too (see machine.py).
    `mlflow`: None tracks when a store is named (MLFLOW_TRACKING_URI or the project's `tracking_uri`), True
    requires one, False never tracks. `tipping`: search where the culprit tips when it is one numeric param (None:
    only offer it in the verdict's message).
    """

    good: str
    bad: str
    repo: Path = Path(".")
    fail_if: str | None = None
    run: str | None = None
    metrics: str | None = None
    jobs: int = 1
    attempts: AttemptPolicy = field(default_factory=AttemptPolicy)
    keep_workspaces: bool = False
    mlflow: bool | None = None
    fresh: bool = False
    reuse_any_environment: bool = False
    results: Path | None = None
    experiment: str = DEFAULT_EXPERIMENT
    diagnostics: str | None = None
    tracking_uri: str | None = None
    find_fix: bool = False
    summary_md: Path | None = None
    executor: ExecutorKind = ExecutorKind.LOCAL
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    tipping: Tipping | None = None
