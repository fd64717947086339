"""Every stage run records the whole configuration it ran under, so two runs differ in exactly what differs.

The params of the stage and of every stage upstream of it (DVC's graph), named as in dvc.yaml, and DVC's hash of
every DVC-tracked output they read: checked on a toy DVC project whose stages record what `run_params` gives them
inside a real `dvc repro`, and on the real tiny pipeline run twice, as a user would, through `MlflowClient`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.params import as_flat_dict
from pipeline.scratch import ROOT, git
from pipeline.tracking import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, run_params
from support import ThresholdBisection, built_once, make_pipeline_repo, write_params

STAGES = ["synthesize", "prepare", "preprocess", "train", "evaluate"]
# The walkthrough's broken configuration: the label map sends the masks' foreground (255) to the ignore index.
BROKEN_LABEL_MAP = {"prepare": {"label_map": {0: 0, 255: 255}}}
STORE = "label-map-store"


# --- outside a DVC project: the stage's own section, within MLflow's limits ------------------------------------


@dataclasses.dataclass(frozen=True)
class Section:
    label_map: dict[int, int]
    names: list[str]
    odd: dict[str, str]


def test_outside_dvc_the_run_holds_its_own_section_namespaced_within_mlflow_limits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_key, long_value = "k" * 300, "v" * 7000
    params = run_params("prepare", Section({0: 0, 255: 1}, ["a", "b"], {"a+b=c": "x", long_key: long_value}))
    assert params == {
        "prepare.label_map.0": "0",
        "prepare.label_map.255": "1",
        "prepare.names": "['a', 'b']",
        "prepare.odd.a_b_c": "x",
        f"prepare.odd.{long_key}"[:MAX_KEY_LENGTH]: long_value[: MAX_VALUE_LENGTH - 3] + "...",
    }
    from mlflow.utils.validation import _validate_param

    for key, value in params.items():
        _validate_param(key, value)


def test_flat_dict_opens_mappings_with_any_keys():
    assert as_flat_dict({"prepare": {"label_map": {0: 0, 255: 1}, "split": {"train": 0.5}, "empty": {}}}) == {
        "prepare.label_map.0": 0,
        "prepare.label_map.255": 1,
        "prepare.split.train": 0.5,
        "prepare.empty": {},
    }


# --- a toy DVC project: the lineage, inside a real `dvc repro` --------------------------------------------------

RECORD = """\
import json, os, sys
import yaml
from pipeline.tracking import run_params

stage, out = sys.argv[1:]
os.makedirs(out)
with open(os.path.join(out, "params.json"), "w") as fh:
    json.dump(run_params(stage, yaml.safe_load(open("params.yaml"))[stage]), fh)
