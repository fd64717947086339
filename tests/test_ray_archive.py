"""A hybrid's archive unpacks on a worker under every Python the project declares that this machine has (Debian's
3.11.2 beside the default one, where present): `tarfile`'s data filter where Python has it (3.11.4 and later),
the same checks otherwise. Each Python runs `segbisect/archive.py` alone (`-I -S`: no site packages), as a worker
with nothing but the standard library would.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from segbisect.executors.archive import pack

SOURCES = Path(__file__).resolve().parents[1] / "bisect"
DECLARED = SpecifierSet(tomllib.loads((SOURCES.parent / "pyproject.toml").read_text())["project"]["requires-python"])

UNPACK = """
import json, sys, tarfile
from pathlib import Path
sources, target, hide = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "hide"
if hide:
    del tarfile.data_filter
sys.path.insert(0, sources)
from segbisect.executors.archive import unpack
results = {}
for path in map(Path, sys.argv[4:]):
    try:
        unpack(path.read_bytes(), target / path.stem)
        results[path.stem] = "unpacked"
    except Exception as exc:
        results[path.stem] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"version": sys.version.split()[0], "results": results}))
"""


def pythons() -> list[Any]:
    """Each declared Python version this machine has, oldest first, and this Python without the data filter."""
    installed = {*Path("/usr/bin").glob("python3*"), *Path("/usr/local/bin").glob("python3*")}
    candidates = [sys.executable, *sorted(map(str, installed))]
    found: dict[str, str] = {}
    for python in candidates:
        version = _version(python)
        if version and version in DECLARED:
            found.setdefault(version, python)
    oldest_first = sorted(found.items(), key=lambda item: Version(item[0]))
    params = [pytest.param(python, False, id=f"python{version}") for version, python in oldest_first]
    return [*params, pytest.param(sys.executable, True, id="this-python-without-the-data-filter")]


def _version(python: str) -> str:
    """The interpreter's version ("" for what is no Python: a `-config` script)."""
    code = "import sys; print(sys.version.split()[0])"
    try:
        done = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o644
    return info, data


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(("python", "hide"), pythons())
def test_the_worker_unpacks_a_hybrid_and_refuses_what_the_data_filter_refuses(
    python: str, hide: bool, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "params.yaml").write_text("lr: 0.1\n")
    (tree / "src" / "run.sh").write_text("#!/bin/sh\n")
    (tree / "src" / "run.sh").chmod(0o755)
    (tree / "params.link").symlink_to("params.yaml")
    (tmp_path / "tree.tgz").write_bytes(pack(tree))
    cases = [
        tmp_path / "tree.tgz",
        archive(tmp_path / "absolute.tgz", member(f"{outside}/abs.txt", data=b"x")),
        archive(tmp_path / "dotdot.tgz", member("a/../../outside/up.txt", data=b"x")),
        archive(tmp_path / "link_out.tgz", member("out", tarfile.SYMTYPE, "../../outside")),
        archive(tmp_path / "link_absolute.tgz", member("etc", tarfile.SYMTYPE, "/etc")),
        archive(tmp_path / "hardlink_out.tgz", member("hard", tarfile.LNKTYPE, "../outside/secret")),
        archive(tmp_path / "device.tgz", member("null", tarfile.CHRTYPE)),
        archive(tmp_path / "fifo.tgz", member("pipe", tarfile.FIFOTYPE)),
    ]
    target = tmp_path / "unpacked"
    command = [python, "-I", "-S", "-c", UNPACK, str(SOURCES), str(target), "hide" if hide else "keep"]
    done = subprocess.run([*command, *map(str, cases)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]

    assert results.pop("tree") == "unpacked" and results.pop("absolute") == "unpacked"
    unpacked = target / "tree"
    assert (unpacked / "params.yaml").read_text() == "lr: 0.1\n"
    assert (unpacked / "src" / "run.sh").stat().st_mode & 0o100, "the owner's execute bit is kept"
    assert (unpacked / "params.link").is_symlink() and (unpacked / "params.link").read_text() == "lr: 0.1\n"
    # As the data filter does, a leading slash is dropped: the file lands inside the hybrid's folder.
    assert (target / "absolute" / str(outside).lstrip("/") / "abs.txt").read_bytes() == b"x"
    assert not outside.exists(), "nothing is written outside the hybrid's folder"
    refused = {case: reason for case, reason in results.items() if reason != "unpacked"}
    assert refused.keys() == {"dotdot", "link_out", "link_absolute", "hardlink_out", "device", "fifo"}, results
    named = {"dotdot": "up.txt", "link_out": "'out'", "link_absolute": "'etc'", "hardlink_out": "'hard'"}
    assert all(name in refused[case] for case, name in named.items()), refused
