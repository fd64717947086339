"""One hybrid on a cluster worker: unpack its files into a fresh repository, fetch from the shared DVC remote, run,
push back, and return everything the driver needs as data, one `WorkerResult` (no path on this node survives
the task).

The remote carries stages between nodes: its run-cache says which stage inputs were already computed, anywhere,
and `dvc repro --pull` restores those stages' outputs from it instead of running them. What this hybrid ran is
pushed with its run-cache entries, so later hybrids on any node restore it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from segbisect.core import machine
from segbisect.core.attempt import Attempt, AttemptPolicy, AttemptStatus
from segbisect.executors.archive import unpack
from segbisect.executors.placement import Placement
from segbisect.project import figures, gateway, reading, runner
from segbisect.project.runner import STATE_VARIABLE, Processes, Site, Task

REMOTE_NAME = "segbisect"
LOG_TAIL_BYTES = 256 * 1024
GIT_IDENTITY = ("-c", "user.name=segbisect", "-c", "user.email=segbisect@localhost")


@dataclass(frozen=True, kw_only=True)
class WorkerJob:
    """What travels to the worker with the hybrid's archive: the remote's DVC options (url, endpoint, ...), the
    variables the stages need from the driver (tracking URI, session tags) and the attempt plan.
    """

    hybrid_id: str
    remote: dict[str, str]
    env: dict[str, str]
    task: Task
    policy: AttemptPolicy


@dataclass(frozen=True, kw_only=True)
class WorkerResult:
    """What a hybrid's task gives the driver, all of it data (no path on the worker survives the task): the
    attempts, where they ran (the driver adds it to each, with where restored stages came from), the log's tail,
    the kept plot images' bytes by declared path, and the stages' run-cache keys (see `stage_keys`).
    """

    attempts: tuple[Attempt, ...]
    placement: Placement
    log: bytes
    figures: dict[str, bytes]
    stage_keys: dict[str, str]


def numeric_environment() -> dict[str, Any]:
    """What a hybrid's attempts record on a worker taking the resources a hybrid takes (Ray sets thread counts, such
    as OMP_NUM_THREADS, by the CPUs a task asks for)."""
    return machine.describe()


def run_hybrid(archive: bytes, job: WorkerJob) -> WorkerResult:
    """The hybrid's attempts, where and how long (by phase) they ran, its log tail, kept images and stage keys."""
    node = _node()
    scratch = Path(tempfile.mkdtemp(prefix=f"segbisect-{job.hybrid_id}-"))
    root, log = scratch / "repo", scratch / "hybrid.log"
    try:
        unpack(archive, root)
        _prepare(root, job, node)
        env = stage_env(job)
        seconds: dict[str, float] = {}
        failure = _timed(seconds, "fetch", job.policy.retries, gateway.fetch, root, job.task.data_sources)
        if failure:
            done = [Attempt(status=AttemptStatus.ERROR, reason=f"fetching from the DVC remote failed: {failure}")]
        else:
            start = time.monotonic()
            # A cancelled task (Ctrl-C on the driver) is interrupted while it waits: the stages it runs end with it.
            task = replace(job.task, repro_args=("--pull",))
            done = runner.attempts(Site(procs=Processes(), workspace=root, log=log, task=task, env=env), job.policy)
            seconds["run"] = round(time.monotonic() - start, 2)
            if done[-1].status == AttemptStatus.OK:
                failure = _timed(seconds, "push", job.policy.retries, gateway.push, root)
                if failure:
                    done[-1] = replace(done[-1], status=AttemptStatus.ERROR, reason=f"pushing failed: {failure}")
        kept = figures.keep(root, job.task.plots, scratch / "figures") if done[-1].status == AttemptStatus.OK else {}
        return WorkerResult(
            attempts=tuple(done),
            placement=Placement(node=node["id"], host=node["host"], seconds=seconds),
            log=_tail(log),
            figures={name: Path(path).read_bytes() for name, path in kept.items()},
            stage_keys=stage_keys(root),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stage_keys(root: Path) -> dict[str, str]:
    """Per stage in `dvc.lock`, a digest of what DVC's run-cache keys on (command, dependencies, params), so the
    driver can tell which earlier hybrid computed a stage that a later one restored.
    """
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (reading.load_yaml(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    keys = {}
    for name, entry in stages.items():
        inputs = {k: entry.get(k) for k in ("cmd", "deps", "params")}
        keys[name] = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return keys


def _node() -> dict[str, str]:
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # outside a Ray task (a direct call): this machine
        node_id = "local"
    return {"id": node_id, "host": socket.gethostname()}


def node_caches() -> Path:
    """Where each node keeps its DVC cache, one folder per node id, shared by that node's hybrids."""
    return Path(tempfile.gettempdir()) / "segbisect-dvc-cache"


def node_states() -> Path:
    """Where each node keeps the sessions' state folders (`runner.STATE_VARIABLE`), one per session and journal."""
    return Path(tempfile.gettempdir()) / "segbisect-state"


def stage_env(job: WorkerJob) -> dict[str, str]:
    """The worker's environment with the driver's variables, the hybrid's id, and the session's state folder on this
    node: the driver's own folder is on another machine. A hybrid that runs again on another node finds no state
    there and starts afresh; state is named by the journal too, so a `--fresh` session never finds an earlier one's.
    """
    env = {**os.environ, **job.env, "SEGBISECT_HYBRID": job.hybrid_id}
    env.pop(STATE_VARIABLE, None)
    if job.task.state:
        folder = node_states() / job.task.state
        folder.mkdir(parents=True, exist_ok=True)
        env[STATE_VARIABLE] = str(folder)
    return env


def _prepare(root: Path, job: WorkerJob, node: dict[str, str]) -> None:
    """A git repository (DVC and the stages read git) whose DVC cache is this node's and whose remote is the shared
    one; written to config.local, which the archive never carries.
    """
    subprocess.run(["git", "init", "-q", "-b", "hybrid"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-q", "-m", "hybrid"], cwd=root, check=True)
    cache = node_caches() / node["id"]
    lines = ["[core]", f"    remote = {REMOTE_NAME}", "[cache]", f"    dir = {cache}", f"['remote \"{REMOTE_NAME}\"']"]
    lines += [f"    {key} = {value}" for key, value in job.remote.items()]
    (root / ".dvc" / "config.local").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _timed(seconds: dict[str, float], phase: str, retries: int, call: Any, *args: Any) -> str:
    """Run one phase, again up to `retries` times while it fails; its last error in one line ("" when it worked),
    never an exception out of the task.
    """
    start = time.monotonic()
    failure = ""
    for _ in range(1 + retries):
        try:
            call(*args)
            failure = ""
            break
        except Exception as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    seconds[phase] = round(time.monotonic() - start, 2)
    return failure


def _tail(log: Path) -> bytes:
    if not log.is_file():
        return b""
    with open(log, "rb") as handle:
        handle.seek(max(log.stat().st_size - LOG_TAIL_BYTES, 0))
        return handle.read()
