"""The one way segbisect reaches DVC: nothing else imports it, bar the drivers that run inside DVC's own process
(`dvc_run` for a command, `dvc_patches` in the fork server, and `main` here for a fork server child).

A session holds one `Dvc`, from `for_session`, and hands that same object to whatever reaches DVC on this machine:
the pipelines of both references (`snapshot.load_all`), the user's cache folder (`workspace.Workspaces`), and every
DVC command of the hybrids (`runner.Processes`). It comes in two kinds:

- `ForkedDvc` (the local executor's): a fork server (see `forked`) imports DVC once and patches it (see
  `dvc_patches`); each command and each question is a child forked from it, and the console script starts it before
  anything else is imported (`start_early`), so DVC's import runs on another core meanwhile. A server that dies is
  an environment error for the commands it had forked, and the next command starts a new one; one that dies before
  it is ready is not started again (it would fail the same way, each try costing a DVC import): the session goes on
  as `DirectDvc` would, and hears why once.
- `DirectDvc`: questions answered in this process, commands run in fresh interpreters (`python -m
  segbisect.project.dvc_run`). What a cluster session uses (its hybrids' commands run on the workers) and what
  `ForkedDvc` falls back on.

What runs in the caller's process whichever kind it holds are functions here: an experiment's name
(`refs`), the DVC remote's options (the Ray executor's preflight), and a Ray worker's fetch and push.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from segbisect.core.errors import UsageError
from segbisect.project import forked

T = TypeVar("T")
# An answer asked for now and read later: a fork server child computes it meanwhile.
Pending = Callable[[], T]
DRIVER = "segbisect.project.gateway"
RUN_DRIVER = "segbisect.project.dvc_run"
# The questions a fork server child answers (see `main`).
PIPELINE, CACHE_DIR = "pipeline", "cache-dir"


@dataclass
class StageSnap:
    """What one stage reads: declared params keys, git-tracked files, and DVC-tracked data (.dvc files)."""

    name: str
    params: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    data: set[str] = field(default_factory=set)
    metrics: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    lock_file: str = "dvc.lock"
    # DVC runs it on every `dvc repro` (`always_changed`, or a command with neither deps nor outs).
    always_runs: bool = False


@dataclass(frozen=True)
class Pipeline:
    """What DVC's index says of one tree: its stages in pipeline order, the params files they read, its `.dvc` data
    sources, and the metrics files `dvc metrics show` reads.
    """

    stages: list[StageSnap]
    param_files: set[str]
    sources: list[str]
    metrics_files: list[str]


@dataclass(frozen=True)
class Command:
    """One DVC command under the events driver (`dvc_run`): its arguments, where it runs and with what
    environment, the log its output goes to, and the file its events go to.
    """

    events_file: Path
    args: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path


class Started(Protocol):
    """A started process that leads its own process group (`subprocess.Popen`, `forked.Forked`)."""

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...


class Dvc(Protocol):
    """What a session asks of DVC on this machine. Use as a context manager: closing ends what it started."""

    def pipelines(self, roots: Sequence[Path]) -> list[Pending[Pipeline]]:
        """The pipelines exported under `roots`, asked at once; reading one raises UsageError where DVC cannot."""
        ...

    def cache_dir(self, repo: Path) -> Pending[Path]:
        """The DVC cache folder of `repo` (honouring `cache.dir` in its config)."""
        ...

    def start(self, command: Command) -> Started:
        """`command` started in a process group of its own."""
        ...

    def on_warning(self, handler: Callable[[str], None]) -> None:
        """Pass what the session's user should hear, each text once (what was said already included), to
        `handler`.
        """
        ...

    def close(self) -> None:
        """End what this gateway started (closing twice is harmless)."""
        ...

    def __enter__(self) -> Dvc: ...

    def __exit__(self, *exc: object) -> None: ...


class DirectDvc:
    """Questions answered in this process, commands run in fresh interpreters."""

    def pipelines(self, roots: Sequence[Path]) -> list[Pending[Pipeline]]:
        return [partial(read_pipeline, root) for root in roots]

    def cache_dir(self, repo: Path) -> Pending[Path]:
        return partial(cache_dir, repo)

    def start(self, command: Command) -> Started:
        args = [sys.executable, "-m", RUN_DRIVER, str(command.events_file), "--", *command.args]
        with open(command.log, "ab") as out:
            return subprocess.Popen(
                args, cwd=command.cwd, env=command.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def on_warning(self, handler: Callable[[str], None]) -> None:
        """Nothing to say: no server to fail."""

    def close(self) -> None:
        """Nothing to end."""

    def __enter__(self) -> DirectDvc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What a `Processes` or `Workspaces` built without a gateway uses (a cluster worker's: no server to fork from).
DIRECT = DirectDvc()


class ForkedDvc(DirectDvc):
    """Questions and commands forked from a fork server (`server`, else one started now), the one of this session
    at a time; where none can serve, as `DirectDvc`.
    """

    def __init__(self, server: forked.ForkServer | None = None) -> None:
        self._server: forked.ForkServer | None = server or forked.ForkServer()
        self._warnings = self._server.warnings
        self._lock = threading.Lock()
        self._answers: Path | None = None
        self._asked = 0

    def pipelines(self, roots: Sequence[Path]) -> list[Pending[Pipeline]]:
        direct = super().pipelines(roots)
        return [self._ask(PIPELINE, root, _decode, fallback) for root, fallback in zip(roots, direct, strict=True)]

    def cache_dir(self, repo: Path) -> Pending[Path]:
        return self._ask(CACHE_DIR, repo, Path, super().cache_dir(repo))

    def start(self, command: Command) -> Started:
        """Forked from the server; in a fresh interpreter when there is none or it fails to fork (then it is
        replaced, see `_replace`).
        """
        server = self._current()
        if server is not None:
            try:
                cwd, log = str(command.cwd), str(command.log)
                return server.start(str(command.events_file), command.args, cwd, command.env, log)
            except forked.ServerDied:
                with self._lock:
                    self._replace(server)
        return super().start(command)

    def on_warning(self, handler: Callable[[str], None]) -> None:
        self._warnings.attach(handler)

    def close(self) -> None:
        """End the server (after the commands it forked have ended) and the answers' folder; what comes later runs
        as `DirectDvc`.
        """
        with self._lock:
            server, self._server = self._server, None
            answers, self._answers = self._answers, None
        if server is not None:
            server.close()
        if answers is not None:
            shutil.rmtree(answers, ignore_errors=True)

    def __enter__(self) -> ForkedDvc:
        return self

    def _ask(self, question: str, path: Path, decode: Callable[[Any], T], fallback: Pending[T]) -> Pending[T]:
        """Have a server child answer `question` about `path` in a file of the answers' folder; `fallback` answers
        in this process when no child did (no server, or it failed the child).
        """
        server = self._current()
        if server is None:
            return fallback
        answer = forked.ask(server, DRIVER, [question, str(path)], path, self._answer_file())

        def get() -> T:
            found = answer.get()
            return fallback() if found is None else decode(found)

        return get

    def _answer_file(self) -> Path:
        """A new file name in this gateway's folder for answers, which goes when it closes."""
        with self._lock:
            if self._answers is None:
                self._answers = Path(tempfile.mkdtemp(prefix="segbisect-dvc-answers-"))
            self._asked += 1
            return self._answers / f"{self._asked}.json"

    def _current(self) -> forked.ForkServer | None:
        """The server to fork from now (a dead one replaced); None: as `DirectDvc`."""
        with self._lock:
            if self._server is not None and not self._server.alive:
                self._replace(self._server)
            return self._server

    def _replace(self, server: forked.ForkServer) -> None:
        """In place of `server`, gone: a new one if it had served, else none for the rest of the session (a server
        that cannot start fails the same way every time, and each try costs a DVC import), with one warning. Called
        holding the lock; a server already replaced is left alone.
        """
        if server is not self._server:
            return
        self._server = None
        why = server.last_words()
        server.close()
        if server.ready.is_set():
            self._server = forked.ForkServer(self._warnings)
            return
        self._warnings.say(
            f"the DVC fork server failed to start ({why}): every DVC command of this session runs in a fresh "
            "interpreter; verdicts are unchanged, commands are slower"
        )


