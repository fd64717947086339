"""Run `dvc repro` (and an optional `--run` check) in a workspace and read what happened.

Which stages executed and which were restored is read from DVC's own log lines, so cache reuse is
measured rather than assumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segbisect import machine
from segbisect.predicate import flatten

RAN = re.compile(r"^Running stage '(.+)':")
RESTORED = (re.compile(r"^Stage '(.+)' is cached - skipping run"), re.compile(r"^Stage '(.+)' didn't change, skipping"))


@dataclass
class Attempt:
    """One execution of a hybrid: status ok | crash | no-metrics, the evidence, and the machine it ran on."""

    status: str
    executed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    diagnostics: Any = None
    seconds: float = 0.0
    reason: str = ""
    check_rc: int | None = None
    machine: dict[str, Any] = field(default_factory=machine.describe)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Processes:
    """Child process groups of this session, so Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def run(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
        with open(log, "ab") as out, self._lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._procs:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def attempt(
    procs: Processes, workspace: Path, env: dict[str, str], log: Path, metrics_file: str,
    check: str | None = None, force: list[str] | None = None, diagnostics: str | None = None,
    data_sources: list[str] | None = None,
) -> Attempt:
    """`dvc repro` in `workspace` (forcing `force` stages when repeating), then read metrics or run the check.

    DVC-tracked data (`.dvc` files) is checked out from the shared cache first: a fresh worktree lacks it.
    """
    start = time.monotonic()
    offset = log.stat().st_size if log.exists() else 0
    dvc = [sys.executable, "-m", "dvc"]
    present = [d for d in data_sources or [] if (workspace / d).is_file()]
    rc = procs.run([*dvc, "checkout", "--quiet", *present], workspace, env, log) if present else 0
    if rc == 0:
        rc = procs.run([*dvc, "repro", *(["--force", "--single-item", *force] if force else [])], workspace, env, log)
    executed, restored, last_words = _parse(log.read_bytes()[offset:].decode(errors="replace"))
    result = Attempt("ok", executed, restored)
    if rc != 0:
        where = f"stage '{executed[-1]}'" if executed else "dvc"
        result.status, result.reason = "crash", f"{where} failed (exit {rc}): {last_words}"
    else:
        result.metrics, result.reason = read_metrics(workspace / metrics_file)
        result.status = "ok" if result.metrics else "no-metrics"
        result.diagnostics = _read_diagnostics(workspace / diagnostics) if diagnostics else None
        if check and result.status == "ok":
            result.check_rc = procs.run(["bash", "-c", check], workspace, env, log)
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _parse(output: str) -> tuple[list[str], list[str], str]:
    """Executed and restored stages in order, and the failing stage's last words (its one-line reason)."""
    executed, restored, reason = [], [], ""
    for line in output.splitlines():
        if match := RAN.match(line):
            executed.append(match.group(1))
        elif match := next((m for p in RESTORED if (m := p.match(line))), None):
            restored.append(match.group(1))
        elif line.strip() and not line.startswith(("> ", "ERROR", "Updating lock", "Generating lock")):
            reason = line.strip()
    return executed, restored, reason


def read_metrics(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        return {}, f"metrics file {path.name} is missing"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return {}, f"metrics file {path.name} is unreadable: {str(exc).splitlines()[0]}"
    flat = flatten(data)
    return flat, "" if flat else f"metrics file {path.name} is empty"


def _read_diagnostics(path: Path) -> Any:
    """The project's diagnostics file (`[tool.segbisect] diagnostics`), evidence for the report; None if unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
