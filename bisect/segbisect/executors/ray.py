"""The Ray executor: each hybrid is one Ray task, on whichever node has the resources it asks for.

A task receives the hybrid as a small archive of tracked files (code, params, `dvc.yaml`, `dvc.lock`, `.dvc`
files; never git history, data or the user's untracked files) and works against the shared DVC remote (see
ray_worker.py). Ray retries a task whose node died; anything else the worker's environment does wrong comes back
as an environment error naming the node, never as a pass or a fail.

Joining a cluster is bounded and interruptible: an address where nothing listens is refused by a TCP probe before
Ray is asked (Ray itself retries for minutes), and `ray.init` runs in a thread of its own while this one waits, so
Ctrl-C and SIGTERM end segbisect at once; Python runs signal handlers in the main thread only, between bytecodes,
and Ray's connection blocks in native code. That thread lives until Ray is shut down: the processes of a local
instance die with the thread that started them (Ray sets their parent-death signal).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from segbisect.core.attempt import Attempt
from segbisect.core.errors import UsageError
from segbisect.executors.archive import pack
from segbisect.executors.base import ClusterOptions, ExecutorContext, Job, Preflight, failed, summary
from segbisect.executors.ray_worker import WorkerJob, WorkerResult, numeric_environment, run_hybrid
from segbisect.project import figures, gateway
from segbisect.project.materialize import materialize

INSTALL_HINT = "--executor ray needs Ray on this machine and every worker: pip install 'segbisect[ray]'"
# A task whose node died runs again elsewhere this many times before the hybrid is an environment error.
NODE_RETRIES = 3
# What the stages need from the driver's environment; everything else (PATH, caches, devices) is the worker's own.
DRIVER_VARIABLES = ("MLFLOW_", "SEGBISECT_")
LOCAL_STORES = ("", "file", "sqlite")
STOP_GRACE_SECONDS = 15.0
# A head that takes no TCP connection in this long is not there (where nothing listens, the refusal is immediate).
PROBE_SECONDS = 5.0
# Joining a cluster takes seconds; what answers and is still not joined after this is no Ray head (Ray would go on
# retrying for minutes). With the probe, an address that does not answer fails within 30 s.
JOIN_SECONDS = 20.0
# Ray colours the task's name in its error text.
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Address:
    """The cluster the driver joins as `ray.init` reads it (None: a local instance this session starts) and how the
    user gave it, for messages.
    """

    value: str | None
    named: str

    @classmethod
    def of(cls, option: str | None) -> Address:
        """--ray-address, else RAY_ADDRESS, which Ray also reads in place of "auto"."""
        env = os.environ.get("RAY_ADDRESS")
        if env and option in (None, "auto"):
            return cls(env, f"RAY_ADDRESS={env}")
        return cls(option, f"--ray-address {option}" if option else "a local Ray instance")

    def endpoint(self) -> tuple[str, int] | None:
        """The host and port Ray connects to first (a Ray Client server for ray://, else the head's GCS, which
        listens on every interface of the head); None where Ray finds the cluster itself or starts one.
        """
        if self.value is None or self.value in ("auto", "local"):
            return None
        parsed = urlparse(self.value if "://" in self.value else f"//{self.value}")
        try:
            port = parsed.port
        except ValueError:
            raise UsageError(f"{self.named}: not an address of the form HOST:PORT or ray://HOST:PORT") from None
        return (parsed.hostname, port) if parsed.hostname and port else None


def preflight(check: Preflight) -> dict[str, str]:
    """Everything that would fail on the workers, checked here first; returns the remote's DVC options."""
    repo, options, tracking = check.repo, check.cluster, check.tracking
    import_ray()
    if tracking is not None and urlparse(tracking).scheme in LOCAL_STORES:
        raise UsageError(
            f"--executor ray: the MLflow store {tracking} lives on this machine, where workers cannot log: start "
            "`mlflow server` and name its http:// address (MLFLOW_TRACKING_URI or tracking-uri in [tool.segbisect]), "
            "or pass --no-mlflow"
        )
    probe(Address.of(options.address))
    return remote_options(repo, options.remote)


