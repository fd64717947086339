"""segbisect --executor ray on real Ray, real DVC remotes (a folder, S3 from moto's server) and a real MLflow server.

Ray binds the machine's interface address, so these cases run inside a private network namespace where only
loopback exists: tests/test_ray_executor.py starts them there (`unshare -n`). Every node keeps its own DVC cache
(keyed by Ray's node id), so only the remote can carry a stage from one node to another. The cases that join a
cluster by its address share one head per session (`cluster`), each with worker nodes of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray._common.utils import reset_ray_address
from ray.cluster_utils import Cluster

from segbisect_toy import bad_commit, bisect, commit, dvc, sh, unit_names, write_params
from support import make_pipeline_repo
from ui_server import MlflowServer, free_port

pytestmark = pytest.mark.e2e

S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


def with_remote(repo: Path, url: str, **options: str) -> Path:
    """Make `url` the repository's default DVC remote (committed: GOOD carries it), then a BAD beside GOOD:
    a collapsing learning rate (the culprit) and a harmless data change.
    """
    dvc(repo, "remote", "add", "-d", "shared", url)
    for key, value in options.items():
        dvc(repo, "remote", "modify", "--local", "shared", key, value)
    commit(repo, "shared DVC remote")
    sh(repo, "git", "tag", "-f", "good")
    bad_commit(repo, params={"train": {"lr": 2.0}, "prepare": {"n": 42}})
    return repo


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[str]:
    """An S3 endpoint on loopback with one bucket; yields its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **keys).create_bucket(Bucket="runs")
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def loopback_head() -> Iterator[Cluster]:
    """A Ray head without CPUs (it schedules nothing) on loopback, started once per session: the cases add their
    worker nodes to it. Ray's test cluster makes itself the machine's current cluster, which a plain `ray.init()`
    (segbisect without --ray-address) would join: forgotten here, so such a case starts a local instance of its own
    whatever ran before it."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    reset_ray_address()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def cluster(loopback_head: Cluster) -> Iterator[Cluster]:
    """The shared head, with no worker node; the nodes a case adds are removed after it."""
    assert not loopback_head.worker_nodes, "an earlier case left worker nodes behind"
    try:
        yield loopback_head
    finally:
        for node in list(loopback_head.worker_nodes):
            loopback_head.remove_node(node)


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    """The head and two one-CPU worker nodes, all on loopback."""
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def by_label(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["label"]: h for h in report["hybrids"]}


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {h["label"]: h["outcome"] for h in report["hybrids"]}


def test_a_local_ray_reaches_the_local_verdict_and_says_where_restored_stages_came_from(
    toy: Path, tmp_path: Path
) -> None:
    repo = with_remote(toy, str(tmp_path / "remote"))
    code, local, _ = bisect(repo, "good", "bad", "--jobs", "2", "--results", str(tmp_path / "local"))
    code_ray, remote, _ = bisect(
        repo, "good", "bad", "--executor", "ray", "--jobs", "2", "--results", str(tmp_path / "ray")
    )
    assert (code, code_ray) == (0, 0) and remote["verdict"] == local["verdict"] == "culprit"
    assert unit_names(remote) == unit_names(local) == ["train.lr"]
    assert outcomes(remote) == outcomes(local)
    assert not ray.is_initialized(), "segbisect shuts down the Ray instance it started"

    hybrids = by_label(remote)
    assert all(len(h["placement"]["node"]) == 56 for h in hybrids.values())
    assert all(set(h["placement"]["seconds"]) == {"fetch", "run", "push"} for h in hybrids.values())
    # The remote starts empty: GOOD computes its stages (preprocess's output equals prepare's, so DVC finds it
    # in the cache), BAD all four; the hybrid with BAD's data restores both data stages that BAD ran.
    assert hybrids["GOOD"]["executed"] == ["prepare", "train", "evaluate"]
    assert hybrids["GOOD"]["restored"] == ["preprocess"]
    assert hybrids["BAD"]["executed"] == ["prepare", "preprocess", "train", "evaluate"]
    data_from_bad = hybrids["search: prepare"]
    assert data_from_bad["executed"] == ["train", "evaluate"] and data_from_bad["restored"] == ["prepare", "preprocess"]
    bad = hybrids["BAD"]
    origin = f"{bad['id']} on node {bad['placement']['node'][:8]}"
    assert data_from_bad["placement"]["restored_from"] == {"prepare": origin, "preprocess": origin}
    assert remote["stage_executions"] == local["stage_executions"] + 3
    table = (Path(remote["results_dir"]) / "report.md").read_text()
    assert f"prepare: {origin}" in table and "fetch/run/push s:" in table

    # The same command resumes: every hybrid is reused, its attempts computed in the environment a worker reports
    # (Ray sets thread counts there that the driver lacks).
    code_again, again, said = bisect(
        repo, "good", "bad", "--executor", "ray", "--jobs", "2", "--results", str(tmp_path / "ray")
    )
    assert code_again == 0 and [h["reused"] for h in again["hybrids"]] == [True] * len(hybrids), said
    assert "another environment" not in said


def test_two_nodes_share_stages_only_through_the_remote(toy: Path, tmp_path: Path, two_nodes: Cluster) -> None:
    """GOOD and BAD run at once, one per node; a second bisection on new nodes (empty caches) restores every
    stage it can from the remote.
    """
    repo = with_remote(toy, str(tmp_path / "remote"))
    args = ["good", "bad", "--executor", "ray", "--ray-address", two_nodes.address, "--jobs", "2"]
    code, first, _ = bisect(repo, *args, "--results", str(tmp_path / "first"))
    assert code == 0 and unit_names(first) == ["train.lr"]
    nodes = {h["label"]: h["placement"]["node"] for h in first["hybrids"]}
    assert nodes["GOOD"] != nodes["BAD"], "one CPU per node: the two hybrids in flight ran on different nodes"
    assert not ray.is_initialized(), "segbisect disconnects from the cluster it was given"

    for node in list(two_nodes.worker_nodes):
        two_nodes.remove_node(node)
    two_nodes.add_node(num_cpus=1)
    two_nodes.wait_for_nodes()
    code, second, _ = bisect(repo, *args, "--results", str(tmp_path / "second"))
    assert code == 0 and unit_names(second) == ["train.lr"]
    # Only evaluate runs again: its metrics file is `cache: false`, which DVC's run-cache cannot restore.
    ran = {h["label"]: h["executed"] for h in second["hybrids"]}
    assert ran == {"GOOD": [], "BAD": ["evaluate"], "search: prepare": ["evaluate"], "search: train": ["evaluate"]}
    assert by_label(second)["BAD"]["restored"] == ["prepare", "preprocess", "train"]
    for hybrid in second["hybrids"]:
        assert hybrid["placement"]["node"] not in nodes.values()
        assert set(hybrid["placement"]["restored_from"].values()) <= {"before this session"}


def test_an_s3_remote_on_loopback_carries_stages_between_hybrids(toy: Path, tmp_path: Path, moto_s3: str) -> None:
    repo = with_remote(toy, "s3://runs/dvc", endpointurl=moto_s3, **S3_KEYS)
    code, report, _ = bisect(repo, "good", "bad", "--executor", "ray", "--jobs", "2")
    assert code == 0 and unit_names(report) == ["train.lr"]
    assert by_label(report)["search: prepare"]["restored"] == ["prepare", "preprocess"]
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="dvc/")["Contents"]]
    assert any(key.startswith("dvc/runs/") for key in stored), "the run-cache entries were pushed"


def test_an_unreachable_remote_is_an_environment_error_never_evidence(toy: Path, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    repo = with_remote(toy, "s3://runs/dvc", endpointurl=closed, **S3_KEYS)
    code, report, _ = bisect(repo, "good", "bad", "--executor", "ray", "--retries", "0")
    assert code == 1 and report["verdict"] == "cannot-decide" and report["culprit"] is None
    good = by_label(report)["GOOD"]
    assert good["outcome"] == "error" and "fetching from the DVC remote failed" in good["note"]
    assert len(good["placement"]["node"]) == 56, "the error names the node"
    assert not (Path(report["results_dir"]) / "journal.jsonl").read_text().count('"type": "hybrid"')


def test_a_node_dying_mid_hybrid_changes_nothing(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    """The first train of the bisection sleeps; its node is removed meanwhile; Ray runs the task again on a new
    node (where the marker file already exists, so it does not sleep) and the verdict is the local one.
    """
    repo = with_remote(toy, str(tmp_path / "remote"))
    marker = tmp_path / "slept"
    monkeypatch.setenv("TOY_FAULT", f"train:slow:{marker}")
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    segbisect = Path(sys.executable).parent / "segbisect"
    command = [str(segbisect), "good", "bad", "--repo", str(repo), "--executor", "ray", "--no-mlflow", "--json"]
    with subprocess.Popen([*command, "--ray-address", cluster.address], stdout=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the first train never started"
        cluster.remove_node(doomed)
        cluster.add_node(num_cpus=1)
        out, _ = proc.communicate(timeout=300)
    report = json.loads(out)
    assert proc.returncode == 0 and unit_names(report) == ["train.lr"]
    ran_on = {h["placement"]["node"] for h in report["hybrids"]}
    assert len(ran_on) == 1 and doomed.node_id not in ran_on, "every hybrid finished on the new node"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_cancels_the_running_hybrids_and_ends_their_stages(
    toy: Path, tmp_path: Path, sig: int
) -> None:
    repo = with_remote(toy, str(tmp_path / "remote"))
    marker = tmp_path / "slept"
    segbisect = Path(sys.executable).parent / "segbisect"
    command = [str(segbisect), "good", "bad", "--repo", str(repo), "--executor", "ray", "--no-mlflow", "--json"]
    fault = f"train:slow:{marker}"
    env = {**os.environ, "TOY_FAULT": fault}
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env) as proc:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the first train never started"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and json.loads(out)["verdict"] == "interrupted"
    assert not stages_of(fault), "the cancelled hybrid's stage processes were ended"


def test_a_remote_exception_is_named_in_the_reason_and_its_traceback_is_in_the_log(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file where the workers keep the sessions' state folders: the task raises on the worker (Ray's own session
    folder stays where it was, in a short path where its socket paths fit).
    """
    repo = with_remote(toy, str(tmp_path / "remote"))
    workers_tmp = tmp_path / "worker-tmp"
    workers_tmp.mkdir()
    (workers_tmp / "segbisect-state").write_text("not a folder\n")
    monkeypatch.setenv("TMPDIR", str(workers_tmp))
    monkeypatch.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", "/tmp"))
    code, report, _ = bisect(repo, "good", "bad", "--executor", "ray", "--retries", "0")
    assert code == 1 and report["verdict"] == "cannot-decide"
    good = by_label(report)["GOOD"]
    assert good["outcome"] == "error"
    assert good["note"].startswith("the Ray task failed: NotADirectoryError: [Errno 20] Not a directory: "), good
    assert good["note"].endswith(f"(traceback in logs/{good['id']}.log)")
    log = (Path(report["results_dir"]) / "logs" / f"{good['id']}.log").read_text()
    assert "in stage_env" in log and "NotADirectoryError: [Errno 20] Not a directory" in log


