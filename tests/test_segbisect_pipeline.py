"""segbisect on this project's real pipeline (tiny params, real DVC, TensorFlow and MLflow in a temp git repo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import ThresholdBisection

pytestmark = pytest.mark.e2e


def test_threshold_bug_is_found_in_evaluate_reusing_the_cache(threshold_bisection: ThresholdBisection) -> None:
    run = threshold_bisection
    report = run.report
    assert run.returncode == 0, run.output
    assert report["verdict"] == "culprit" and report["culprit"]["stage"] == "evaluate"
    assert [u["name"] for u in report["culprit"]["units"]] == ["evaluate.threshold"]  # not n_overlays
    assert "threshold" in json.dumps(report["culprit"]["diagnostics"])

    hybrids = {h["label"]: h for h in report["hybrids"]}
    assert hybrids["GOOD"]["executed"] == [] and len(hybrids["GOOD"]["restored"]) == 5
    assert all(h["executed"] == ["evaluate"] for label, h in hybrids.items() if label != "GOOD")
    assert len(report["hybrids"]) == 4 and report["stage_executions"] == 3  # BAD + one wave of two single units
    assert run.after == run.before

    client = MlflowClient(run.uri)
    experiment = client.get_experiment_by_name("segbisect").experiment_id
    runs = client.search_runs([experiment])
    stage_runs = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    children = [r for r in runs if r.data.tags.get("segbisect.role") == "hybrid"]
    assert len(stage_runs) == 3 and len(children) == 4
    assert {r.data.tags["segbisect.session"] for r in stage_runs} == {Path(report["results_dir"]).name}
    linked = {c.data.tags.get("stage_runs") for c in children} - {None}
    assert linked == {r.info.run_id for r in stage_runs}
    parent_of = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in client.search_runs([experiment])}
    for child in children:
        for stage_run in filter(None, child.data.tags.get("stage_runs", "").split(",")):
            assert parent_of[stage_run] == child.info.run_id, "a hybrid's stage runs nest under it"
    sessions = {r.info.run_id for r in runs if r.data.tags.get("segbisect.role") == "session"}
    assert {parent_of[c.info.run_id] for c in children} == sessions
    assert (Path(report["results_dir"]) / "report.md").read_text().count("| h0") == 4
