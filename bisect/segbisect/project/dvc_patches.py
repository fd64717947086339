"""What the fork server (see `forked`) changes in DVC, and the checks that keep a DVC release from breaking it.

Each patch replaces one DVC function with a faster one that relies on DVC internals. A release may rename or
re-sign any of them, so a patch applies only where DVC's version is in the range segbisect declares and every
function it replaces or calls is there with the signature it was verified against; otherwise DVC keeps its own
behaviour and the session hears one warning. No patch changes what DVC computes, only how fast: a verdict never
depends on them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Where segbisect declares the DVC it supports: its own distribution. Not installed (run from a source tree): no
# version check.
DISTRIBUTION = "segbisect"
CONSEQUENCE = "verdicts are unchanged, commands are slower"


def signature(function: Callable[..., Any]) -> str:
    """The parameters' names, kinds and defaults, as `inspect` writes them, without annotations: annotations are
    written differently from one Python version to the next, and calls depend on the rest alone.
    """
    found = inspect.signature(function)
    bare = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in found.parameters.values()]
    return str(found.replace(parameters=bare, return_annotation=inspect.Signature.empty))


@dataclass(frozen=True)
class Internal:
    """A DVC function a patch replaces or calls, and the signature (see `signature`) it was verified against."""

    module: str
    name: str
    verified: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"

    def differs(self) -> str | None:
        """How this DVC's function differs from the verified one (None: it does not)."""
        try:
            owner = importlib.import_module(self.module)
        except ImportError:
            return f"DVC has no module {self.module}"
        found = getattr(owner, self.name, None)
        if not callable(found):
            return f"DVC has no {self}"
        try:
            actual = signature(found)
        except (TypeError, ValueError):
            return f"{self} has no signature to check"
        return None if actual == self.verified else f"DVC's {self} is {actual}, not {self.verified}"


@dataclass(frozen=True)
class Patch:
    """`target` becomes `replacement(DVC's own target)`, which calls the functions `uses`; `without` is what a
    session loses when the patch is left out.
    """

    target: Internal
    uses: tuple[Internal, ...]
    replacement: Callable[[Callable[..., Any]], Callable[..., Any]]
    without: str

    def apply(self) -> str | None:
        """Replace the target if every function involved is as verified; otherwise leave DVC as it is and return
        the warning.
        """
        for internal in (self.target, *self.uses):
            if differs := internal.differs():
                return f"{differs}: the fork server does not patch {self.target}; {self.without}; {CONSEQUENCE}"
        owner = importlib.import_module(self.target.module)
        setattr(owner, self.target.name, self.replacement(getattr(owner, self.target.name)))
        return None


def _built_once(build: Callable[[], Any]) -> Callable[[], Any]:
    """DVC builds its whole command-line parser for every command (about 25 ms); it depends on nothing but DVC's
    code, so the server builds it once and every child parses its arguments with that one.
    """
    cached = functools.cache(build)
    cached()
    return cached


def _locks_read_with_c_parser(_: Callable[..., Any]) -> Callable[..., Any]:
    """DVC rewrites a dvc.lock after every stage it runs or restores, and first reads it with ruamel's round-trip
    parser, pure Python, so that comments survive (75 ms for the tiny pipeline's 9 KB lock, six times the C
    parser's; it grows with the lock). A lock is DVC's own output and the worktrees are segbisect's: the C parser's
    plain data dumps back to the same bytes. Other files (dvc.yaml) keep the round-trip parser.
    """
    from dvc.utils.serialize import _yaml

    @contextlib.contextmanager
    def modify_yaml(path: Any, fs: Any = None) -> Iterator[Any]:
        parser = _yaml.parse_yaml if os.fspath(path).endswith(".lock") else _yaml.parse_yaml_for_update
        with _yaml._modify_data(path, parser, _yaml._dump, fs=fs) as data:
            yield data

    return modify_yaml


def _unguarded(_: Callable[..., Any]) -> Callable[..., Any]:
    """DVC records every stage's reads and writes in `.dvc/tmp/rwlock` before and after it touches them (a file
    lock, a JSON read and a write each time; about 0.05 s of a 0.2-0.4 s command), so that two commands in one
    repository cannot clash. Each worktree here runs one DVC command at a time, so there is nothing to guard.
    """

    @contextlib.contextmanager
    def rwlock(*args: Any, **kwargs: Any) -> Iterator[None]:
        yield

    return rwlock


_YAML = "dvc.utils.serialize._yaml"
PATCHES = (
    Patch(
        Internal("dvc.cli.parser", "get_main_parser", "()"),
        uses=(),
        replacement=_built_once,
        without="DVC builds its command-line parser for every command",
    ),
    Patch(
        Internal("dvc.dvcfile", "modify_yaml", "(path, fs=None)"),
        uses=(
            Internal(_YAML, "_modify_data", "(path, parser, dumper, fs=None)"),
            Internal(_YAML, "_dump", "(data, stream)"),
            Internal(_YAML, "parse_yaml", "(text, path, typ='safe')"),
            Internal(_YAML, "parse_yaml_for_update", "(text, path)"),
        ),
        replacement=_locks_read_with_c_parser,
        without="DVC reads each dvc.lock it rewrites with its pure-Python parser",
    ),
    Patch(
        Internal("dvc.rwlock", "rwlock", "(tmp_dir, fs, cmd, read, write, hardlink)"),
        uses=(),
        replacement=_unguarded,
        without="DVC's own read/write locks are used",
    ),
)


def apply_all() -> list[str]:
    """Apply the patches that fit this DVC; returns a warning for each one left out (a single one when DVC's
    version is outside the range segbisect declares: then none applies).
    """
    outside = unsupported(declared_dvc(), installed_dvc())
    if outside:
        return [outside]
    return [warning for patch in PATCHES if (warning := patch.apply())]


def unsupported(requirement: Requirement | None, installed: str | None) -> str | None:
    """Why no patch applies to DVC `installed` under `requirement` (None: they may, or either is unknown)."""
    if requirement is None or installed is None:
        return None
    try:
        if requirement.specifier.contains(Version(installed), prereleases=True):
            return None
    except InvalidVersion:
        return None
    return (
        f"DVC {installed} is outside the range segbisect supports ({requirement}): the fork server patches none of "
        f"DVC's internals; {CONSEQUENCE}"
    )


def declared_dvc(distribution: str = DISTRIBUTION) -> Requirement | None:
    """The DVC requirement `distribution` declares (None: it is not installed, or declares no DVC)."""
    try:
        lines = metadata.requires(distribution)
    except metadata.PackageNotFoundError:
        return None
    return dvc_requirement(lines or [])


def dvc_requirement(lines: list[str]) -> Requirement | None:
    """The unconditional `dvc` requirement among a distribution's requirement lines."""
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        unconditional = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        if canonicalize_name(requirement.name) == "dvc" and unconditional:
            return requirement
    return None


def installed_dvc() -> str | None:
    try:
        return metadata.version("dvc")
    except metadata.PackageNotFoundError:
        return None
