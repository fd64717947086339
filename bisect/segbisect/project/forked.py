"""DVC commands forked from a server that has imported DVC already, instead of a fresh interpreter each.

A fresh `python -m segbisect.project.dvc_run` spends most of a second importing DVC before it looks at a stage, and a
hybrid whose stages are all restored does little else. `python -m segbisect.project.forked` imports DVC once and forks
one child per command, so each command starts from a pristine copy of that state and no DVC state carries from
one command to the next. The server is single-threaded (forking segbisect itself, which runs threads, is unsafe)
and is its children's parent, so it reaps them and reports their exit status. Python's own forkserver
(multiprocessing) would also re-run the caller's main module in every child, which a script calling segbisect
without a `__main__` guard does not survive.

The same server answers the session's own questions for DVC (a snapshot's pipeline, the user's cache folder): a
child runs one of `DRIVERS`, the module's `main(argv)` (see `ask`). When to start a server, which one to use and
what takes the place of one that died is `gateway.ForkedDvc`'s to decide.

Before it forks anything the server patches a few DVC internals for speed (see `dvc_patches`); a patch that no
longer fits DVC is left out with a warning for the session. The server's stderr goes to a file, never the
terminal: a server that fails before it is ready is named in one warning with its last line.

Protocol: JSON lines. Once its imports and patches are done the server says `{"warning"}` for each patch left out,
then `{"ready": true}`. A request on the server's stdin is `{"id", "driver", "argv", "cwd", "env", "log"}`; the
server answers `{"id", "pid"}` once the child leads a session of its own, and `{"id", "status"}` when it ends
(status as `subprocess` reports it: negative for a signal).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# What `dvc checkout`, `dvc repro` (running, restoring or skipping stages) and the other drivers import: a test
# pins that a command imports nothing more. A module this DVC version lacks is skipped here and imported by the
# command.
PRELOAD = (
    "segbisect.project.dvc_run",
    "segbisect.project.gateway",
    "dvc.repo.metrics.show",
    "dvc.repo.brancher",
    "dvc_data.fs",
    "dvc.cli.parser",
    "dvc.repo",
    "dvc.repo.reproduce",
    "dvc.repo.checkout",
    "dvc.repo.index",
    "dvc.repo.stage",
    "dvc.repo.graph",
    "dvc.repo.plots",
    "dvc.repo.metrics",
    "dvc.repo.params",
    "dvc.repo.artifacts",
    "dvc.repo.datasets",
    "dvc.repo.open_repo",
    "dvc.stage.cache",
    "dvc.cachemgr",
    "dvc.data_cloud",
    "dvc.lock",
    "dvc.rwlock",
    "dvc.scm",
    "dvc.utils.strictyaml",
    "dvc.output",
    "dvc.dependency",
    "dvc_data.index",
    "dvc_data.hashfile.db.local",
    "scmrepo.git",
    "scmrepo.noscm",
    "dulwich.ignore",
    "ruamel.yaml",
    "_ruamel_yaml",
    "ruamel.yaml.mergevalue",
    "networkx",
    "configobj",
    "pyparsing",
    "platformdirs",
    "dulwich.worktree",
    "dulwich.trailers",
    "dvc.dirs",
    "dvc._debug",
    "dvc.daemon",
    "dvc.repo.trie",
    "dvc_data.index.checkout",
    "fsspec.implementations.memory",
    "dulwich.index",
    "dvc_data.hashfile.status",
    "dvc_data.hashfile._progress",
    "xml.etree.ElementTree",
    "unittest",
    "psutil",
)
# What a child may run: each module's `main(argv)` returns the exit status.
DRIVERS = ("segbisect.project.dvc_run", "segbisect.project.gateway")
# The server imports DVC before it forks anything; far longer than that means it is stuck.
STARTUP_SECONDS = 120.0
# How much of a dead server's stderr is read for its last line.
TAIL = 4096
# A server that died leaves its children unreaped and unreported: they are ended and reported as killed.
LOST = -signal.SIGKILL


class ServerDied(OSError):
    """The fork server is gone; `gateway.ForkedDvc` decides what takes its place."""


class Warnings:
    """What the fork servers of one session have to tell its user, each text once: held until the session attaches
    its handler (the server starts before the session has a console), passed on at once afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[str] = []
        self._said: set[str] = set()
        self._handler: Callable[[str], None] | None = None

    def attach(self, handler: Callable[[str], None]) -> None:
        with self._lock:
            self._handler, held, self._held = handler, self._held, []
        for text in held:
            handler(text)

    def say(self, text: str) -> None:
        with self._lock:
            if text in self._said:
                return
            self._said.add(text)
            handler = self._handler
            if handler is None:
                self._held.append(text)
        if handler is not None:
            handler(text)