"""
TOY_PARAMS = {
    "a": {"x": 1, "m": {0: 0, 255: 1}},
    "b": {"y": 2},
    "shared": {"k": 3},
    "side": {"z": 4},
    "c": {"w": 5},
}


def toy_stage(name: str, deps: list[str], params: list[str]) -> dict[str, Any]:
    return {
        "cmd": f"python record.py {name} out/{name}",
        "deps": ["record.py", *deps],
        "params": params,
        "outs": [f"out/{name}"],
    }


TOY_PIPELINE = {
    "stages": {
        "a": toy_stage("a", ["data/raw"], ["a.x", "a.m"]),
        "b": toy_stage("b", ["out/a"], ["b.y", "shared.k"]),
        "side": toy_stage("side", ["out/a"], ["side.z"]),
        # A file inside an output: the output's hash is recorded, as DVC links the two.
        "c": toy_stage("c", ["out/b/params.json"], ["c.w"]),
    }
}


def run(repo: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    repo = tmp_path / "toy"
    (repo / "data" / "raw").mkdir(parents=True)
    (repo / "data" / "raw" / "x.txt").write_text("raw data\n")
    (repo / "record.py").write_text(RECORD)
    (repo / "params.yaml").write_text(yaml.safe_dump(TOY_PARAMS))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(TOY_PIPELINE))
    git(repo, "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    run(repo, "dvc", "add", "-q", "data/raw")
    return repo


def lock_hashes(repo: Path) -> dict[str, str]:
    """Output path -> hash, as DVC recorded them in dvc.lock and the .dvc files."""
    found = {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        found.update({out["path"]: out["md5"] for out in stage.get("outs", [])})
    for dvcfile in (path for path in repo.rglob("*.dvc") if path.is_file()):
        for out in yaml.safe_load(dvcfile.read_text())["outs"]:
            found[(dvcfile.parent / out["path"]).relative_to(repo).as_posix()] = out["md5"]
    return found


def recorded(repo: Path, stage: str) -> dict[str, str]:
    return json.loads((repo / "out" / stage / "params.json").read_text())


def differing(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


@pytest.mark.e2e
def test_a_stage_records_its_lineage_params_and_the_hashes_dvc_recorded_upstream(toy: Path) -> None:
    run(toy, "dvc", "repro", "-q")
    hashes = lock_hashes(toy)
    assert recorded(toy, "c") == {
        "a.m.0": "0",
        "a.m.255": "1",
        "a.x": "1",
        "b.y": "2",
        "shared.k": "3",
        "c.w": "5",
        "deps.data/raw": hashes["data/raw"],
        "deps.out/a": hashes["out/a"],
        "deps.out/b": hashes["out/b"],
    }, "the side stage is no ancestor of c; record.py is code, not a DVC output"
    assert recorded(toy, "a") == {"a.m.0": "0", "a.m.255": "1", "a.x": "1", "deps.data/raw": hashes["data/raw"]}

    before = recorded(toy, "c")
    write_params(toy, {"a": {"m": {255: 255}}})
    run(toy, "dvc", "repro", "-q")
    after = recorded(toy, "c")
    assert differing(before, after) == {"a.m.255", "deps.out/a", "deps.out/b"}
    assert (before["a.m.255"], after["a.m.255"]) == ("1", "255")
    hashes = lock_hashes(toy)
    assert (after["deps.out/a"], after["deps.out/b"]) == (hashes["out/a"], hashes["out/b"])


# --- the real pipeline, run twice as the walkthrough does: evaluate runs differ in the label map alone -----------


@dataclasses.dataclass(frozen=True)
class LabelMapStore:
    """A tiny pipeline reproduced (GOOD), then reproduced again with the broken label map (BAD), in one store."""

    uri: str
    repo: Path
    good_lock: dict[str, str]
    bad_lock: dict[str, str]


def build_label_map_store(root: Path) -> None:
    root.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    repo = make_pipeline_repo(root / "repo")
    repro = [sys.executable, "-m", "dvc", "repro", "-q"]
    subprocess.run(repro, cwd=repo, env=env, check=True, capture_output=True)
    good_lock = lock_hashes(repo)
    write_params(repo, BROKEN_LABEL_MAP)
    subprocess.run(repro, cwd=repo, env=env, check=True, capture_output=True)
    record = {"uri": uri, "repo": str(repo), "good_lock": good_lock, "bad_lock": lock_hashes(repo)}
    (root / "store.json").write_text(json.dumps(record))


def load_label_map_store(tmp_path_factory: pytest.TempPathFactory) -> LabelMapStore:
    """Built once per pytest run, by whichever xdist worker asks first; the MLflow UI test compares its runs."""
    folder = built_once(tmp_path_factory, STORE, build_label_map_store)
    fields = json.loads((folder / "store.json").read_text())
    return LabelMapStore(fields["uri"], Path(fields["repo"]), fields["good_lock"], fields["bad_lock"])


@pytest.fixture(scope="session")
def label_map_store(tmp_path_factory: pytest.TempPathFactory) -> LabelMapStore:
    return load_label_map_store(tmp_path_factory)


def stage_runs(uri: str, stage: str) -> list[Any]:
    """The stage's runs in the experiment a plain `dvc repro` logs to, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("wise-deeplabv3plus")
    runs = client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'", order_by=["attributes.start_time"])
    return list(runs)


@pytest.mark.e2e
def test_evaluate_runs_of_two_configurations_differ_in_the_upstream_param_and_its_data(
    label_map_store: LabelMapStore,
) -> None:
    good, bad = (run.data.params for run in stage_runs(label_map_store.uri, "evaluate"))
    assert differing(good, bad) == {
        "prepare.label_map.255",
        "deps.data/prepared",
        "deps.data/processed",
        "deps.models",
    }
    assert (good["prepare.label_map.255"], bad["prepare.label_map.255"]) == ("1", "255")
    for params, lock in ((good, label_map_store.good_lock), (bad, label_map_store.bad_lock)):
        data = {key.removeprefix("deps."): value for key, value in params.items() if key.startswith("deps.")}
        assert data == {path: lock[path] for path in ("data/synthetic", "data/prepared", "data/processed", "models")}
    # The whole configuration: every key of params.yaml, as dvc.yaml names it.
    configured = as_flat_dict(yaml.safe_load((label_map_store.repo / "params.yaml").read_text()))
    assert {key for key in bad if not key.startswith("deps.")} == set(configured)
    assert all(bad[key] == str(value) for key, value in configured.items())