def stages_of(fault: str) -> list[int]:
    """Toy train stages alive with this TOY_FAULT in their environment (one test's, not an earlier test's)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            variables = (proc / "environ").read_bytes().split(b"\0")
            if f"TOY_FAULT={fault}".encode() in variables and b"train.py" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def test_the_tiny_pipeline_logs_its_stage_runs_to_an_mlflow_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOOD reproduced and pushed once; the threshold bug is found in evaluate, every other stage restored from
    the remote, and the hybrids' stage runs land in the server's store, nested under their hybrid.
    """
    repo = make_pipeline_repo(tmp_path / "repo", {"evaluate": {"postprocess": "threshold", "threshold": 1e-6}})
    sh(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    env = {**os.environ, "SEGBISECT_TRACKING": "off"}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "push", "-q", "--run-cache"], cwd=repo, env=env, check=True)
    commit(repo, "GOOD: reproduced, pushed")
    sh(repo, "git", "tag", "good")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"].update(threshold=1.0, n_overlays=1)
    write_params(repo, params)
    commit(repo, "BAD: threshold 1.0 (and a harmless change)")
    sh(repo, "git", "tag", "bad")
    store = f"sqlite:///{tmp_path / 'server.db'}"
    with MlflowServer(store, tmp_path / "mlflow.log") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        code, report, output = bisect(repo, "good", "bad", "--executor", "ray", "--jobs", "2", mlflow=True)
    assert code == 0, output
    assert report["culprit"]["stage"] == "evaluate" and unit_names(report) == ["evaluate.threshold"]
    hybrids = by_label(report)
    assert hybrids["GOOD"]["executed"] == [] and len(hybrids["GOOD"]["restored"]) == 5 and len(hybrids) == 4
    assert all(h["executed"] == ["evaluate"] for label, h in hybrids.items() if label != "GOOD")
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("segbisect").experiment_id])
    children = {r.info.run_id for r in runs if r.data.tags.get("segbisect.role") == "hybrid"}
    stage_runs = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert len(stage_runs) == 3 and {r.data.tags["mlflow.parentRunId"] for r in stage_runs} <= children


def test_a_hybrid_bigger_than_every_node_is_refused_before_anything_runs(
    toy: Path, tmp_path: Path, two_nodes: Cluster
) -> None:
    repo = with_remote(toy, str(tmp_path / "remote"))
    args = ["good", "bad", "--executor", "ray", "--ray-address", two_nodes.address, "--hybrid-gpus", "1"]
    code, report, _ = bisect(repo, *args)
    assert code == 2
    assert report["error"] == (
        "--hybrid-cpus 1 --hybrid-gpus 1: no node of the Ray cluster has that much (the largest has 1 CPUs and 0 GPUs)"
    )
