"""segbisect's command-line manners, through the real command on a real toy DVC project: each message exactly as
the user reads it, brackets in paths and TOML included, and output written to a pipe never wrapped.

The toy lives under a folder named `[x]`, which rich's console markup would take for a tag and drop.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from segbisect.cli import app
from segbisect_toy import bad_commit, commit

SEGBISECT = str(Path(sys.executable).parent / "segbisect")


@pytest.fixture
def repo(toy_template: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced toy under a folder whose name looks like console markup."""
    return Path(shutil.copytree(toy_template, tmp_path / "[x]" / "toy", symlinks=True)).resolve()


def segbisect(repo: Path, *args: str) -> tuple[int, str]:
    """The command in-process, its output captured as a pipe captures it; returns the exit code and the output."""
    result = CliRunner().invoke(app, [*args, "--repo", str(repo), "--no-mlflow"])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_a_project_without_a_check_is_told_the_table_to_write(repo: Path) -> None:
    (repo / "pyproject.toml").unlink()
    commit(repo, "no segbisect settings")
    code, output = segbisect(repo, "good", "HEAD")
    assert code == 2
    assert output == (
        "error: no failure check: pass --fail-if EXPR or --run CMD, or set fail-if in [tool.segbisect] of "
        f"{repo}/pyproject.toml\n"
    )


def test_a_misspelt_settings_key_gets_the_closest_one(repo: Path) -> None:
    settings = repo / "pyproject.toml"
    settings.write_text(settings.read_text().replace("fail-if", "fail_if"))
    code, output = segbisect(repo, "good", "HEAD")
    assert code == 2
    assert output == f"error: {settings}: unknown key 'fail_if' in [tool.segbisect]; did you mean 'fail-if'?\n"


def test_output_to_a_pipe_keeps_a_long_line_whole(repo: Path) -> None:
    """A real pipe, as in a CI log: rich would otherwise break this line at 80 columns, inside the path."""
    deep = repo.parent / ("very-long-folder-name-" * 4) / "repo"
    shutil.move(repo, deep)
    (deep / "pyproject.toml").unlink()
    done = subprocess.run(
        [SEGBISECT, "good", "bad", "--repo", str(deep), "--no-mlflow"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stderr == ""
    line = f"error: no failure check: pass --fail-if EXPR or --run CMD, or set fail-if in [tool.segbisect] of {deep}"
    assert done.stdout == f"{line}/pyproject.toml\n" and len(done.stdout) > 200


def test_version_is_the_installed_distributions() -> None:
    """The console script installed beside this interpreter names the installed distribution's version, from a
    checkout (editable) as from the wheel; tests/test_install.py checks that version against bisect/pyproject.toml."""
    version = metadata.version("segbisect")
    done = subprocess.run([SEGBISECT, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"segbisect {version}\n", "")


def test_fail_if_with_run_is_a_usage_error(repo: Path) -> None:
    code, output = segbisect(repo, "good", "HEAD", "--fail-if", "accuracy < 0.5", "--run", "true")
    assert code == 2
    assert output == "error: --fail-if and --run given together: hybrids are judged by one check, leave the other out\n"
    assert not (repo / "segbisect-results").exists(), "refused before anything ran"


def test_a_misspelt_metric_key_gets_the_closest_key(repo: Path) -> None:
    bad_commit(repo, {"train": {"lr": 2.0}})
    code, output = segbisect(repo, "good", "bad", "--fail-if", "foregound_fraction == 0")
    assert code == 2
    assert (
        output
        == "error: --fail-if names 'foregound_fraction', not in metrics.json; did you mean 'foreground_fraction'?\n"
    )


def test_with_several_metrics_files_the_closest_key_names_its_file(repo: Path) -> None:
    """As in a pipeline whose training writes metrics too: the misspelt key is in neither file, and the message
    names the one that holds the key meant, not `--metrics`.
    """
    dvcyaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    (repo / "train_metrics.json").write_text(json.dumps({"loss": 0.1, "epochs": 5}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({**dvcyaml, "metrics": ["train_metrics.json"]}, sort_keys=False))
    commit(repo, "training metrics")
    bad_commit(repo, {"train": {"lr": 2.0}})
    code, output = segbisect(repo, "HEAD", "bad", "--fail-if", "accuracy < 0.5 or foregound_fraction == 0")
    assert code == 2
    assert (
        output
        == "error: --fail-if names 'foregound_fraction', not in metrics.json; did you mean 'foreground_fraction'?\n"
    )


@pytest.mark.e2e
def test_swapped_good_and_bad_are_told_to_swap_or_find_the_fix(repo: Path) -> None:
    """GOOD fails and BAD passes: BAD is run too, so the message can say so, and neither run is lost: the commands
    it suggests reuse both.
    """
    collapse = repo.parent / "[lr]" / "collapse.yaml"
    collapse.parent.mkdir()
    collapse.write_text("train: {lr: 2.0}\n")
    code, output = segbisect(repo, str(collapse), "good")
    assert code == 3
    verdict = (
        "verdict: precondition-failed — GOOD does not pass (bad: foreground_fraction == 0 holds); nothing to bisect; "
        "BAD passes (good: foreground_fraction == 0 does not hold): they look swapped; to find the change that broke "
        f"it, give them the other way round (segbisect good '{collapse}', with your other options), or to find the "
        "change that fixed it, add --find-fix"
    )
    assert verdict in output.splitlines()
    rows = [line for line in output.splitlines() if line.startswith("│ h0")]
    assert len(rows) == 2 and all(len(row) > 80 and row.endswith("│") for row in rows), "one line per table row"

    code, output = segbisect(repo, "good", str(collapse), "--find-fix")
    assert code == 3
    verdict = (
        "verdict: precondition-failed — BROKEN does not fail (fixed: foreground_fraction == 0 does not hold); nothing "
        "to bisect; FIXED fails (broken: foreground_fraction == 0 holds): they look swapped; to find the change that "
        f"fixed it, give them the other way round (segbisect '{collapse}' good --find-fix, with your other options), "
        "or to find the change that broke it, leave out --find-fix"
    )
    assert verdict in output.splitlines()
    assert "reused earlier result" in output and "ran train" not in output, "the first run's hybrids are reused"


@pytest.mark.e2e
def test_when_good_fails_and_bad_fails_too_nothing_is_said_of_swapping(repo: Path) -> None:
    bad_commit(repo, {"train": {"lr": 2.0}})
    collapse = repo.parent / "collapse.yaml"
    collapse.write_text("train: {lr: 3.0}\n")
    code, output = segbisect(repo, str(collapse), "bad")
    assert code == 3
    assert (
        "verdict: precondition-failed — GOOD does not pass (bad: foreground_fraction == 0 holds); nothing to bisect\n"
        in output
    )
