"""The environment is the lock's, and segbisect installs on its own.

The tests run in the environment the README's commands install from `requirements/test.txt`, pip's export of
`uv.lock` (written by `requirements/refresh`): a result is only as reproducible as the versions it ran with, so a
package at another version than the lock's fails here, named, before any other test can pass on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import segbisect

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "uv.lock"
EXPORTS = sorted((ROOT / "requirements").glob("*.txt"))
TEST_EXPORT = ROOT / "requirements" / "test.txt"
WORKSPACE = {"segbisect": ROOT / "bisect", "wise-segbisect": ROOT}
# `pip install ./bisect` into an empty venv installed 101 distributions (besides pip and setuptools) on Python 3.11
# and 3.13: DVC and its own dependencies, nearly all of them. The limit leaves room for DVC's tree to grow by a
# few releases' worth; a machine-learning framework would break it (MLflow alone brings about 60).
MOST_DISTRIBUTIONS = 120
# What segbisect must not pull in without extras: the pipeline's frameworks, and the extras' own packages.
NOT_WITHOUT_EXTRAS = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "matplotlib", "mlflow", "ray")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    export: str


def pins(export: Path) -> list[Pin]:
    """The requirements of one export that apply to this interpreter and platform (their environment markers)."""
    lines = [line.removesuffix("\\").strip() for line in export.read_text(encoding="utf-8").splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith(("#", "--"))]
    found = []
    for requirement in requirements:
        if requirement.marker is None or requirement.marker.evaluate():
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{export.name}: {requirement} is not pinned"
            found.append(Pin(canonicalize_name(requirement.name), Version(specifier.version), export.name))
    return found


def locked() -> dict[str, set[Version]]:
    """Each package of uv.lock with the versions it is locked at (one, or one per platform where they differ)."""
    versions: dict[str, set[Version]] = {}
    for package in tomllib.loads(LOCK.read_text(encoding="utf-8"))["package"]:
        versions.setdefault(canonicalize_name(package["name"]), set()).add(Version(package["version"]))
    return versions


def installed() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}


def test_the_exports_are_the_locks() -> None:
    """An export written before the last `uv lock` would install other versions than the lock names."""
    lock = locked()
    assert {"cpu.txt", "gpu.txt", "test.txt", "dev.txt", "segbisect-test.txt"} <= {e.name for e in EXPORTS}
    stale = [
        f"{pin.export}: {pin.name}=={pin.version} (uv.lock: {sorted(map(str, lock.get(pin.name, set()))) or 'none'})"
        for export in EXPORTS
        for pin in pins(export)
        if pin.version not in lock.get(pin.name, set())
    ]
    assert not stale, "requirements/*.txt differ from uv.lock, run requirements/refresh:\n" + "\n".join(stale)


def test_every_locked_package_is_installed_at_its_locked_version() -> None:
    """Every package the test export pins for this platform, and every installed package the lock knows, at the
    lock's version (the dev tools, the GPU build, the benchmarks' packages included when they are installed)."""
    here, lock, expected = installed(), locked(), pins(TEST_EXPORT)
    wrong = [
        f"{pin.name}: locked {pin.version}, installed {here.get(pin.name, 'nothing')}"
        for pin in expected
        if here.get(pin.name) != pin.version
    ]
    pinned = {pin.name for pin in expected} | set(WORKSPACE)
    wrong += [
        f"{name}: locked {' or '.join(sorted(map(str, lock[name])))}, installed {version}"
        for name, version in sorted(here.items())
        if name in lock and name not in pinned and version not in lock[name]
    ]
    assert not wrong, "not the lock's environment (README: Reproducible installs):\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(WORKSPACE))
def test_the_workspace_projects_are_installed_at_their_declared_version(name: str) -> None:
    declared = tomllib.loads((WORKSPACE[name] / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert metadata.version(name) == declared


def test_segbisect_is_imported_from_this_checkout() -> None:
    """An editable install of ./bisect: the tests exercise the code beside them, not a copy installed elsewhere."""
    assert Path(segbisect.__file__).resolve().parent == ROOT / "bisect" / "segbisect"


# Asked of the venv's own interpreter, not of pip: pip's output follows the caller's PIP_* settings (PIP_QUIET
# silences `pip list`).
LIST_DISTRIBUTIONS = (
    "import json, importlib.metadata as m; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def distributions(venv: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", LIST_DISTRIBUTIONS], capture_output=True, text=True, check=True
    )
    return {canonicalize_name(name): version for name, version in json.loads(done.stdout).items()}


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_segbisect_installs_alone_without_the_pipelines_frameworks(tmp_path: Path) -> None:
    """`pip install ./bisect` into an empty venv: a working command, DVC's tree and not much more."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT / "bisect")],
        cwd=tmp_path,
        check=True,
    )
    command = str(venv / "bin" / "segbisect")
    version = subprocess.run([command, "--version"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert version.stdout == f"segbisect {metadata.version('segbisect')}\n"
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert re.search(r"Usage: segbisect \[OPTIONS\] .*GOOD.* .*BAD", helped.stdout), helped.stdout
    found = distributions(venv)
    assert not [name for name in NOT_WITHOUT_EXTRAS if name in found]
    counted = set(found) - {"pip", "setuptools"}
    assert "dvc" in counted and len(counted) <= MOST_DISTRIBUTIONS, sorted(counted)