def probe(address: Address) -> None:
    """One TCP connection to the cluster's address, bounded by PROBE_SECONDS."""
    endpoint = address.endpoint()
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=PROBE_SECONDS):
            return
    except OSError as exc:
        why = f"no answer in {PROBE_SECONDS:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise UsageError(
            f"{address.named}: nothing answers there ({why}); start the cluster's head (`ray start --head`) or "
            "pass the address it printed"
        ) from None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def remote_options(repo: Path, name: str | None) -> dict[str, str]:
    """The DVC remote's options as this repository's config resolves them (local paths made absolute)."""
    found = gateway.remotes(repo)
    chosen, remotes = name or found.default, found.options
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

    def __init__(self, context: ExecutorContext) -> None:
        self.good, self.bad, self.task = context.good, context.bad, context.task
        self.logs, self.figures_root = context.logs, context.figures_root
        self.remote = dict(context.checked)
        options = context.cluster
        self._ray = import_ray()
        self._started = not self._ray.is_initialized()
        if self._started:
            self._joined = _join(self._ray, Address.of(options.address))
        try:
            _check_resources(self._ray, options)
        except UsageError:
            self.close()
            raise
        self._run = self._ray.remote(run_hybrid).options(
            num_cpus=options.cpus, num_gpus=options.gpus, max_retries=NODE_RETRIES
        )
        self._probe = self._ray.remote(numeric_environment).options(num_cpus=options.cpus, num_gpus=options.gpus)
        self._env = {k: v for k, v in self.task.env.items() if k.startswith(DRIVER_VARIABLES)}
        self._lock = threading.Lock()
        self._pending: set[Any] = set()
        self._computed: dict[str, str] = {}

    def submit(self, job: Job) -> Future[tuple[Attempt, ...]]:
        work = WorkerJob(
            hybrid_id=job.hybrid_id,
            remote=self.remote,
            env=job.stage_env(self._env),
            task=self.task,
            policy=job.policy,
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
            self._joined.set()

    def environment(self) -> dict[str, Any]:
        """A worker's, as a task asking for a hybrid's resources finds it: the driver's own differs (Ray sets thread
        counts per task; the workers may be other machines). A cluster of unlike nodes answers with one of them:
        hybrids from the others run again.
        """
        return dict(self._ray.get(self._probe.remote()))

    def _archive(self, job: Job) -> bytes:
        """GOOD's exported tree with the job's units from BAD written in, packed."""
        with tempfile.TemporaryDirectory(prefix="segbisect-pack-") as scratch:
            tree = Path(scratch) / "tree"
            shutil.copytree(self.good.root, tree, symlinks=True)
            materialize(tree, self.good, self.bad, list(job.units))
            return pack(tree)

    def _deliver(self, job: Job, ref: Any, done: Future[WorkerResult], out: Future[tuple[Attempt, ...]]) -> None:
        with self._lock:
            self._pending.discard(ref)
        try:
            result = done.result()
        except Exception as exc:  # the task itself failed: it raised, its node kept dying, or it was cancelled
            text = ANSI_CODES.sub("", str(exc))
            log = self.logs / f"{job.hybrid_id}.log"
            out.set_result(failed("the Ray task failed", _remote_cause(exc, text), text, log))
            return
        try:
            out.set_result(self._received(job, result))
        except Exception as exc:
            out.set_exception(exc)

    def _received(self, job: Job, result: WorkerResult) -> tuple[Attempt, ...]:
        """Write the log and images where the local executor would; every attempt records where it ran, the last
        also where its restored stages came from.
        """
        (self.logs / f"{job.hybrid_id}.log").write_bytes(result.log)
        folder = figures.folder(self.figures_root, job.fingerprint)
        kept = {}
        for name, data in result.figures.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            kept[name] = str(target)
        *earlier, last = result.attempts
        keys, where = result.stage_keys, result.placement
        with self._lock:
            ran = {stage for attempt in result.attempts for stage in attempt.executed if stage in keys}
            self._computed.update({keys[stage]: f"{job.hybrid_id} on node {where.node_name}" for stage in ran})
            origin = {s: self._computed.get(keys.get(s, ""), "before this session") for s in last.restored}
        placed = [replace(attempt, placement=where.to_record()) for attempt in earlier]
        restored = replace(where, restored_from=origin).to_record()
        return (*placed, replace(last, figures=kept, placement=restored))


def _remote_cause(exc: Exception, text: str) -> str:
    """The exception the task raised, type and message: as Ray rebuilt it here, else the last line of the traceback
    Ray sent (a class this machine cannot import); Ray's own errors (a node lost, a cancelled task) as they are.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return summary(cause)
    lines = text.strip().splitlines()
    return lines[-1].strip() if len(lines) > 1 else summary(exc)


def _join(ray: Any, address: Address) -> threading.Event:
    """`ray.init` in a thread of its own, waited for here, where a signal interrupts the wait (see the module's
    docstring); at most JOIN_SECONDS for a cluster's address. Returns the event that ends the thread, for after
    `ray.shutdown`. Outside the main thread Ray also leaves segbisect's SIGTERM handler in place, where its own
    would end the process with status 15 and no clean-up.
    """
    joined: Future[None] = Future()
    done = threading.Event()

    def hold() -> None:
        try:
            ray.init(address=address.value, include_dashboard=False, log_to_driver=False)
        except BaseException as exc:
            joined.set_exception(exc)
            return
        joined.set_result(None)
        done.wait()

    quiet = _OwnSigterm()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    threading.Thread(target=hold, name="segbisect-ray", daemon=True).start()
    try:
        joined.result(timeout=None if address.value is None else JOIN_SECONDS)
    except TimeoutError:
        raise UsageError(
            f"{address.named}: something answers there, but no Ray cluster joined in {JOIN_SECONDS:g} s (is it the "
            "head's GCS port, or ray:// and its client server's?)"
        ) from None
    except ConnectionError as exc:
        raise UsageError(f"{address.named}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    return done


class _OwnSigterm(logging.Filter):
    """Drops Ray's warning that, started outside the main thread, it sets no SIGTERM handler: that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


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
