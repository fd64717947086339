"""DVC failing is not the hybrid failing: only a stage's own exit, or DVC rejecting the hybrid's own configuration,
is a skip; a killed stage, DVC's own errors and a missing cache object are environment errors. And a DVC command
that fails leaves none of its temporary files in the user's DVC cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from segbisect.core.attempt import AttemptStatus
from segbisect.project.dvc_run import Events, _Listener, remove_temporaries, running_file, temporaries_file
from segbisect.project.gateway import DirectDvc, ForkedDvc
from segbisect.project.runner import Processes, Site, Task, attempt, failed_status

PATH = str(Path(sys.executable).parent) + ":/usr/bin:/bin"


def caught(fail: Callable[[], object]) -> BaseException:
    try:
        fail()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def reproduction_failed(cause: Callable[[], object]) -> Callable[[], object]:
    """Fails as `dvc repro` does: its ReproductionError, caused by what `cause` raises."""

    def fail() -> None:
        from dvc.exceptions import ReproductionError

        try:
            cause()
        except Exception as exc:
            raise ReproductionError("failed to reproduce 'train'") from exc

    return fail


def stage_command(script: str, root: Path) -> Callable[[], object]:
    """Fails as `dvc repro` does for a stage whose command `script` fails, run by DVC's own `dvc.stage.run._run`."""
    from dvc.stage.run import _run

    return reproduction_failed(lambda: _run("/bin/sh", script, cwd=root, env={"PATH": PATH}, close_fds=True))


def missing_params() -> None:
    from dvc.dependency.param import MissingParamsError

    raise MissingParamsError("Parameters 'train.lr' are missing from 'params.yaml'.")


def missing_output() -> None:
    from dvc.output import OutputDoesNotExistError

    raise OutputDoesNotExistError("model.keras")


def missing_cache_object() -> None:
    from dvc.exceptions import CheckoutError

    raise CheckoutError(["data/raw.dvc"], {})


def a_patch_that_no_longer_fits() -> None:
    """A call with an argument this DVC no longer takes: a real TypeError, as a fork-server patch would raise."""

    def modify_yaml(path: str) -> None:
        del path

    modify_yaml(path="dvc.lock", fs=None)  # type: ignore[call-arg]


def logged(exc: BaseException, root: Path) -> Events:
    """What the driver's listener makes of `exc`, logged as DVC's main logs a failure, DVC running in `root`."""
    events = Events(rc=255)
    listener = _Listener(events, running_file(root / "events.json"))
    # Handed to the listener alone: DVC's own console handler may hold a stream an earlier test closed.
    exc_info = (type(exc), exc, exc.__traceback__)
    listener.handle(logging.getLogger("dvc").makeRecord("dvc", logging.ERROR, __file__, 0, "", (), exc_info))
    return events


