"""The casebook's bad.patch files are generated from each case's change.yaml and fit the pipeline as it is now.

Fast: no training; it rebuilds every patch with examples/zero-predictions/make_patches.py and asks git whether the
committed one applies to this tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.scratch import ROOT
from support import load_script

make_patches = load_script(ROOT / "examples" / "zero-predictions" / "make_patches.py")
FOLDERS = make_patches.case_folders()


def test_every_code_case_has_a_change_description() -> None:
    """A bad.patch without change.yaml would be hand-made again: every patch must come from the script."""
    patched = {p.parent.name for p in make_patches.CASES_DIR.glob(f"*/{make_patches.PATCH_FILE}")}
    assert patched == {f.name for f in FOLDERS}
    assert len(FOLDERS) >= 5


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_committed_patch_is_generated_and_applies(folder: Path) -> None:
    committed = (folder / make_patches.PATCH_FILE).read_text()
    assert committed == make_patches.make_patch(folder), (
        f"{folder.name}: bad.patch is out of date: run examples/zero-predictions/make_patches.py"
    )
    check = subprocess.run(
        ["git", "apply", "--check", str(folder / make_patches.PATCH_FILE)], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_an_old_text_that_is_not_there_once_names_the_case_and_file(tmp_path: Path) -> None:
    case = tmp_path / "cases" / "99-broken"
    case.mkdir(parents=True)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "m.py").write_text("def f(x):\n    return x\n\n\ndef g(x):\n    return x\n")
    (case / "change.yaml").write_text("pipeline/m.py:\n  - old: |\n      return x\n    new: |\n      return -x\n")
    with pytest.raises(make_patches.ChangeError, match=r"^99-broken: pipeline/m\.py: `old` text found 2 times"):
        make_patches.make_patch(case, root=tmp_path)
    (case / "change.yaml").write_text("pipeline/m.py:\n  - old: |\n      return y\n    new: |\n      return -y\n")
    with pytest.raises(make_patches.ChangeError, match=r"^99-broken: pipeline/m\.py: `old` text found 0 times"):
        make_patches.make_patch(case, root=tmp_path)


def test_a_replacement_keeps_the_indentation_it_found() -> None:
    text = "def f(x):\n    if x:\n        return x\n    return 0\n"
    new = make_patches.replace_once(text, "if x:\n    return x\n", "if x > 1:\n    y = x\n\n    return y\n")
    assert new == "def f(x):\n    if x > 1:\n        y = x\n\n        return y\n    return 0\n"
