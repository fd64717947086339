"""Joining a Ray cluster at an address where something answers that is no Ray head: segbisect gives up within
30 s with one line naming the address, and SIGTERM ends it at once while Ray is still connecting (an address where
nothing listens at all is refused by the probe: tests/test_ray_preflight.py).

The stand-in head takes TCP connections and never says a word, so Ray's connection waits in native code, where
Python runs no signal handler.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SEGBISECT = Path(sys.executable).parent / "segbisect"


class SilentHead:
    """A listening socket on every interface (Ray connects to this machine's address, not loopback) that accepts
    connections and keeps them open, counting them.
    """

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:  # closed
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def head() -> Iterator[SilentHead]:
    silent = SilentHead()
    try:
        yield silent
    finally:
        silent.close()


def command(repo: Path, address: str) -> list[str]:
    return [str(SEGBISECT), "good", "bad", "--repo", str(repo), "--executor", "ray", "--ray-address", address, "--json"]


def test_an_address_that_answers_but_is_no_ray_head_fails_within_30_s(toy_with_remote: Path, head: SilentHead) -> None:
    address = f"127.0.0.1:{head.port}"
    start = time.monotonic()
    done = subprocess.run(
        [*command(toy_with_remote, address), "--no-mlflow"], capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - start
    report = json.loads(done.stdout)
    assert done.returncode == 2 and report["verdict"] == "usage-error", done.stderr[-3000:]
    assert report["error"].startswith(f"--ray-address {address}: something answers there, but no Ray cluster joined")
    assert took < 30, f"took {took:.0f} s"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {report['error']}"]


def test_sigterm_ends_segbisect_while_ray_is_connecting(toy_with_remote: Path, head: SilentHead) -> None:
    with subprocess.Popen(
        [*command(toy_with_remote, f"127.0.0.1:{head.port}"), "--no-mlflow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        deadline = time.monotonic() + 60
        # The first connection is segbisect's probe, the next Ray's.
        while len(head.accepted) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(head.accepted) >= 2, "Ray never connected"
        time.sleep(1)  # Ray is inside its connection now
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    assert proc.returncode == 130 and json.loads(out)["verdict"] == "interrupted", err.decode()[-3000:]
    assert took < 5, f"segbisect ended {took:.1f} s after SIGTERM"
