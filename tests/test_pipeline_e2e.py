"""End to end: real `dvc repro` of the whole pipeline on a tiny config, with real MLflow and TensorFlow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.numerics import numeric_environment
from support import dvc_repro, make_pipeline_repo, write_params

pytestmark = pytest.mark.e2e
STAGES = ["synthesize", "prepare", "preprocess", "train", "evaluate"]


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_pipeline_repo(tmp_path / "repo")


def test_repro_builds_everything_then_only_what_changed(repo: Path, tracking_uri: str) -> None:
    first = dvc_repro(repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert stages_run(first.stdout) == STAGES

    for out in [
        "data/synthetic/images",
        "data/prepared/train/masks",
        "data/processed/spec.json",
        "models/model.keras",
        "models/train_meta.json",
        "reports/evaluate/diagnostics.json",
        "reports/figures/class_shares.png",
        "reports/figures/confusion_matrix.png",
        "reports/train_history.csv",
    ]:
        assert (repo / out).exists(), out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    assert lock["stages"]["evaluate"]["params"]["params.yaml"]["evaluate.postprocess"] == "argmax"

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in [
        "mean_iou",
        "pixel_accuracy",
        "foreground_fraction",
        "per_class_iou",
        "predicted_class_histogram",
        "output_min",
        "output_max",
        "output_mean",
        "confusion_matrix",
    ]:
        assert key in metrics, key
    assert 0.0 <= metrics["mean_iou"] <= 1.0
    assert 0.0 <= metrics["foreground_fraction"] <= 1.0
    assert set(metrics["per_class_iou"]) == {"background", "foreground"}
    assert metrics["all_zero_threshold"] == max(0.05 * metrics["true_foreground_fraction"], 0.001)
    assert metrics["all_zero_symptom"] == int(metrics["foreground_fraction"] <= metrics["all_zero_threshold"])

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert sorted(by_stage) == sorted(STAGES) and len(runs) == len(STAGES)
    assert len({r.data.tags["config_hash"] for r in runs}) == 1
    assert all(r.data.tags["git_commit"] != "unknown" for r in runs)
    assert by_stage["train"].data.params["train.epochs"] == "1"
    assert by_stage["evaluate"].data.metrics["mean_iou"] == pytest.approx(metrics["mean_iou"])
    artifacts = {a.path for a in client.list_artifacts(by_stage["evaluate"].info.run_id)}
    assert artifacts, "evaluate logged no artifacts"
    run_file = json.loads((repo / "reports/evaluate/evaluate_run.json").read_text())
    assert run_file["run_id"] == by_stage["evaluate"].info.run_id
    here = numeric_environment()
    for stage, run in by_stage.items():
        assert run.data.tags["numerics.cpu"] == here["cpu"], stage
        assert run.data.tags["numerics.onednn_isa"] == str(here["onednn_isa"]), stage
    assert run_file["numerics"]["onednn_isa"] == here["onednn_isa"]
    assert run_file["numerics"]["tensorflow"] == here["tensorflow"] and run_file["numerics"]["keras"] == here["keras"]

    second = dvc_repro(repo)
    assert second.returncode == 0, second.stderr
    assert stages_run(second.stdout) == []

    write_params(repo, {"evaluate": {"n_overlays": 1}})
    third = dvc_repro(repo)
    assert third.returncode == 0, third.stdout + third.stderr
    assert stages_run(third.stdout) == ["evaluate"]
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == len(STAGES) + 1
