"""The Ray executor: each hybrid is one Ray task, on whichever node has the resources it asks for.

A task receives the hybrid as a small archive of tracked files (code, params, `dvc.yaml`, `dvc.lock`, `.dvc`
files; never git history, data or the user's untracked files) and works against the shared DVC remote (see
ray_worker.py). Ray retries a task whose node died; anything else the worker's environment does wrong comes back
as an environment error naming the node, never as a pass or a fail.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from segbisect import figures
from segbisect.attempt import Attempt, AttemptStatus
from segbisect.errors import UsageError
from segbisect.executor import Job
from segbisect.materialize import materialize
from segbisect.options import ClusterOptions
from segbisect.ray_worker import WorkerJob, node_name, pack, run_hybrid
from segbisect.runner import Task
from segbisect.snapshot import Snapshot

INSTALL_HINT = "--executor ray needs Ray on this machine and every worker: pip install -e '.[ray]'"
# A task whose node died runs again elsewhere this many times before the hybrid is an environment error.
NODE_RETRIES = 3
# What the stages need from the driver's environment; everything else (PATH, caches, devices) is the worker's own.
DRIVER_VARIABLES = ("MLFLOW_", "SEGBISECT_")
LOCAL_STORES = ("", "file", "sqlite")
STOP_GRACE_SECONDS = 15.0


def preflight(repo: Path, options: ClusterOptions, tracking: str | None) -> dict[str, str]:
    """Everything that would fail on the workers, checked here first; returns the remote's DVC options."""
    import_ray()
    if tracking is not None and urlparse(tracking).scheme in LOCAL_STORES:
        raise UsageError(
            f"--executor ray: the MLflow store {tracking} lives on this machine, where workers cannot log: start "
            "`mlflow server` and set MLFLOW_TRACKING_URI to its http:// address, or pass --no-mlflow"
        )
    return remote_options(repo, options.remote)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def remote_options(repo: Path, name: str | None) -> dict[str, str]:
    """The DVC remote's options as this repository's config resolves them (local paths made absolute)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        chosen = name or config["core"].get("remote")
        remotes = config.get("remote", {})
    if not chosen:
        raise UsageError(
            f"{repo}: --executor ray needs a DVC remote that every worker reaches: pass --remote NAME or set a "
            "default (dvc remote add -d NAME URL)"
        )
    if chosen not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise UsageError(f"{repo}: no DVC remote named '{chosen}' (configured: {known})")
    return {key: _config_value(value) for key, value in remotes[chosen].items()}


def _config_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class RayExecutor:
    """An `Executor` over Ray tasks. Stage provenance: every stage a hybrid ran is remembered by its run-cache
    inputs, so a later hybrid that restored it can say which hybrid and node computed it.
    """

    def __init__(
        self,
        *,
        good: Snapshot,
        bad: Snapshot,
        task: Task,
        logs: Path,
        figures_root: Path,
        options: ClusterOptions,
        remote: dict[str, str],
    ) -> None:
        self.good, self.bad, self.task, self.logs, self.figures_root = good, bad, task, logs, figures_root
        self.remote = remote
        self._ray = import_ray()
        self._started = not self._ray.is_initialized()
        if self._started:
            self._ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
        try:
            _check_resources(self._ray, options)
        except UsageError:
            self.close()
            raise
        self._run = self._ray.remote(run_hybrid).options(
            num_cpus=options.cpus, num_gpus=options.gpus, max_retries=NODE_RETRIES
        )
        self._env = {k: v for k, v in task.env.items() if k.startswith(DRIVER_VARIABLES)}
        self._lock = threading.Lock()
        self._pending: set[Any] = set()
        self._computed: dict[str, str] = {}

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]:
        work = WorkerJob(
            hybrid_id=job.hybrid_id,
            remote=self.remote,
            env=self._env,
            task=self.task,
            repeat=job.repeat,
            retries=job.retries,
        )
        ref = self._run.remote(self._archive(job), work)
        with self._lock:
            self._pending.add(ref)
        out: Future[tuple[Attempt, ...]] = Future()
        ref.future().add_done_callback(lambda done: self._deliver(job, ref, done, out))
        return out

    def stop(self) -> None:
        """Cancel every outstanding task and give them a moment to end their stages' process groups (a task
        cancelled this way is interrupted, not killed) before the cluster connection goes.
        """
        with self._lock:
            pending = list(self._pending)
        for ref in pending:
            self._ray.cancel(ref)
        if pending:
            self._ray.wait(pending, num_returns=len(pending), timeout=STOP_GRACE_SECONDS)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()

    def _archive(self, job: Job) -> bytes:
        """GOOD's exported tree with the job's units from BAD written in, packed."""
        with tempfile.TemporaryDirectory(prefix="segbisect-pack-") as scratch:
            tree = Path(scratch) / "tree"
            shutil.copytree(self.good.root, tree, symlinks=True)
            materialize(tree, self.good, self.bad, list(job.units))
            return pack(tree)

    def _deliver(self, job: Job, ref: Any, done: Future[dict[str, Any]], out: Future[tuple[Attempt, ...]]) -> None:
        with self._lock:
            self._pending.discard(ref)
        try:
            result = done.result()
        except Exception as exc:  # the task itself failed: its node kept dying, or it was cancelled
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"the Ray task failed ({type(exc).__name__}): {first}"
            out.set_result((Attempt(status=AttemptStatus.ERROR, reason=reason),))
            return
        try:
            out.set_result(self._received(job, result))
        except Exception as exc:
            out.set_exception(exc)

    def _received(self, job: Job, result: dict[str, Any]) -> tuple[Attempt, ...]:
        """Write the log and images where the local executor would, and say where restored stages came from."""
        (self.logs / f"{job.hybrid_id}.log").write_bytes(result["log"])
        folder = figures.folder(self.figures_root, job.fingerprint)
        kept = {}
        for name, data in result["figures"].items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            kept[name] = str(target)
        attempts = [Attempt.from_record(record) for record in result["attempts"]]
        keys: dict[str, str] = result["stage_keys"]
        node = attempts[-1].placement.get("node", "?")
        with self._lock:
            ran = {stage for attempt in attempts for stage in attempt.executed if stage in keys}
            self._computed.update({keys[stage]: f"{job.hybrid_id} on node {node_name(node)}" for stage in ran})
            origin = {s: self._computed.get(keys.get(s, ""), "before this session") for s in attempts[-1].restored}
        last = attempts[-1]
        attempts[-1] = replace(last, figures=kept, placement={**last.placement, "restored_from": origin})
        return tuple(attempts)


def _check_resources(ray: Any, options: ClusterOptions) -> None:
    """A hybrid asking for more than any live node has would wait forever: say so before anything runs."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(r.get("CPU", 0) >= options.cpus and r.get("GPU", 0) >= options.gpus for r in nodes):
        return
    largest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
    raise UsageError(
        f"--hybrid-cpus {options.cpus:g} --hybrid-gpus {options.gpus:g}: no node of the Ray cluster has that much "
        f"(the largest has {largest[0]:g} CPUs and {largest[1]:g} GPUs)"
    )
