"""`[tool.segbisect]` keys any project may set, and the tracking store they name: read from the repository's
pyproject.toml, relative to the repository whatever the working directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segbisect.core.errors import UsageError
from segbisect.session.settings import Settings, load
from segbisect.tracking.store import tracking_uri


def write_settings(repo: Path, text: str) -> Path:
    repo.mkdir(exist_ok=True)
    (repo / "pyproject.toml").write_text(f"[tool.segbisect]\n{text}\n")
    return repo


def test_every_key_is_read(tmp_path: Path) -> None:
    repo = write_settings(
        tmp_path / "repo", 'fail-if = "acc < 0.5"\ndiagnostics = "eval/d.json"\ntracking-uri = "sqlite:///runs.db"'
    )
    assert load(repo) == Settings(fail_if="acc < 0.5", diagnostics="eval/d.json", tracking_uri="sqlite:///runs.db")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tracking-uri = 3", "[tool.segbisect] tracking-uri must be a non-empty string"),
        ('tracking-uri = "  "', "[tool.segbisect] tracking-uri must be a non-empty string"),
        (
            'tracking_uri = "sqlite:///x.db"',
            "unknown key 'tracking_uri' in [tool.segbisect]; did you mean 'tracking-uri'?",
        ),
        ('store = "x"', "unknown key 'store' in [tool.segbisect]; known: diagnostics, fail-if, tracking-uri"),
    ],
)
def test_a_bad_tracking_uri_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    repo = write_settings(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load(repo)
    assert str(caught.value) == f"{repo / 'pyproject.toml'}: {message}"


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:///{repo}/mlflow.db"),
        ("sqlite:///stores/../runs.db", "sqlite:///{repo}/runs.db"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("mlruns", "{repo}/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_the_projects_store_is_relative_to_the_repository_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: str, expected: str
) -> None:
    repo = write_settings(tmp_path / "repo", f'tracking-uri = "{configured}"')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(repo, load(repo).tracking_uri) == expected.format(repo=repo)


def test_mlflow_tracking_uri_wins_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_settings(tmp_path / "repo", 'tracking-uri = "sqlite:///mlflow.db"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    assert tracking_uri(repo, load(repo).tracking_uri) == f"sqlite:///{elsewhere / 'mine.db'}"


def test_without_either_no_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path, load(tmp_path).tracking_uri) is None