@pytest.mark.e2e
def test_each_stage_run_holds_its_lineage_and_nothing_downstream(label_map_store: LabelMapStore) -> None:
    upstream = {"synthesize": {"synthesize"}, "prepare": {"synthesize", "prepare", "classes"}}
    upstream["preprocess"] = upstream["prepare"] | {"preprocess"}
    upstream["train"] = upstream["preprocess"] | {"train"}
    upstream["evaluate"] = upstream["train"] | {"evaluate"}
    for stage in STAGES:
        for logged in stage_runs(label_map_store.uri, stage):
            sections = {key.split(".")[0] for key in logged.data.params if not key.startswith("deps.")}
            assert sections == upstream[stage], (stage, sorted(logged.data.params))


@pytest.mark.e2e
def test_the_broken_runs_metrics_flag_the_absent_foreground(label_map_store: LabelMapStore) -> None:
    good, bad = (run.data.metrics for run in stage_runs(label_map_store.uri, "evaluate"))
    assert bad["true_fraction_foreground"] == 0.0 and bad["absent_classes"] == 1.0
    assert bad["mean_iou"] == pytest.approx(bad["iou_background"] / 2) and bad["mean_iou"] <= 0.5
    assert "pixel_accuracy" not in bad and "pixel_accuracy" in good
    assert good["absent_classes"] == 0.0 and bad["all_zero_symptom"] == 1.0
    metrics = json.loads((label_map_store.repo / "reports" / "metrics.json").read_text())
    assert (metrics["absent_classes"], metrics["absent_class_names"], metrics["pixel_accuracy"]) == (
        1,
        ["foreground"],
        None,
    )


# --- the README's table of filters, run in both experiments ---------------------------------------------------

README = ROOT / "README.md"
PLACEHOLDER = re.compile(r'(tags|params)\.`?([\w.]+)`? = "(<\w+>)"')


def readme_filters() -> list[tuple[str, set[str]]]:
    """(filter, experiments it works in) for every row of the table in README.md's MLflow section."""
    section = README.read_text().split("\n## MLflow\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        code = cells[0][2:-2].strip() if cells[0].startswith("``") else cells[0][1:-1]
        rows.append((code, set(re.findall(r"`([^`]+)`", cells[-1]))))
    return rows


def filled(text: str, runs: list[Any]) -> str:
    """The filter with each `<...>` replaced by the value one of `runs` has for that key."""
    for kind, key, placeholder in PLACEHOLDER.findall(text):
        values = [getattr(run.data, kind).get(key) for run in runs]
        text = text.replace(placeholder, next(value for value in values if value is not None))
    return text


@pytest.mark.e2e
def test_readme_filters_find_runs_in_the_experiments_it_names(
    label_map_store: LabelMapStore, threshold_bisection: ThresholdBisection
) -> None:
    """`wise-deeplabv3plus` as a plain `dvc repro` fills it (the walkthrough's two configurations); `segbisect` as a
    bisection fills it. A filter finds runs in each experiment its row names, and none in the others."""
    from mlflow.tracking import MlflowClient

    stores = {"wise-deeplabv3plus": label_map_store.uri, "segbisect": threshold_bisection.uri}
    experiments = {name: MlflowClient(uri).get_experiment_by_name(name) for name, uri in stores.items()}
    every_run = {
        name: MlflowClient(stores[name]).search_runs([experiment.experiment_id], max_results=1000)
        for name, experiment in experiments.items()
    }
    rows = readme_filters()
    assert len(rows) >= 5, rows
    for text, names in rows:
        assert names and names <= set(stores), (text, names)
        for name, experiment in experiments.items():
            query = filled(text, every_run[name if name in names else sorted(names)[0]])
            found = MlflowClient(stores[name]).search_runs([experiment.experiment_id], query, max_results=1000)
            assert bool(found) == (name in names), (query, name, len(found))
