"""A hybrid's tracked files as one gzipped tar, from the driver to a cluster worker.

Standard library only: a worker unpacks with whatever Python it has, and the test runs `unpack` under every Python
the project declares that the machine has (`python -I -S`, no site packages).
"""

from __future__ import annotations

import copy
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path


class UnsafeMember(tarfile.TarError):
    """A member that would be written outside the hybrid's folder, link there, or make a device or a pipe."""


def pack(root: Path) -> bytes:
    """A tree (the hybrid's tracked files only) as a gzipped tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root, arcname=".")
    return buffer.getvalue()


def unpack(archive: bytes, root: Path) -> None:
    """Into `root`, only what tarfile's "data" filter lets through: Python's own filter where it has one (3.11.4 and
    later, PEP 706), `data_members` on an older 3.11 (Debian 12 ships 3.11.2).
    """
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:
            tar.extractall(root, members=data_members(tar, root))


def data_members(tar: tarfile.TarFile, root: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members as the "data" filter passes them: a leading slash dropped; refused when they would
    land or link outside `root`, link to an absolute path, or are neither file, folder nor link; without owners,
    and with no one's write bit but the owner's. Each is checked as extraction reaches it, so the links it already
    wrote count.
    """
    dest = os.path.realpath(root)
    for member in tar:
        safe = copy.copy(member)
        safe.name = member.name.lstrip("/")
        _inside(dest, os.path.join(dest, safe.name), f"{member.name!r} would be extracted to")
        if member.issym() or member.islnk():
            if os.path.isabs(member.linkname):
                raise UnsafeMember(f"{member.name!r} is a link to an absolute path")
            base = os.path.dirname(safe.name) if member.issym() else ""
            _inside(dest, os.path.join(dest, base, member.linkname), f"{member.name!r} would link to")
        elif not (member.isreg() or member.isdir()):
            raise UnsafeMember(f"{member.name!r} is a special file")
        safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
        safe.mode = _mode(member)
        yield safe


def _inside(dest: str, path: str, what: str) -> None:
    target = os.path.realpath(path)
    if os.path.commonpath([target, dest]) != dest:
        raise UnsafeMember(f"{what} {target!r}, which is outside the destination")


def _mode(member: tarfile.TarInfo) -> int:
    """The data filter's modes: files keep their owner's execute bit and get owner read and write; folders are
    the owner's to write into.
    """
    mode = member.mode & 0o755
    if member.isdir():
        return mode | 0o700
    return (mode if mode & 0o100 else mode & ~0o111) | 0o600
