"""segbisect's own tests: real DVC on the toy project (segbisect_toy.py), nothing of the WiSe pipeline. They run
against whichever segbisect is installed, its wheel included (see .ci/run)."""

from __future__ import annotations

import pytest

pytest_plugins = ("toy_fixtures",)


def pytest_configure(config: pytest.Config) -> None:
    """The marker this folder uses, and DVC's deprecation chatter kept out of the summary, also where it runs alone
    (without the repository's pyproject.toml)."""
    config.addinivalue_line("markers", "e2e: slow tests that run dvc repro or a whole bisection")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:dvc.*")
