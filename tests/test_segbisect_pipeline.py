"""segbisect on this project's real pipeline (tiny params, real DVC, TensorFlow and MLflow in a temp git repo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from conftest import make_pipeline_repo
from segbisect.cli import app
from test_segbisect_toy import tree_state

pytestmark = pytest.mark.e2e


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def reproduced(tmp_path: Path) -> Path:
    """The tiny pipeline reproduced and committed as tag `good`; tag `bad` raises the probability threshold to 1.

    GOOD thresholds foreground probabilities at 0.001, so it predicts foreground whatever a one-epoch model learnt,
    and BAD's threshold of 1 predicts none: the verdict does not hang on training quality.
    """
    repo = make_pipeline_repo(tmp_path / "repo", {"evaluate": {"postprocess": "threshold", "threshold": 0.001}})
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, check=True, capture_output=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "reproduced")
    git(repo, "tag", "good")
    git(repo, "checkout", "-q", "-b", "threshold")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"].update(threshold=1.0, n_overlays=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-q", "-am", "threshold post-processing")
    git(repo, "tag", "bad")
    git(repo, "checkout", "-q", "main")
    return repo


def test_threshold_bug_is_found_in_evaluate_reusing_the_cache(reproduced: Path, tracking_uri: str, tmp_path: Path) -> None:
    before = tree_state(reproduced)
    args = ["good", "bad", "--repo", str(reproduced), "--results", str(tmp_path / "results"), "--jobs", "2", "--json"]
    result = CliRunner().invoke(app, args)
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert report["verdict"] == "culprit" and report["culprit"]["stage"] == "evaluate"
    assert [u["name"] for u in report["culprit"]["units"]] == ["evaluate.threshold"]  # not n_overlays
    assert "threshold" in json.dumps(report["culprit"]["diagnostics"])

    hybrids = {h["label"]: h for h in report["hybrids"]}
    assert hybrids["GOOD"]["executed"] == [] and len(hybrids["GOOD"]["restored"]) == 5
    assert all(h["executed"] == ["evaluate"] for label, h in hybrids.items() if label != "GOOD")
    assert len(report["hybrids"]) == 4 and report["stage_executions"] == 3  # BAD + one wave of two single units
    assert tree_state(reproduced) == before

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("segbisect").experiment_id
    runs = client.search_runs([experiment])
    stage_runs = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    children = [r for r in runs if r.data.tags.get("segbisect.role") == "hybrid"]
    assert len(stage_runs) == 3 and len(children) == 4
    assert {r.data.tags["segbisect.session"] for r in stage_runs} == {Path(report["results_dir"]).name}
    linked = {c.data.tags.get("stage_runs") for c in children} - {None}
    assert linked == {r.info.run_id for r in stage_runs}
