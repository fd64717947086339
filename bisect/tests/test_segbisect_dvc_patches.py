"""The fork server's patches of DVC internals (`segbisect.project.dvc_patches`) against DVC releases that change them.

A release is simulated by a `sitecustomize.py` on PYTHONPATH that alters DVC's modules as they are imported, in
every process the bisection starts, as an installed release would be: a renamed or re-signed function, its callers
adjusted. Whatever the release, the bisection names the culprit unaltered DVC names, with one warning naming what
the fork server left to DVC and no traceback on the terminal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from segbisect.core.attempt import AttemptStatus
from segbisect.project import dvc_patches
from segbisect.project.dvc_patches import (
    PATCHES,
    Internal,
    Patch,
    declared_dvc,
    dvc_requirement,
    signature,
    unsupported,
)
from segbisect.project.forked import ForkServer, Warnings
from segbisect.project.gateway import ForkedDvc
from segbisect.project.runner import Processes, Site, Task, attempt
from segbisect_toy import bad_commit, tree_state

SEGBISECT = str(Path(sys.executable).parent / "segbisect")
CONSEQUENCE = "verdicts are unchanged, commands are slower"

# -- the records, against this DVC and against fake functions of other signatures ---------------------------------


def test_every_patch_was_verified_against_the_installed_dvc() -> None:
    for patch in PATCHES:
        for internal in (patch.target, *patch.uses):
            assert internal.differs() is None, internal


def test_a_signature_is_its_parameters_names_kinds_and_defaults_without_annotations() -> None:
    def annotated(path: str, parser: Callable[[str], dict[str, Any]], *, fs: object | None = None) -> int:
        return 0

    assert signature(annotated) == "(path, parser, *, fs=None)"


@pytest.fixture
def fake_dvc(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module standing in for a DVC module: `target(path, fs=None)` calls `helper(text, path)`."""
    module = types.ModuleType("fake_dvc_module")

    def helper(text: str, path: str) -> str:
        return text

    def target(path: str, fs: object = None) -> str:
        return module.helper("dvc's own", path)

    module.helper, module.target = helper, target
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def fake_patch(helper_signature: str = "(text, path)") -> Patch:
    return Patch(
        Internal("fake_dvc_module", "target", "(path, fs=None)"),
        uses=(Internal("fake_dvc_module", "helper", helper_signature),),
        replacement=lambda own: lambda path, fs=None: f"patched, not {own(path)}",
        without="the fake stays slow",
    )


def test_a_patch_whose_functions_are_as_verified_replaces_its_target(fake_dvc: types.ModuleType) -> None:
    assert fake_patch().apply() is None
    assert fake_dvc.target("x") == "patched, not dvc's own"


def test_a_called_function_of_another_signature_leaves_the_target_as_dvc_has_it(fake_dvc: types.ModuleType) -> None:
    own = fake_dvc.target
    warning = fake_patch(helper_signature="(text)").apply()
    assert fake_dvc.target is own
    assert warning == (
        "DVC's fake_dvc_module.helper is (text, path), not (text): the fork server does not patch "
        f"fake_dvc_module.target; the fake stays slow; {CONSEQUENCE}"
    )


def test_a_target_of_another_signature_or_none_at_all_is_left_alone(fake_dvc: types.ModuleType) -> None:
    fake_dvc.target = lambda path, fs=None, keep=True: "renewed"
    assert (fake_patch().apply() or "").startswith(
        "DVC's fake_dvc_module.target is (path, fs=None, keep=True), not (path, fs=None): "
    )
    assert fake_dvc.target("x") == "renewed"
    del fake_dvc.target
    assert (fake_patch().apply() or "").startswith("DVC has no fake_dvc_module.target: ")
    assert not hasattr(fake_dvc, "target")
    missing = Patch(Internal("no_such_dvc_module", "f", "()"), (), lambda own: own, "slow")
    assert (missing.apply() or "").startswith("DVC has no module no_such_dvc_module: ")


def test_dvc_outside_the_declared_range_is_named_with_the_range() -> None:
    declared = dvc_requirement(["dvc>=3.67,<4"])
    assert unsupported(declared, "4.0.0") == (
        "DVC 4.0.0 is outside the range segbisect supports (dvc<4,>=3.67): the fork server patches none of DVC's "
        f"internals; {CONSEQUENCE}"
    )
    assert unsupported(declared, "3.66.9") is not None
    assert unsupported(declared, "3.67.1") is None
    assert unsupported(declared, "3.99.0rc1") is None
    assert unsupported(None, "4.0.0") is None, "no declared range: no version check"
    assert unsupported(declared, "not a version") is None