@dataclass(eq=False)
class Forked:
    """A command forked by the server, seen as `runner.Processes` sees a `subprocess.Popen` (`gateway.Started`):
    `pid` also names its process group, `wait` returns the exit status or raises TimeoutExpired.
    """

    request: int
    pid: int = 0
    status: int | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    _ended: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired("dvc", timeout or 0.0)
        assert self.status is not None
        return self.status


class ForkServer:
    """The client: starts the server now (it imports DVC while the caller goes on) and forks commands from it.
    `warnings`: where the server's warnings go (a replacement shares its predecessor's, so none is said twice).
    """

    def __init__(self, warnings: Warnings | None = None) -> None:
        self.warnings = warnings or Warnings()
        self.ready = threading.Event()
        self._errors = _unnamed_file()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "segbisect.project.forked"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._lock = threading.Lock()
        self._pending: dict[int, Forked] = {}
        self._gone = False
        self._count = 0
        self._reader = threading.Thread(target=self._read, name="segbisect-forkserver", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def on_warning(self, handler: Callable[[str], None]) -> None:
        """Pass the server's warnings, those already received included, to `handler`."""
        self.warnings.attach(handler)

    def last_words(self) -> str:
        """Why the server ended: the last line it wrote to its stderr, else its exit status. Waits for it to end."""
        status = self._proc.wait()
        with self._lock:
            size = os.fstat(self._errors).st_size if self._errors >= 0 else 0
            written = os.pread(self._errors, min(size, TAIL), max(size - TAIL, 0)) if size else b""
        lines = [line.strip() for line in written.decode(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1]
        return f"killed by signal {-status}" if status < 0 else f"exit {status}"

    def start(self, events_file: str, args: list[str], cwd: str, env: dict[str, str], log: str) -> Forked:
        """Fork `python -m segbisect.project.dvc_run events_file -- args` as run in `cwd` with `env`, output to
        `log`; returns once it runs.
        """
        child = self._submit("segbisect.project.dvc_run", [events_file, "--", *args], cwd, env, log)
        if not child._started.wait(STARTUP_SECONDS):
            self._proc.kill()  # stuck before it could fork: the reader sees it go and fails what it held
            raise ServerDied(f"the DVC fork server did not fork within {STARTUP_SECONDS:g} s")
        if not child.pid:
            raise ServerDied(f"the DVC fork server is gone (exit {self._proc.wait()})")
        return child

    def _submit(self, driver: str, argv: list[str], cwd: str, env: dict[str, str], log: str) -> Forked:
        """Have a child run `driver.main(argv)` (one of `DRIVERS`); returns at once (the server may still be
        importing DVC).
        """
        if driver not in DRIVERS:
            raise ValueError(f"{driver} is not a fork server driver")
        with self._lock:
            if self._gone:
                # Its replies have ended, so no answer to this request could arrive: the stdin pipe may still take
                # the write while the process is exiting.
                raise ServerDied("the DVC fork server is gone (its replies ended)")
            self._count += 1
            child = Forked(self._count)
            self._pending[child.request] = child
            request = {"id": child.request, "driver": driver, "argv": argv, "cwd": cwd, "env": env, "log": log}
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps(request).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError as exc:
                del self._pending[child.request]
                raise ServerDied(f"the DVC fork server is gone ({exc})") from exc
        return child

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the server; a command still running is ended with it and reported as killed. Closing twice is
        harmless.
        """
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._proc.wait()
        self._reader.join()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        with self._lock:
            if self._errors >= 0:
                os.close(self._errors)
                self._errors = -1

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            reply = json.loads(line)
            if "warning" in reply:
                self.warnings.say(reply["warning"])
                continue
            if "ready" in reply:
                self.ready.set()
                continue
            with self._lock:
                child = self._pending[reply["id"]]
                if "pid" in reply:
                    child.pid = reply["pid"]
                    child._started.set()
                    continue
                del self._pending[reply["id"]]
            child.status = reply["status"]
            child._ended.set()
        with self._lock:
            lost, self._pending, self._gone = list(self._pending.values()), {}, True
        for child in lost:
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            child.status = LOST
            child._started.set()
            child._ended.set()


def _unnamed_file() -> int:
    """A temporary file's descriptor, its name removed at once: it goes when it is closed, however the session
    ends.
    """
    fd, name = tempfile.mkstemp(prefix="segbisect-forkserver-")
    os.unlink(name)
    return fd


@dataclass
class Answer:
    """The JSON a driver child writes to the file named by its first argument; see `ask`."""

    child: Forked | None
    out: Path

    def get(self) -> Any | None:
        """Waits for the child; None when it left no answer (the server died, the child crashed)."""
        try:
            if self.child is None or not self.child._started.wait(STARTUP_SECONDS) or self.child.wait() != 0:
                return None
            return json.loads(self.out.read_text(encoding="utf-8")) if self.out.is_file() else None
        finally:
            self.out.unlink(missing_ok=True)


def ask(server: ForkServer, driver: str, args: list[str], cwd: Path, out: Path) -> Answer:
    """Have a child of `server` run `driver.main([str(out), *args])` in `cwd`; returns at once. The caller computes
    the answer itself when `get` returns None (the server is gone, or it failed the child).
    """
    try:
        return Answer(server._submit(driver, [str(out), *args], str(cwd), dict(os.environ), os.devnull), out)
    except ServerDied:
        return Answer(None, out)


def serve() -> None:
    """The server's loop: requests on stdin, replies on the original stdout; ends when stdin closes."""
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # whatever an imported module prints goes to stderr, never into the replies
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from segbisect.project.dvc_patches import apply_all

    for warning in apply_all():
        replies.write(json.dumps({"warning": warning}) + "\n")
    replies.write(json.dumps({"ready": True}) + "\n")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is segbisect's to handle: it ends the children
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(0, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    _reap(children, replies)
                    continue
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    return
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    request = json.loads(line)
                    pid = _fork(request, (replies, wake_r, wake_w))
                    children[pid] = request["id"]
                    replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
            _reap(children, replies)


def _reap(children: dict[int, int], replies: IO[str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        replies.write(json.dumps({"id": children.pop(pid), "status": os.waitstatus_to_exitcode(status)}) + "\n")


def _fork(request: dict[str, Any], server_files: tuple[IO[str], int, int]) -> int:
    """Fork the command; returns once the child has its own session (so its pid names a process group)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _child(request, ready_w, server_files)
    os.close(ready_w)
    os.read(ready_r, 1)  # EOF: the child closed its end after setsid, or died
    os.close(ready_r)
    return pid


def _child(request: dict[str, Any], ready_w: int, server_files: tuple[IO[str], int, int]) -> None:
    """The child's whole life: set up as `Popen(start_new_session=True, cwd, env, stdout=log)` would, run the
    driver, exit with its status. Never returns.
    """
    status = 1
    try:
        os.setsid()
        os.close(ready_w)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        replies, wake_r, wake_w = server_files
        for fd in (replies.fileno(), wake_r, wake_w):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        status = importlib.import_module(request["driver"]).main(request["argv"])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    serve()
    # At once: replies are line-buffered and sent, and tearing down DVC's modules would take about 0.1 s.
    os._exit(0)
