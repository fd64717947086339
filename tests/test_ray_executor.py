"""The Ray executor's real-cluster cases (tests/ray_cases.py), run inside private network namespaces.

Ray binds the machine's interface address; in a namespace of its own (`unshare -n`) only loopback exists, so
every Ray node, the S3 endpoint and the MLflow server stay on 127.0.0.1. The cases run in two groups, each one
pytest session in a namespace of its own, so that the xdist workers share them; a test fails with its group's
output when any case of the group fails. `pytest -m ray` runs them alone; RAY_CASES (a pytest -k expression)
picks some of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

CASES = Path(__file__).with_name("ray_cases.py")

# Two groups of about equal length, as -k expressions over the cases' names: the tiny pipeline's case, and the
# toy's cases. Each group pays for the start of a pytest session of its own, so there are few.
PIPELINE = "test_the_tiny_pipeline_logs_its_stage_runs_to_an_mlflow_server"
GROUPS = {"tiny-pipeline": PIPELINE, "toy": f"not {PIPELINE}"}


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
def test_ray_executor_cases_in_a_private_network(tmp_path: Path, group: str) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "the Ray tests need util-linux's unshare (a private network namespace)"
    picked = os.environ.get("RAY_CASES", "")
    selection = f"({group}) and ({picked})" if picked else group
    pytest_args = [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider"]
    pytest_args += ["--basetemp", str(tmp_path / "cases"), "-k", selection]
    command = 'ip link set lo up && exec "$@"'
    # A Ray temp folder of the group's own: Ray's "current cluster" file there, which a plain `ray.init()` joins,
    # is never another group's (the namespaces share /tmp). Short, as Ray's socket paths must be.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp", ignore_cleanup_errors=True) as ray_tmp:
        done = subprocess.run(
            [unshare, "-n", "sh", "-c", command, "sh", *pytest_args],
            cwd=CASES.parents[1],
            env={**os.environ, "RAY_TMPDIR": ray_tmp},
            capture_output=True,
            text=True,
            timeout=840,
        )
    if picked and done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED:
        pytest.skip(f"RAY_CASES={picked!r} picks none of this group's cases")
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-3000:]