_early: forked.ForkServer | None = None


def start_early() -> None:
    """Start the fork server before the command line imports anything: its imports are the longest wait before the
    first hybrid, and run on another core meanwhile.
    """
    global _early
    _early = forked.ForkServer()


def take_early() -> forked.ForkServer | None:
    """The server `start_early` started, handed over once (None when there is none)."""
    global _early
    server, _early = _early, None
    return server


def for_session(fork: bool) -> Dvc:
    """One session's gateway: forked from the server the console script started (or one started now) when `fork`,
    else direct, that server ended unused.
    """
    early = take_early()
    if fork:
        return ForkedDvc(early)
    if early is not None:
        early.close()
    return DirectDvc()


# -- DVC's Python API, in whichever process asks: this one, a fork server child, a cluster worker --------------------


def read_pipeline(root: Path) -> Pipeline:
    """The pipeline of the tree exported under `root`, read with DVC's own index, so templated `${...}` deps and
    whole-file params resolve exactly as `dvc repro` would; UsageError where DVC cannot read it.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root), config={"core": {"no_scm": True}}) as repo:
            index = repo.index
            pipeline = [s for s in index.stages if not s.is_data_source]
            order = {s: i for i, s in enumerate(index.stages)}
            graph = index.graph.reverse()
            ordered = [s for s in nx.lexicographical_topological_sort(graph, key=order.get) if s in pipeline]
            produced = [_rel(root, o.fs_path) for s in pipeline for o in s.outs]
            tracked = {
                _rel(root, o.fs_path): _rel(root, s.path) for s in index.stages if s.is_data_source for o in s.outs
            }
            param_files: set[str] = set()
            snaps = [_stage_snap(root, s, produced, tracked, param_files) for s in ordered]
            metrics_files = _metrics_files(repo)
    except DvcException as exc:
        raise UsageError(f"cannot read the DVC pipeline: {exc}") from None
    return Pipeline(snaps, param_files, sorted(set(tracked.values())), metrics_files)


def _metrics_files(repo: Any) -> list[str]:
    """Every metrics file `dvc metrics show` would read in an open DVC `Repo`, in DVC's order."""
    shown = repo.metrics.show()
    return [Path(path).as_posix() for path in shown.get("", {}).get("data", {})]


