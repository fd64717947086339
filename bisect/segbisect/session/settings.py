"""Project settings: the failure check, the evidence file and the tracking store a project wants, from its
`pyproject.toml`.

segbisect knows no pipeline. A project names its symptom once, in a `[tool.segbisect]` table, instead of
every user passing it on the command line:

    [tool.segbisect]
    fail-if = "foreground_fraction <= all_zero_threshold"   # the default --fail-if
    diagnostics = "reports/evaluate/diagnostics.json"       # shown as evidence for the failing hybrid
    tracking-uri = "sqlite:///mlflow.db"                    # the MLflow store (relative to the repository)
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from segbisect.core.errors import UsageError

FILE = "pyproject.toml"
KEYS = ("diagnostics", "fail-if", "tracking-uri")


@dataclass(frozen=True)
class Settings:
    """What `[tool.segbisect]` says; None where it says nothing."""

    fail_if: str | None = None
    diagnostics: str | None = None
    tracking_uri: str | None = None


def load(repo: Path) -> Settings:
    """The repository's `[tool.segbisect]` table; a malformed one is a usage error naming the file."""
    path = repo / FILE
    if not path.is_file():
        return Settings()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    table = document.get("tool", {}).get("segbisect", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.segbisect] must be a table")
    for key, value in table.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(KEYS)}"
            raise UsageError(f"{path}: unknown key '{key}' in [tool.segbisect]; {hint}")
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{path}: [tool.segbisect] {key} must be a non-empty string")
    return Settings(
        fail_if=table.get("fail-if"), diagnostics=table.get("diagnostics"), tracking_uri=table.get("tracking-uri")
    )
