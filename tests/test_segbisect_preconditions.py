"""GOOD and BAD, the preconditions: run at once when --jobs allows, and shown with the outcome the report gives,
also when the judge's metrics file and keys wait for GOOD's metrics (no metrics file in the user's workspace yet).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from segbisect_toy import bad_commit, bisect, commit, dvc, sh

pytestmark = pytest.mark.e2e
METRICS_FILES = ("metrics.json", "train_metrics.json")
# A hybrid's line as the session prints it when its outcome is settled: `h01 GOOD: good (note; how; 1.2s)`.
SHOWN = re.compile(r"^(h\d+) .+?: (\w+) \((.*); (?:ran|reused) ")


def test_a_fresh_clone_runs_good_and_bad_at_once_and_shows_the_outcomes_the_report_gives(
    toy: Path, tracking_uri: str
) -> None:
    """As in a clone where nobody ran `dvc repro` yet: with two metrics files, which one the predicate reads is
    settled by GOOD's run, so until then no outcome can be judged.
    """
    with_train_metrics(toy)
    bad_commit(toy, {"train": {"lr": 2.0}})
    for name in METRICS_FILES:
        (toy / name).unlink()
    code, report, human = bisect(toy, "two-metrics", "bad", "--jobs", "2", mlflow=True)
    assert code == 0 and report["culprit"]["stage"] == "train", human
    assert "no metrics file to judge yet" not in human

    shown = {m.group(1): (m.group(2), m.group(3)) for m in map(SHOWN.match, human.splitlines()) if m}
    rows = {h["id"]: (h["outcome"], h["note"]) for h in report["hybrids"]}
    assert shown == rows and [h["outcome"] for h in report["hybrids"]] == ["good", "bad"]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("segbisect").experiment_id
    children = client.search_runs([experiment], "tags.`segbisect.role` = 'hybrid'")
    assert {c.data.tags["segbisect.hybrid"]: c.data.tags["outcome"] for c in children} == {
        h: outcome for h, (outcome, _) in rows.items()
    }

    lines = human.splitlines()
    started = [i for i, line in enumerate(lines) if line.endswith("... running")]
    finished = [i for i, line in enumerate(lines) if SHOWN.match(line)]
    assert len(started) == 2 and max(started) < min(finished), f"GOOD and BAD ran one after the other:\n{human}"


def with_train_metrics(toy: Path) -> None:
    """The toy's train stage also writes a metrics file, committed as tag `two-metrics` on main."""
    (toy / "train.py").write_text(
        (toy / "train.py").read_text() + 'write("train_metrics.json", {"epochs": p["epochs"]})\n'
    )
    stages = yaml.safe_load((toy / "dvc.yaml").read_text())
    stages["stages"]["train"]["metrics"] = [{"train_metrics.json": {"cache": False}}]
    (toy / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    dvc(toy, "repro", "-q")
    commit(toy, "train writes metrics too")
    sh(toy, "git", "tag", "two-metrics")