def _stage_snap(
    root: Path, stage: Any, produced: list[str], tracked: dict[str, str], param_files: set[str]
) -> StageSnap:
    from dvc.dependency.param import ParamsDependency

    dvcfile = _rel(root, stage.dvcfile.path)
    snap = StageSnap(
        stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}",
        lock_file=Path(dvcfile).with_suffix(".lock").as_posix(),
        always_runs=bool(stage.always_changed or stage.is_callback),
    )
    file_deps = []
    for dep in stage.deps:
        path = _rel(root, dep.fs_path)
        if isinstance(dep, ParamsDependency):
            param_files.add(path)
            keys = dep.params or list(dep.read_params())
            snap.params.update((path, tuple(str(k).split("."))) for k in keys)
        else:
            file_deps.append(path)
    for path in file_deps:
        if path in param_files or any(under(path, out) for out in produced):
            continue
        source = next((dvcfile for out, dvcfile in tracked.items() if under(path, out)), None)
        if source:
            snap.data.add(source)
        else:
            snap.files.update(_expand(root, path))
    snap.outs = [_rel(root, o.fs_path) for o in stage.outs]
    snap.metrics = [_rel(root, o.fs_path) for o in stage.outs if o.metric]
    snap.plots = [_rel(root, o.fs_path) for o in stage.outs if o.plot]
    return snap


