"""The working tree as a reference (`workspace`), and the warning when a reference is HEAD but the tree is dirty
(real git and DVC on the toy project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from segbisect.core.errors import UsageError
from segbisect.core.terms import CULPRIT, FIX
from segbisect.project.gateway import DirectDvc
from segbisect.project.refs import resolve
from segbisect.project.snapshot import load_all, uncommitted_warnings, write_file
from segbisect_toy import bisect, commit, dvc, sh, tree_state, unit_names

# evaluate.py predicting nothing: the toy's all-zero symptom, from code alone.
EVALUATE_BUG = ('pred = [1 if s > p["margin"] else 0 for s in scores]', "pred = [0 for s in scores]")
# Another way of predicting nothing, so that a second dirty tree differs from the first.
EVALUATE_OTHER_BUG = ('pred = [1 if s > p["margin"] else 0 for s in scores]', "pred = [0] * len(scores)")


def edit(repo: Path, name: str, old: str, new: str) -> None:
    text = (repo / name).read_text()
    assert old in text, name
    (repo / name).write_text(text.replace(old, new))


def warnings(human: str) -> list[str]:
    return [line for line in human.splitlines() if line.startswith("warning:")]


def test_a_written_file_keeps_its_mode_and_a_link_is_replaced_not_written_through(tmp_path: Path) -> None:
    """A hybrid gets BAD's version of a stage's executable script: without its mode, the stage could not start,
    and the hybrid would look untestable for a reason that is not the change."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    write_file(script, b"#!/bin/sh\nexit 1\n")
    assert script.read_bytes() == b"#!/bin/sh\nexit 1\n" and script.stat().st_mode & 0o777 == 0o755
    users = tmp_path / "users.py"
    users.write_text("the user's own file")
    link = tmp_path / "linked.py"
    link.symlink_to(users)
    write_file(link, b"hybrid's")
    assert not link.is_symlink() and link.read_bytes() == b"hybrid's" and users.read_text() == "the user's own file"
    write_file(link, None)
    assert not link.exists() and users.exists()


def test_workspace_lists_tracked_changes_and_offers_untracked_files(toy: Path) -> None:
    edit(toy, "evaluate.py", *EVALUATE_BUG)
    (toy / "helper.py").write_text("X = 1\n")
    sh(toy, "git", "add", "helper.py")
    (toy / "notes.txt").write_text("scratch\n")
    (toy / "prepare.py").unlink()
    (toy / "dvc.lock").write_text((toy / "dvc.lock").read_text() + "\n")
    ref = resolve(toy, "workspace", None)
    head = sh(toy, "git", "rev-parse", "HEAD").strip()
    assert (ref.kind, ref.commit) == ("workspace", head)
    assert ref.files == ("evaluate.py", "helper.py", "prepare.py"), "dvc.lock is DVC's record, not configuration"
    assert ref.untracked == ("notes.txt",)
    assert ref.describe() == (
        f"workspace (workspace: working tree over HEAD {head[:10]}, uncommitted: evaluate.py, helper.py, prepare.py)"
    )
    assert resolve(toy, "workspace:", None).files == ref.files


def test_bare_workspace_is_ambiguous_with_a_git_ref_of_that_name(toy: Path) -> None:
    sh(toy, "git", "tag", "workspace", "HEAD")
    with pytest.raises(UsageError) as caught:
        resolve(toy, "workspace", None)
    assert str(caught.value) == (
        "reference 'workspace' is ambiguous (git, workspace); prefix it with one of 'git:', 'workspace:'"
    )
    assert resolve(toy, "git:workspace", None).kind == "git"
    assert resolve(toy, "workspace:", None).kind == "workspace"
    with pytest.raises(UsageError, match="'workspace:HEAD': the working tree takes no name"):
        resolve(toy, "workspace:HEAD", None)


