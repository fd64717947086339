"""What `--executor ray` refuses before it starts or joins a Ray cluster: each a one-line usage error, exit 2,
nothing run and no results folder made. (The cluster itself is tested in tests/ray_cases.py, joining an address
that answers something else in tests/test_ray_connect.py.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from segbisect.executors.ray import INSTALL_HINT
from segbisect_toy import bad_commit, bisect, dvc
from ui_server import free_port


def refused(repo: Path, *args: str, mlflow: bool = False) -> str:
    code, report, _ = bisect(repo, "good", "bad", "--executor", "ray", *args, mlflow=mlflow)
    assert code == 2 and report["verdict"] == "usage-error"
    assert not (repo / "segbisect-results").exists()
    return str(report["error"])


def test_without_ray_installed_the_error_says_how_to_install_it(
    toy_with_remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the package is absent
    assert refused(toy_with_remote) == INSTALL_HINT


def test_a_tracking_store_on_this_machine_is_refused(toy_with_remote: Path, tracking_uri: str) -> None:
    error = refused(toy_with_remote, mlflow=True)
    assert error.startswith(f"--executor ray: the MLflow store {tracking_uri} lives on this machine")
    assert "start `mlflow server`" in error and "--no-mlflow" in error


def test_a_dvc_remote_is_required_and_must_exist(toy: Path) -> None:
    bad_commit(toy, params={"train": {"lr": 2.0}})
    assert "needs a DVC remote that every worker reaches: pass --remote NAME" in refused(toy)
    dvc(toy, "remote", "add", "other", "/tmp/elsewhere")
    assert refused(toy, "--remote", "shared") == f"{toy}: no DVC remote named 'shared' (configured: other)"


def test_a_ray_address_where_nothing_listens_is_refused_at_once(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray itself would retry for minutes, printing "Failed to connect to GCS" lines; the probe says it in one."""
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    assert refused(toy, "--ray-address", address).startswith(f"--ray-address {address}: nothing answers there")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://{address}")
    assert refused(toy).startswith(f"RAY_ADDRESS=ray://{address}: nothing answers there")
    assert time.monotonic() - start < 10