def test_the_declared_range_is_the_unconditional_dvc_requirement() -> None:
    lines = ["typer>=0.15", 'dvc-s3>=3.2; extra == "test"', 'dvc>=9; extra == "ray"', "DVC>=3.67,<4", "not valid ("]
    found = dvc_requirement(lines)
    assert found is not None and str(found.specifier) == "<4,>=3.67"
    assert dvc_requirement(['dvc>=3; extra == "test"']) is None


def test_the_installed_segbisect_declares_a_range_holding_the_installed_dvc() -> None:
    declared = declared_dvc()
    installed = dvc_patches.installed_dvc()
    assert declared is not None and installed is not None
    assert declared.specifier.contains(installed, prereleases=True)
    assert declared_dvc("no-such-distribution") is None, "no metadata: no version check, no crash"


def test_warnings_are_held_until_a_handler_is_attached_and_each_is_said_once() -> None:
    heard: list[str] = []
    warnings = Warnings()
    warnings.say("first")
    warnings.say("first")
    warnings.attach(heard.append)
    warnings.say("second")
    warnings.say("first")
    assert heard == ["first", "second"]


# -- whole bisections under simulated DVC releases -------------------------------------------------------------------

# Alters DVC modules as they are imported (ALTER names, per module, a function run on it once it has executed) and
# counts the fork server's starts in the file named by FORKSERVER_STARTS.
HOOK = """
import importlib.machinery, os, sys

ALTER = {}
IN_SERVER = sys.orig_argv[1:3] == ["-m", "segbisect.project.forked"]
if IN_SERVER:
    with open(os.environ["FORKSERVER_STARTS"], "a") as starts:
        starts.write("started\\n")


class Alter:
    def find_spec(self, name, path, target=None):
        if name not in ALTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        own = spec.loader.exec_module

        def exec_module(module):
            own(module)
            ALTER[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Alter())
"""

RENAMED_PARSER = """
def parser(module):
    module.build_main_parser = module.get_main_parser
    del module.get_main_parser


def cli(module):
    def parse_args(argv=None):
        from dvc.cli.parser import build_main_parser

        parser = build_main_parser()
        args = parser.parse_args(argv)
        args.parser = parser
        return args

    module.parse_args = parse_args


ALTER["dvc.cli.parser"] = parser
ALTER["dvc.cli"] = cli
"""

RESIGNED_MODIFY_DATA = """
def yaml(module):
    from contextlib import contextmanager

    own = module._modify_data

    @contextmanager
    def _modify_data(path, parser, dumper, fs=None, *, encoding):
        assert encoding == "utf-8"
        with own(path, parser, dumper, fs=fs) as data:
            yield data

    @contextmanager
    def modify_yaml(path, fs=None):
        with _modify_data(path, module.parse_yaml_for_update, module._dump, fs=fs, encoding="utf-8") as data:
            yield data

    module._modify_data, module.modify_yaml = _modify_data, modify_yaml


ALTER["dvc.utils.serialize._yaml"] = yaml
"""

RESIGNED_RWLOCK = """
def rwlock(module):
    own = module.rwlock

    def rwlock(tmp_dir, fs, cmd, read, write, hardlink, wait=False):
        return own(tmp_dir, fs, cmd, read, write, hardlink)

    module.rwlock = rwlock


ALTER["dvc.rwlock"] = rwlock
"""

# Only the fork server crashes: the same DVC imports in a fresh interpreter.
CRASHING_SERVER = """
def crash(module):
    raise RuntimeError("this DVC cannot be imported in the fork server")


if IN_SERVER:
    ALTER["dvc.cli.parser"] = crash
"""


@dataclass(frozen=True)
class Release:
    """A simulated DVC release: the code that alters DVC, and how the one warning it costs starts (none: empty)."""

    alters: str
    warning: str = ""


