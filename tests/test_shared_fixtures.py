"""built_once: what the xdist workers of one pytest run build once and share (the casebook's GOOD)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from support import built_once, session_folder


def test_a_folder_is_built_once_and_then_reused(tmp_path_factory: pytest.TempPathFactory) -> None:
    builds: list[Path] = []

    def build(folder: Path) -> None:
        builds.append(folder)
        folder.mkdir()
        (folder / "made").write_text("once")

    name = f"shared-{uuid.uuid4().hex}"
    first = built_once(tmp_path_factory, name, build)
    assert built_once(tmp_path_factory, name, build) == first == session_folder(tmp_path_factory) / name
    assert builds == [first]
    assert (first / "made").read_text() == "once"


def test_a_failed_build_is_not_started_again(tmp_path_factory: pytest.TempPathFactory) -> None:
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        raise SystemExit("the GOOD pipeline failed to reproduce")

    name = f"shared-{uuid.uuid4().hex}"
    with pytest.raises(SystemExit):
        built_once(tmp_path_factory, name, build)
    with pytest.raises(pytest.fail.Exception, match="which failed: SystemExit: the GOOD pipeline failed"):
        built_once(tmp_path_factory, name, build)
    assert len(calls) == 1