@pytest.mark.parametrize(
    ("script", "status", "expected"),
    [
        ("exit 2", 2, AttemptStatus.CRASH),
        ("exit 75", 75, AttemptStatus.ERROR),
        ("kill -9 $$", -9, AttemptStatus.ERROR),
        ("exit 137", 137, AttemptStatus.ERROR),
    ],
)
def test_a_stage_commands_exit_status_is_the_one_its_process_reported(
    script: str, status: int, expected: AttemptStatus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own exit is a skip; a signal (seen by DVC, or reported by the stage's shell) or exit 75 is not."""
    monkeypatch.chdir(tmp_path)
    events = logged(caught(stage_command(script, tmp_path)), tmp_path)
    assert events.command_status == status and not events.environment
    assert failed_status(events) == expected


CASES: dict[str, tuple[Callable[[], object], AttemptStatus, str]] = {
    "a missing dependency": (reproduction_failed(lambda: os.stat("missing.csv")), AttemptStatus.CRASH, ""),
    "a missing params key": (reproduction_failed(missing_params), AttemptStatus.CRASH, ""),
    "an output the stage did not write": (reproduction_failed(missing_output), AttemptStatus.CRASH, ""),
    "a file outside the tree (the cache)": (
        reproduction_failed(lambda: os.stat("../cache/files/md5/00/ff")),
        AttemptStatus.ERROR,
        "FileNotFoundError inside DVC",
    ),
    "a missing cache object": (missing_cache_object, AttemptStatus.ERROR, "CheckoutError inside DVC"),
    "a patch that no longer fits DVC": (
        reproduction_failed(a_patch_that_no_longer_fits),
        AttemptStatus.ERROR,
        "TypeError inside DVC",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_hybrids_own_configuration_makes_a_dvc_failure_a_skip(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each exception raised as DVC raises it (its own classes, or Python's), logged as DVC's main logs it."""
    monkeypatch.chdir(tmp_path)
    fail, expected, fault = CASES[case]
    events = logged(caught(fail), tmp_path)
    assert failed_status(events) == expected, events
    assert fault in events.environment, events


def test_dvc_failing_without_a_word_is_an_environment_error() -> None:
    assert failed_status(Events(rc=1)) == AttemptStatus.ERROR


@pytest.mark.e2e
def test_a_missing_cache_object_is_an_environment_error(tmp_path: Path) -> None:
    """A data source whose object the DVC cache lacks: the real `dvc checkout` fails, and the hybrid is not to blame."""
    repo = dvc_repo(tmp_path / "repo", {})
    (repo / "source.csv").write_text("a,b\n")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "source.csv"], cwd=repo, check=True)
    (repo / "source.csv").unlink()
    for object_file in (repo / ".dvc" / "cache").rglob("*"):
        if object_file.is_file():
            object_file.unlink()
    task = Task(env={"PATH": PATH}, metrics_files=(), data_sources=("source.csv.dvc",))
    failed = attempt(Site(procs=Processes(), workspace=repo, log=tmp_path / "log", task=task, env=task.env))
    assert failed.status == AttemptStatus.ERROR and "CheckoutError inside DVC" in failed.reason, failed


def dvc_temporary_name() -> str:
    """A name as dvc-objects gives a file it writes before moving it into place."""
    from dvc_objects.fs.utils import tmp_fname

    return tmp_fname()


def test_only_the_temporary_files_a_command_listed_are_removed(tmp_path: Path) -> None:
    """The session's side, for a driver killed mid-transfer: the listed temporary files that are still there go;
    another process's in-flight one, and a listed name that is not a temporary file's, stay.
    """
    folder = tmp_path / "cache" / "files" / "md5" / "8e"
    folder.mkdir(parents=True)
    ours, theirs, moved = (folder / dvc_temporary_name() for _ in range(3))
    ours.write_bytes(b"partial")
    theirs.write_bytes(b"in flight")
    not_temporary = folder / "32e22642bddc89698e25a4e9bf528b"
    not_temporary.write_bytes(b"an object")
    listing = temporaries_file(tmp_path / "events.json")
    listing.write_bytes(b"".join(os.fsencode(path) + b"\0" for path in (ours, moved, not_temporary)))
    remove_temporaries(listing)
    assert not ours.exists() and theirs.exists() and not_temporary.exists() and not listing.exists()


BIG_STAGE = {
    "big": {
        # The stage lifts the file size limit for itself; DVC, copying its output into the cache, keeps it.
        "cmd": "ulimit -S -f unlimited && python -c \"open('big.bin', 'wb').write(b'x' * 3_000_000)\"",
        "outs": ["big.bin"],
    }
}


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past `size` bytes fail with EFBIG (Python ignores SIGXFSZ) in this process and what it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def dvc_repo(root: Path, stages: dict[str, object]) -> Path:
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


def cache_temporaries(cache: Path) -> set[Path]:
    return {path for path in cache.rglob(".*.tmp") if path.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("fork", [False, True], ids=["fresh-interpreter", "forked"])
def test_a_cache_write_that_fails_leaves_no_temporary_file_in_the_users_cache(tmp_path: Path, fork: bool) -> None:
    """A real write failure in a real `dvc repro`: DVC copies the stage's 3 MB output into the cache under a file size
    limit of 1 MiB, as onto a full disk. Another process's in-flight temporary file in the same folder stays.
    """
    repo = dvc_repo(tmp_path / "repo", BIG_STAGE)
    cache = repo / ".dvc" / "cache"
    folder = cache / "files" / "md5" / hashlib.md5(b"x" * 3_000_000).hexdigest()[:2]
    folder.mkdir(parents=True)
    theirs = folder / f".{secrets.token_urlsafe(16)}.tmp"
    theirs.write_bytes(b"another process's transfer")
    task = Task(env={"PATH": PATH}, metrics_files=())
    with file_size_limit(1 << 20):
        procs = Processes(dvc=ForkedDvc() if fork else DirectDvc())
        try:
            failed = attempt(Site(procs=procs, workspace=repo, log=tmp_path / "log", task=task, env=task.env))
        finally:
            procs.close()
    assert failed.status == AttemptStatus.ERROR and "file too large" in failed.reason, failed
    assert cache_temporaries(cache) == {theirs}
