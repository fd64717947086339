"""segbisect on a project that knows nothing of it: no tracking store named and nothing of segbisect's ignored. It
writes nothing into the repository but its self-ignored results folder, and MLflow is optional: without a store, or
without MLflow installed, the bisection runs untracked, and asking for what needs them is a one-line usage error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segbisect.core.errors import UsageError
from segbisect.project.refs import resolve
from segbisect_toy import bad_commit, bisect, commit, sh, unit_names

SEGBISECT = str(Path(sys.executable).parent / "segbisect")
RUN_ID = "0123456789abcdef0123456789abcdef"
INSTALL = "pip install 'segbisect[mlflow]'"
NO_STORE = "off: no tracking store named (MLFLOW_TRACKING_URI or tracking-uri in [tool.segbisect])"
# On PYTHONPATH, as sitecustomize.py: every interpreter of a run finds no MLflow, as where it is not installed.
WITHOUT_MLFLOW = 'import sys\n\nsys.modules["mlflow"] = None\n'
RESULTS = "segbisect-results/"
CACHE = ".dvc/cache/"


@pytest.fixture(autouse=True)
def no_store_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def foreign(toy: Path) -> Path:
    """The toy as a project that never heard of segbisect: its .gitignore leaves mlflow.db and the results folder
    to whoever writes them. BAD (tag `bad`) collapses training.
    """
    gitignore = toy / ".gitignore"
    lines = gitignore.read_text().splitlines()
    kept = [line for line in lines if line not in ("mlflow.db", "/segbisect-results/")]
    assert len(kept) == len(lines) - 2, "the toy's .gitignore no longer names both"
    gitignore.write_text("".join(f"{line}\n" for line in kept))
    commit(toy, "ignore only what the project writes itself")
    sh(toy, "git", "tag", "-f", "good")
    bad_commit(toy, {"train": {"lr": 2.0}})
    return toy


def without_mlflow(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python interpreters cannot import MLflow."""
    folder = tmp_path / "without-mlflow"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(WITHOUT_MLFLOW)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def entries(repo: Path, *args: str) -> list[str]:
    return sh(repo, "git", "status", "--porcelain", *args).splitlines()


def run(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `segbisect` console script in the repository, as a user runs it."""
    command = [SEGBISECT, "good", "bad", "--json", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, timeout=600)


def test_importing_the_command_line_imports_no_mlflow() -> None:
    probe = (
        "import sys, segbisect.cli, segbisect.session\n"
        "print([name for name, module in sys.modules.items() if name.startswith('mlflow') and module is not None])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_mlflow_reference_needs_a_store_named_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError) as caught:
        resolve(tmp_path, f"mlflow:{RUN_ID}", None)
    assert str(caught.value) == (
        f"reference 'mlflow:{RUN_ID}': no tracking store named to look the run up in; name it with "
        "MLFLOW_TRACKING_URI or tracking-uri in [tool.segbisect]"
    )
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where the package is absent
    with pytest.raises(UsageError) as caught:
        resolve(tmp_path, f"mlflow:{RUN_ID}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(caught.value) == f"reference 'mlflow:{RUN_ID}': looking up an MLflow run needs MLflow; {INSTALL}"


def test_a_run_id_that_is_nothing_else_says_why_mlflow_was_not_asked(tmp_path: Path) -> None:
    sh(tmp_path, "git", "init", "-q")
    with pytest.raises(UsageError) as caught:
        resolve(tmp_path, RUN_ID, None)
    assert str(caught.value).endswith(
        "(the working tree); no tracking store named to look MLflow runs up in (MLFLOW_TRACKING_URI or tracking-uri "
        "in [tool.segbisect])"
    )


def test_mlflow_asked_for_without_a_store_or_without_mlflow_is_a_usage_error(
    toy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, report, _ = bisect(toy, "good", "bad", "--mlflow", mlflow=True)
    assert (code, report["verdict"]) == (2, "usage-error")
    assert report["error"] == (
        "--mlflow: no tracking store named; set MLFLOW_TRACKING_URI, or tracking-uri in [tool.segbisect] of "
        f"{toy / 'pyproject.toml'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{toy.parent / 'mlflow.db'}")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, report, _ = bisect(toy, "good", "bad", "--mlflow", mlflow=True)
    assert (code, report["error"]) == (2, f"--mlflow: MLflow is not installed; {INSTALL}")
    assert not (toy / RESULTS).exists() and not (toy.parent / "mlflow.db").exists()


@pytest.mark.e2e
def test_a_bisection_writes_nothing_into_the_repository_but_its_results_folder(foreign: Path) -> None:
    everything = ("--ignored", "--untracked-files=all")
    before, shown = entries(foreign, *everything), entries(foreign)
    done = run(foreign)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["culprit"]["stage"], unit_names(report), report["tracking"]) == ("train", ["train.lr"], NO_STORE)
    after = entries(foreign, *everything)
    # DVC's cache is the user's, shared with the hybrids on purpose: it only grows.
    assert set(before) <= set(after)
    new = [line for line in after if line not in before and not line.startswith(f"!! {CACHE}")]
    assert new and all(line.startswith(f"!! {RESULTS}") for line in new), new
    assert entries(foreign) == shown
    assert not [p for p in foreign.rglob("*") if p.name in ("mlflow.db", "mlruns")]


@pytest.mark.e2e
def test_a_store_named_without_mlflow_installed_costs_one_warning(foreign: Path, tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    env = without_mlflow(tmp_path) | {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    done = run(foreign, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert unit_names(report) == ["train.lr"]
    assert report["tracking"] == f"off: MLflow is not installed ({INSTALL}) to log to sqlite:///{store}"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: MLflow store sqlite:///{store} is named but MLflow is not installed ({INSTALL}): the bisection "
        "and its stages run untracked"
    ]
    assert not store.exists()
