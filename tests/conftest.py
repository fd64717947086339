"""Shared fixtures: real DVC repos built from this project's files, with tiny params (helpers in support.py; the
toy project's fixtures in bisect/tests/toy_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support import (
    BISECTION_RECORD,
    CASEBOOK_RUNNER,
    ThresholdBisection,
    built_once,
    load_script,
    run_threshold_bisection,
)

pytest_plugins = ("toy_fixtures",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The casebook's tests first, then the README's walkthrough (the longest test). Under `--dist worksteal`
    (pyproject.toml) each xdist worker starts on its own half of the run, so one builds the casebook's GOOD while the
    other starts on the rest, and a worker that runs out takes tests from the end of the other's half: none waits
    for GOOD while there is other work, and the longest test never starts last."""
    items.sort(
        key=lambda item: (
            "casebook_good" not in getattr(item, "fixturenames", ()),
            item.name != "test_the_quick_start_and_walkthrough_run_as_written",
        )
    )


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test gets its own real SQLite MLflow store; nothing lands in the repository's mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def casebook_good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A casebook folder holding GOOD (its repository, MLflow store and casebook.json), built once per pytest run by
    the casebook runner's own `prepare_good`, whichever worker asks first; keyed by GOOD's inputs and numeric
    environment. Read-only: a test copies what it changes."""
    casebook = load_script(CASEBOOK_RUNNER)
    overlay = yaml.safe_load(casebook.GOOD_PARAMS.read_text())

    def build(folder: Path) -> None:
        casebook.prepare_good(folder, overlay, casebook.stage_env(f"sqlite:///{folder / 'mlflow.db'}"))

    return built_once(tmp_path_factory, f"casebook-good-{casebook.good_key(overlay)}", build)


@pytest.fixture(scope="session")
def threshold_bisection(tmp_path_factory: pytest.TempPathFactory) -> ThresholdBisection:
    """Shared by the segbisect and MLflow UI tests, and by the xdist workers (it is only read once made), so the
    expensive real run happens once per pytest run."""
    folder = built_once(tmp_path_factory, "threshold-bisection", run_threshold_bisection)
    return ThresholdBisection.from_json((folder / BISECTION_RECORD).read_text())
