"""How a stage ends when it cannot finish: bad input, a failed environment, or a bug.

A caller such as `dvc repro` or segbisect must tell these apart, so each has its own exit status:

- `EXIT_INPUT` (2): the stage's own input or configuration is bad (`PipelineError`), one `error: ...` line;
- `EXIT_ENVIRONMENT` (75, sysexits' EX_TEMPFAIL): the environment failed (disk full, read-only file system,
  I/O error, out of memory, network, the MLflow store), one `error: ... (environment fault)` line; running the
  same stage again on a healthy machine may well succeed;
- 1: anything else is a bug in the code, reported by Python with its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections import deque
from collections.abc import Callable, Iterator

EXIT_INPUT = 2
EXIT_ENVIRONMENT = 75

# errno values that say the machine, not the stage, failed: storage, memory, descriptors and the network.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)
# The project installs TensorFlow through an extra, chosen by the machine: a stage without it says which.
TENSORFLOW_MODULES = frozenset({"tensorflow", "tf_keras"})
INSTALL_TENSORFLOW = "pip install -r requirements/cpu.txt, or requirements/gpu.txt on a machine with NVIDIA GPUs"
_RESOURCE = {
    errno.ENOSPC: "filesystem",
    errno.EDQUOT: "filesystem",
    errno.EROFS: "filesystem",
    errno.EIO: "filesystem",
    errno.ENOMEM: "memory",
    errno.EMFILE: "file descriptors",
    errno.ENFILE: "file descriptors",
}


class PipelineError(Exception):
    """Bad input or configuration: reported as one line, never as a traceback."""


class EnvironmentFault(Exception):
    """The environment failed under the stage (`where` names the file or store): one line, exit 75."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage entry point: a PipelineError exits 2, an environment fault exits 75, each with one line.

    A PipelineError raised while handling an environment fault (an image that cannot be read because the disk
    fails) reports the fault. Any other exception is a bug and keeps Python's traceback and exit status 1.
    """
    try:
        main()
    except Exception as exc:  # MemoryError is an Exception too
        line = describe_environment_fault(exc)
        if line is not None:
            print(f"error: {line} (environment fault)", file=sys.stderr)
            raise SystemExit(EXIT_ENVIRONMENT) from None
        if isinstance(exc, PipelineError):
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_INPUT) from None
        raise


def describe_environment_fault(exc: BaseException) -> str | None:
    """`<what>: <problem>` for an environment fault anywhere in `exc`'s chain; None when it is none."""
    fault = environment_fault(exc)
    return None if fault is None else f"{fault[0]}: {fault[1]}"


def environment_fault(exc: BaseException) -> tuple[str, str] | None:
    """(what failed, the problem) for an environment fault anywhere in `exc`'s chain; None when it is none.

    The deepest fault in the chain is described: it is the most specific one (a readonly SQLite file under
    MLflow's exception, the OSError under TensorFlow's).
    """
    if isinstance(exc, EnvironmentFault):
        return exc.where, exc.problem
    if isinstance(exc, ModuleNotFoundError) and exc.name in TENSORFLOW_MODULES:
        return "tensorflow", f"not installed ({INSTALL_TENSORFLOW})"
    found = [(depth, e) for depth, e in _chain(exc) if _is_fault(e)]
    if not found and _is_mlflow_transport_failure(exc):
        found = [(0, exc)]
    if not found:
        return None
    fault = max(found, key=lambda item: item[0])[1]
    if isinstance(fault, EnvironmentFault):
        return fault.where, fault.problem
    return _where(fault), _problem(fault)


def _chain(exc: BaseException) -> Iterator[tuple[int, BaseException]]:
    """`exc` and what it was raised from or while handling (SQLAlchemy keeps the driver's in .orig), with depths."""
    seen: set[int] = set()
    todo: deque[tuple[int, BaseException]] = deque([(0, exc)])
    while todo:
        depth, current = todo.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield depth, current
        for linked in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(linked, BaseException):
                todo.append((depth + 1, linked))


def _is_fault(exc: BaseException) -> bool:
    if isinstance(exc, EnvironmentFault | MemoryError | TimeoutError):
        return True
    if _is_named(exc, "requests.exceptions", ("ConnectionError", "Timeout", "RetryError")):
        return True
    if _is_named(exc, "sqlalchemy.exc", ("OperationalError",)):
        return True
    if _is_named(exc, "tensorflow", ("errors.ResourceExhaustedError", "errors.UnavailableError")):
        return True
    if _is_sqlite_store_failure(exc):
        return True
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def _is_named(exc: BaseException, module: str, names: tuple[str, ...]) -> bool:
    """isinstance against classes of a module that is already loaded (nothing is imported to find out)."""
    loaded = sys.modules.get(module)
    if loaded is None:
        return False
    for name in names:
        cls: object = loaded
        for part in name.split("."):
            cls = getattr(cls, part, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _is_sqlite_store_failure(exc: BaseException) -> bool:
    """A SQLite database that cannot be written, is locked, or is not a database (corrupt) at all."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None:
        return False
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _is_mlflow_transport_failure(exc: BaseException) -> bool:
    """MLflow's REST client failing to get an answer, or the server answering with a 5xx error."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is None or not isinstance(exc, exceptions.MlflowException):
        return False
    if getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE" or str(exc).startswith("API request to"):
        return True
    return isinstance(exc, exceptions.RestException) and exc.get_http_status_code() >= 500


def _where(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return str(exc.filename)
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError) and exc.errno in _RESOURCE:
        return _RESOURCE[exc.errno]
    module = type(exc).__module__.split(".")[0]
    if module in ("requests", "urllib3") or isinstance(exc, OSError | TimeoutError):
        return "network"
    if module in ("sqlite3", "sqlalchemy"):
        return "database"
    if module == "mlflow":
        return "MLflow store"
    if module == "tensorflow":
        return "TensorFlow"
    return type(exc).__name__


def _problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        name = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} [{name}]" if name else exc.strerror
    text = str(exc).strip().splitlines()
    first = text[0] if text else ("out of memory" if isinstance(exc, MemoryError) else type(exc).__name__)
    return first if len(first) <= 300 else first[:297] + "..."
