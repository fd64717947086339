"""The Ray executor's real-cluster cases (tests/ray_cases.py), run inside a private network namespace.

Ray binds the machine's interface address; in a namespace of its own (`unshare -n`) only loopback exists, so
every Ray node, the S3 endpoint and the MLflow server stay on 127.0.0.1. The cases run as one pytest session
there; this test fails with their output when any of them fails. `pytest -m ray` runs them alone; RAY_CASES
(a pytest -k expression) picks some of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

CASES = Path(__file__).with_name("ray_cases.py")


def test_ray_executor_cases_in_a_private_network(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "the Ray tests need util-linux's unshare (a private network namespace)"
    pytest_args = [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider"]
    pytest_args += ["--basetemp", str(tmp_path / "cases"), "-k", os.environ.get("RAY_CASES", "")]
    command = 'ip link set lo up && exec "$@"'
    done = subprocess.run(
        [unshare, "-n", "sh", "-c", command, "sh", *pytest_args],
        cwd=CASES.parents[1],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-3000:]