def _expand(root: Path, path: str) -> set[str]:
    target = root / path
    if target.is_dir():
        return {_rel(root, str(p)) for p in target.rglob("*") if p.is_file()}
    return {path}


def under(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or inside it (both relative, `/`-separated)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _rel(root: Path, path: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def cache_dir(repo: Path) -> Path:
    """The DVC cache folder of `repo`, as its config resolves it."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return Path(dvc_repo.cache.local_cache_dir)


@dataclass(frozen=True)
class Experiment:
    """A DVC experiment: its name and its commit."""

    name: str
    commit: str


def experiment(repo: Path, text: str) -> Experiment | None:
    """The experiment `text` names (a name or a full refs/exps/... ref), by DVC's own name resolution; None when
    none does, UsageError when it is ambiguous or malformed.
    """
    from dvc.repo.experiments.utils import resolve_name
    from dvc.scm import SCM

    scm = SCM(str(repo))
    try:
        info = resolve_name(scm, text).get(text)
    except Exception as exc:  # AmbiguousExpRefInfo, bad ref format
        raise UsageError(str(exc)) from None
    if info is None:
        return None
    commit = scm.get_ref(str(info))
    return Experiment(info.name, commit) if commit else None


@dataclass(frozen=True)
class Remotes:
    """The DVC remotes a repository's config resolves (local paths made absolute), and its default's name."""

    default: str | None
    options: dict[str, dict[str, Any]]


def remotes(repo: Path) -> Remotes:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        found = {name: dict(options) for name, options in config.get("remote", {}).items()}
        return Remotes(config["core"].get("remote"), found)


def fetch(root: Path, data_sources: Sequence[str]) -> None:
    """The remote's run-cache (every stage computed anywhere) and the data sources present under `root`."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.stage_cache.pull(None)
        present = [d for d in data_sources if (root / d).is_file()]
        if present:
            repo.pull(targets=present)


def push(root: Path) -> None:
    """The outputs present under `root` and their run-cache entries."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.push(run_cache=True)


# -- a fork server child's answers ----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """A fork server child: write the answer to question `argv[1]` (`PIPELINE`, `CACHE_DIR`) about the folder
    `argv[2]` as JSON to `argv[0]`.
    """
    out, question, path = Path(argv[0]), argv[1], Path(argv[2])
    out.write_text(json.dumps(_ANSWERS[question](path)), encoding="utf-8")
    return 0


def _pipeline_answer(root: Path) -> dict[str, Any]:
    """The pipeline, or why DVC cannot read it."""
    try:
        return _encode(read_pipeline(root))
    except UsageError as exc:
        return {"error": str(exc)}


def _cache_dir_answer(repo: Path) -> str:
    return str(cache_dir(repo))


_ANSWERS: dict[str, Callable[[Path], Any]] = {PIPELINE: _pipeline_answer, CACHE_DIR: _cache_dir_answer}


def _encode(pipeline: Pipeline) -> dict[str, Any]:
    stages = [
        {
            **vars(s),
            "params": sorted([f, list(k)] for f, k in s.params),
            "files": sorted(s.files),
            "data": sorted(s.data),
        }
        for s in pipeline.stages
    ]
    return {
        "stages": stages,
        "param_files": sorted(pipeline.param_files),
        "sources": pipeline.sources,
        "metrics_files": pipeline.metrics_files,
    }


def _decode(found: Any) -> Pipeline:
    if "error" in found:
        raise UsageError(found["error"])
    stages = [
        StageSnap(
            **{**s, "params": {(f, tuple(k)) for f, k in s["params"]}, "files": set(s["files"]), "data": set(s["data"])}
        )
        for s in found["stages"]
    ]
    return Pipeline(stages, set(found["param_files"]), found["sources"], found["metrics_files"])