def test_the_snapshot_takes_untracked_files_the_pipeline_reads_and_leaves_outputs_to_dvc(
    toy: Path, tmp_path: Path
) -> None:
    pipeline = yaml.safe_load((toy / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["deps"].append("helper.py")
    (toy / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (toy / "helper.py").write_text("X = 1\n")
    (toy / "notes.txt").write_text("scratch\n")
    committed = (toy / "metrics.json").read_bytes()
    (toy / "metrics.json").write_text('{"foreground_fraction": 0}')  # a git-tracked output (cache: false)

    [snap] = load_all([(resolve(toy, "workspace", None), tmp_path / "ws")], toy, DirectDvc())
    assert snap.ref.files == ("dvc.yaml", "helper.py") and snap.ref.untracked == ()
    assert snap.file_bytes("helper.py") == b"X = 1\n" and "helper.py" in snap.stages[2].files
    assert snap.file_bytes("notes.txt") is None, "an untracked file no stage reads stays out"
    assert snap.file_bytes("metrics.json") == committed, "outputs are DVC's to produce, as for any reference"
    assert not [path for path in snap.root.rglob("*") if path.is_symlink()], "the export links to no user file"


def test_a_git_reference_at_head_warns_of_uncommitted_changes_it_leaves_out(toy: Path) -> None:
    edit(toy, "evaluate.py", *EVALUATE_BUG)
    edit(toy, "params.yaml", "epochs: 5", "epochs: 6")
    (toy / "notes.txt").write_text("no stage reads this\n")
    code, report, human = bisect(toy, "main", "HEAD")
    assert code == 2 and report["error"].startswith("no differences")
    assert warnings(human) == [
        "warning: GOOD 'main' is HEAD's commit; uncommitted changes to evaluate.py, params.yaml are not part of it "
        "(use 'workspace' for the tree as it is on disk)",
        "warning: BAD 'HEAD' is HEAD's commit; uncommitted changes to evaluate.py, params.yaml are not part of it "
        "(use 'workspace' for the tree as it is on disk)",
    ]


def test_the_warning_names_a_params_file_over_head_and_is_not_given_against_the_working_tree(
    toy: Path, tmp_path: Path
) -> None:
    edit(toy, "train.py", "import sys", "import sys  # uncommitted")
    overlay = tmp_path / "[today].yaml"
    overlay.write_text("train: {lr: 2.0}\n")
    refs = [resolve(toy, text, None) for text in (str(overlay), "good", "workspace")]
    today, good, tree = load_all([(ref, tmp_path / f"s{i}") for i, ref in enumerate(refs)], toy, DirectDvc())
    assert uncommitted_warnings(toy, today, good, FIX) == [
        f"BROKEN '{overlay}' is laid over HEAD's commit; uncommitted changes to train.py are not part of it "
        "(use 'workspace' for the tree as it is on disk)",
        "FIXED 'good' is HEAD's commit; uncommitted changes to train.py are not part of it "
        "(use 'workspace' for the tree as it is on disk)",
    ]
    assert uncommitted_warnings(toy, good, tree, CULPRIT) == [], "the other side is the working tree already"
    sh(toy, "git", "commit", "-qam", "train.py committed")
    edit(toy, "train.py", "# uncommitted", "# uncommitted again")
    assert uncommitted_warnings(toy, good, today, CULPRIT) == [], "neither is HEAD's commit any more"


@pytest.mark.e2e
def test_workspace_names_the_uncommitted_change_and_leaves_the_users_repository_alone(
    toy: Path, tmp_path: Path
) -> None:
    edit(toy, "evaluate.py", *EVALUATE_BUG)
    edit(toy, "prepare.py", "p = params", "# staged, harmless\np = params")
    sh(toy, "git", "add", "prepare.py")
    (toy / "notes.txt").write_text("untracked\n")
    before = tree_state(toy)
    # An entry git must refresh: a `git status` that may write the index would write it now.
    os.utime(toy / "train.py", ns=(1, 1))
    index = (toy / ".git" / "index").read_bytes()

    code, report, human = bisect(toy, "HEAD", "workspace", "--results", str(tmp_path / "results"))

    assert (toy / ".git" / "index").read_bytes() == index, "the user's index was written"
    assert tree_state(toy) == before
    assert code == 0, report
    assert report["bad"]["kind"] == "workspace" and not warnings(human)
    assert (report["culprit"]["stage"], unit_names(report)) == ("evaluate", ["evaluate.py"])
    assert sorted(u["name"] for u in report["units"]) == ["evaluate.py", "prepare.py"]


@pytest.mark.e2e
def test_workspace_as_good_runs_its_files_in_every_hybrid(toy: Path) -> None:
    edit(toy, "evaluate.py", *EVALUATE_BUG)
    commit(toy, "broken evaluate")
    sh(toy, "git", "checkout", "HEAD~", "--", "evaluate.py")  # the fix, staged
    code, report, _ = bisect(toy, "workspace", "HEAD")
    assert code == 0, report
    assert (report["culprit"]["stage"], unit_names(report)) == ("evaluate", ["evaluate.py"])
    assert report["hybrids"][0]["outcome"] == "good", "GOOD's hybrid runs the working tree's evaluate.py"


@pytest.mark.e2e
def test_the_same_dirty_tree_resumes_its_session_and_another_one_does_not(toy: Path) -> None:
    edit(toy, "evaluate.py", *EVALUATE_BUG)
    code, first, _ = bisect(toy, "HEAD", "workspace")
    assert code == 0, first
    code, again, _ = bisect(toy, "HEAD", "workspace")
    assert again["results_dir"] == first["results_dir"]
    assert all(h["reused"] for h in again["hybrids"])
    assert again["stage_executions"] == again["stage_executions_earlier"] == 1, "BAD's evaluate, in the first run"

    sh(toy, "git", "checkout", "--", "evaluate.py")
    edit(toy, "evaluate.py", *EVALUATE_OTHER_BUG)
    code, other, _ = bisect(toy, "HEAD", "workspace")
    assert code == 0 and unit_names(other) == ["evaluate.py"]
    assert other["results_dir"] != first["results_dir"]
    assert [h["reused"] for h in other["hybrids"]] == [True, False], "GOOD is the same; BAD is a new tree"


@pytest.mark.e2e
def test_a_reproduced_params_edit_against_main(toy: Path) -> None:
    """The README's walk-through on the toy: edit params.yaml, `dvc repro`, then bisect main against the tree."""
    edit(toy, "params.yaml", "fg_value: 255", "fg_value: 1")
    dvc(toy, "repro", "-q")
    code, report, human = bisect(toy, "main", "workspace", "--jobs", "2")
    assert code == 0, report
    assert (report["culprit"]["stage"], unit_names(report)) == ("prepare", ["prepare.fg_value"])
    assert not warnings(human), "the other side is the working tree already"
    assert report["stage_executions_total"] == 0, "your `dvc repro` left BAD's stages in the run-cache"
