"""`[tool.segbisect]` in a repository's pyproject.toml: what segbisect takes from it and how it refuses bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluate import EVAL_DIR
from pipeline.tracking import DEFAULT_TRACKING_URI
from segbisect.core.errors import UsageError
from segbisect.core.predicate import Predicate, UnjudgeableError
from segbisect.session.settings import Settings, load
from segbisect.tracking.store import tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def test_this_project_names_the_all_zero_check_and_its_diagnostics_file() -> None:
    settings = load(ROOT)
    assert settings.diagnostics == (EVAL_DIR / "diagnostics.json").as_posix()
    assert settings.fail_if is not None
    assert set(Predicate(settings.fail_if).metric_keys) == {"foreground_fraction", "all_zero_threshold"}


def test_this_project_tracks_bisections_where_its_stages_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLFLOW_TRACKING_URI, segbisect's store is the one a stage run in the repository logs to."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(ROOT / "docs")
    assert load(ROOT).tracking_uri == DEFAULT_TRACKING_URI
    assert tracking_uri(ROOT, load(ROOT).tracking_uri) == f"sqlite:///{ROOT / 'mlflow.db'}"


def test_project_predicate_compares_the_share_with_the_recorded_tolerance() -> None:
    pred = Predicate(load(ROOT).fail_if or "")
    assert pred.metric_keys == ["foreground_fraction", "all_zero_threshold"]
    assert pred({"foreground_fraction": 0.0004, "all_zero_threshold": 0.001})
    assert pred({"foreground_fraction": 0.0, "all_zero_threshold": 0.001})
    assert not pred({"foreground_fraction": 0.08, "all_zero_threshold": 0.004})
    with pytest.raises(UnjudgeableError, match="all_zero_threshold"):
        pred({"foreground_fraction": 0.0})


def test_no_file_or_no_table_means_no_settings(tmp_path: Path) -> None:
    assert load(tmp_path) == Settings()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert load(tmp_path) == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.segbisect\n", "not valid TOML"),
        ('[tool]\nsegbisect = "x"\n', "[tool.segbisect] must be a table"),
        (
            '[tool.segbisect]\nfail_if = "a == 0"\n',
            "unknown key 'fail_if' in [tool.segbisect]; did you mean 'fail-if'?",
        ),
        ('[tool.segbisect]\ncolour = "red"\n', "unknown key 'colour' in [tool.segbisect]; known: diagnostics, fail-if"),
        ('[tool.segbisect]\nfail-if = ""\n', "[tool.segbisect] fail-if must be a non-empty string"),
        ("[tool.segbisect]\ndiagnostics = 3\n", "[tool.segbisect] diagnostics must be a non-empty string"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(UsageError) as caught:
        load(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'pyproject.toml'}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