RELEASES = {
    "unaltered": Release(""),
    "get_main_parser renamed": Release(
        RENAMED_PARSER,
        "DVC has no dvc.cli.parser.get_main_parser: the fork server does not patch dvc.cli.parser.get_main_parser; ",
    ),
    "_modify_data re-signed": Release(
        RESIGNED_MODIFY_DATA,
        "DVC's dvc.utils.serialize._yaml._modify_data is (path, parser, dumper, fs=None, *, encoding), not (path, "
        "parser, dumper, fs=None): the fork server does not patch dvc.dvcfile.modify_yaml; ",
    ),
    "rwlock re-signed": Release(
        RESIGNED_RWLOCK,
        "DVC's dvc.rwlock.rwlock is (tmp_dir, fs, cmd, read, write, hardlink, wait=False), not (tmp_dir, fs, cmd, "
        "read, write, hardlink): the fork server does not patch dvc.rwlock.rwlock; DVC's own read/write locks are "
        "used; ",
    ),
    "the fork server crashes at start": Release(
        CRASHING_SERVER,
        "the DVC fork server failed to start (RuntimeError: this DVC cannot be imported in the fork server): every DVC "
        "command of this session runs in a fresh interpreter; ",
    ),
}


def install(release: Release, folder: Path) -> dict[str, str]:
    """The environment of a process under `release`, its sitecustomize.py in `folder`."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOOK + release.alters, encoding="utf-8")
    return {"PYTHONPATH": str(folder), "FORKSERVER_STARTS": str(folder / "starts")}


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(RELEASES))
def test_a_dvc_release_that_changes_a_patched_internal_costs_speed_never_the_verdict(
    name: str, toy: Path, tmp_path: Path
) -> None:
    """One server a session, one warning at most, and the verdict of unaltered DVC."""
    release = RELEASES[name]
    env = install(release, tmp_path / "release")
    bad_commit(toy, params={"train": {"lr": 2.0}})
    before = tree_state(toy)
    done = subprocess.run(
        [SEGBISECT, "good", "bad", "--repo", str(toy), "--no-mlflow", "--json", "--results", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree_state(toy) == before, "segbisect changed the user's repository"
    assert sorted(u["name"] for u in json.loads(done.stdout)["culprit"]["units"]) == ["train.lr"]
    terminal = done.stdout + done.stderr
    assert "Traceback" not in terminal and "Error in sitecustomize" not in terminal, terminal
    warnings = [line.removeprefix("warning: ") for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == bool(release.warning), terminal
    for line in warnings:
        assert line.startswith(release.warning) and line.endswith(CONSEQUENCE), line
    assert Path(env["FORKSERVER_STARTS"]).read_text(encoding="utf-8") == "started\n"


def server_processes() -> list[int]:
    """This process's fork servers."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline, stat = (proc / "cmdline").read_bytes(), (proc / "stat").read_text(encoding="utf-8")
        except OSError:
            continue
        if b"segbisect.project.forked" in cmdline and int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found.append(int(proc.name))
    return found


@pytest.mark.e2e
def test_a_replacement_server_that_fails_to_start_ends_forking_for_the_session(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that served and died is replaced; when the replacement dies before it is ready, every later DVC
    command runs in a fresh interpreter, no server is started again, and the session hears why once.
    """
    heard: list[str] = []
    server = ForkServer()
    server.on_warning(heard.append)
    procs = Processes(dvc=ForkedDvc(server))
    env = {"PATH": os.environ["PATH"]}
    task = Task(env=env, metrics_files=("metrics.json",))
    try:
        assert (
            attempt(Site(procs=procs, workspace=toy, log=tmp_path / "log", task=task, env=env)).status
            == AttemptStatus.OK
        )
        assert server.ready.is_set() and heard == []
        crashing = install(RELEASES["the fork server crashes at start"], tmp_path / "release")
        for variable, value in crashing.items():
            monkeypatch.setenv(variable, value)
        for pid in server_processes():
            os.kill(pid, signal.SIGKILL)
        server.close()
        done = [attempt(Site(procs=procs, workspace=toy, log=tmp_path / "log", task=task, env=env)) for _ in range(3)]
    finally:
        procs.close()
    assert [(d.status, d.metrics["metrics.json"]["foreground_fraction"]) for d in done] == [(AttemptStatus.OK, 0.5)] * 3
    starts = Path(crashing["FORKSERVER_STARTS"]).read_text(encoding="utf-8")
    assert starts == "started\n", "a server that failed to start was started again"
    assert heard == [
        "the DVC fork server failed to start (RuntimeError: this DVC cannot be imported in the fork server): every "
        f"DVC command of this session runs in a fresh interpreter; {CONSEQUENCE}"
    ]
