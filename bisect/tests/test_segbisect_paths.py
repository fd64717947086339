"""Text that is not ASCII: paths everywhere (the repository, the results folder, the temporary folder; end to end on
the toy) and params files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segbisect.core.errors import UsageError
from segbisect.project.refs import resolve
from segbisect_toy import bad_commit, sh, unit_names

SEGBISECT = str(Path(sys.executable).parent / "segbisect")
# The locales a user may run under: this machine's own, and POSIX's "C" (where Python itself decides whether text
# files default to UTF-8; nothing segbisect writes may depend on that).
LOCALES = {"default": {}, "C": {"LANG": "C", "LC_ALL": "C"}}


@pytest.mark.e2e
@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_a_bisection_under_non_ascii_paths_names_the_culprit(toy_template: Path, tmp_path: Path, locale: str) -> None:
    root = tmp_path / "dépôt ü"
    repo = Path(shutil.copytree(toy_template, root / "mon projet", symlinks=True))
    results = root / "résultats ß"
    temp = root / "tmp ñ 日本"
    temp.mkdir()
    store = root / "suivi é" / "mlflow.db"
    store.parent.mkdir()
    bad_commit(repo, {"train": {"lr": 2.0}, "prepare": {"n": 42}})
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUTF8"}
    env.update(LOCALES[locale], TMPDIR=str(temp), MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    done = subprocess.run(
        [SEGBISECT, "good", "bad", "--repo", str(repo), "--results", str(results), "--json"],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    report = json.loads(done.stdout)
    assert report["verdict"] == "culprit"
    assert (report["culprit"]["stage"], unit_names(report)) == ("train", ["train.lr"])
    # segbisect's own venv has no MLflow: the named store is then warned about, and still named in the report.
    tracked = "MLflow" if importlib.util.find_spec("mlflow") else "off: MLflow is not installed"
    assert report["tracking"].startswith(tracked), report["tracking"]
    written = [path for path in results.rglob("*") if path.suffix in {".md", ".json", ".jsonl", ".html"}]
    texts = {path.name: path.read_text(encoding="utf-8") for path in written}
    assert {"journal.jsonl", "report.json", "report.md", "report.html"} <= set(texts)
    assert str(store) in texts["report.html"], "the report names the store as it is, in UTF-8"
    assert not list(temp.glob("segbisect-ws-*")), "the session's worktrees are gone"


def test_a_params_file_that_is_not_utf8_is_a_one_line_usage_error(tmp_path: Path) -> None:
    repo = tmp_path / "dépôt"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    overlay = repo / "réglages.yaml"
    overlay.write_bytes("train: {optimizer: 'adam-é'}\n".encode("latin-1"))
    with pytest.raises(UsageError) as caught:
        resolve(repo, f"file:{overlay}", None)
    assert str(caught.value) == f"params file '{overlay}' is not UTF-8 text (invalid continuation byte at offset 25)"
