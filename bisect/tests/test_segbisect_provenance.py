"""Which commits brought each culprit unit's BAD value: real git histories on the toy project, read without running
anything (one end-to-end bisection shows it in the reports)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from segbisect.core.units import Unit, UnitKind
from segbisect.project.provenance import Introduction, Provenance, trace
from segbisect.project.refs import Reference, resolve
from segbisect.tracking.store import mlflow_installed
from segbisect_toy import bad_commit, bisect, sh

DAY = "2026-11-0{}T10:00:00+00:00"


def committed(repo: Path, author: str, day: int, subject: str, files: dict[str, str | None]) -> Introduction:
    """Write (None: delete) `files` and commit them as `author` on November `day`; the commit as provenance says it."""
    for name, text in files.items():
        if text is None:
            (repo / name).unlink()
        else:
            (repo / name).write_text(text)
    sh(repo, "git", "add", "-A")
    date = DAY.format(day)
    sh(
        repo,
        "git",
        "commit",
        "-q",
        f"--author={author} <{author.lower()}@example.com>",
        f"--date={date}",
        "-m",
        subject,
    )
    return Introduction(commit=sh(repo, "git", "rev-parse", "HEAD").strip(), author=author, date=date, subject=subject)


def params_with(repo: Path, section: str, **values: Any) -> str:
    """params.yaml with `values` set in `section` (a None value drops the key)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    params[section] = {k: v for k, v in params[section].items() if v is not None}
    return yaml.safe_dump(params, sort_keys=False)


def unit(kind: UnitKind, path: str, bad: Any, keypath: tuple[Any, ...] = ()) -> Unit:
    """A culprit unit as `changes.diff` makes it: for params their file and key, else the file or stage."""
    dotted = ".".join(map(str, keypath))
    ident = f"{kind}:{dotted if path == 'params.yaml' else f'{path}:{dotted}'}" if keypath else f"{kind}:{path}"
    return Unit(
        id=ident, kind=kind, name=ident, stages=("train",), path=path, keypath=keypath, good=None, bad=bad, summary=""
    )


def provenance(repo: Path, good: str, bad: str, *units: Unit) -> list[Provenance]:
    found = trace(repo, ref(repo, good), ref(repo, bad), units)
    assert list(found) == [u.id for u in units]
    return list(found.values())


def ref(repo: Path, text: str) -> Reference:
    return resolve(repo, text, None)


def test_a_value_introduced_reverted_and_reintroduced_names_both_introductions_in_order(toy: Path) -> None:
    raised = committed(toy, "Alice", 2, "raise the learning rate", {"params.yaml": params_with(toy, "train", lr=2.0)})
    committed(toy, "Bob", 3, "more epochs", {"params.yaml": params_with(toy, "train", epochs=6)})
    committed(toy, "Carol", 4, "revert the learning rate", {"params.yaml": params_with(toy, "train", lr=0.1)})
    committed(toy, "Bob", 5, "a comment", {"evaluate.py": (toy / "evaluate.py").read_text() + "# note\n"})
    again = committed(toy, "Dave", 6, "raise it again", {"params.yaml": params_with(toy, "train", lr=2.0)})
    committed(toy, "Erin", 7, "more epochs still", {"params.yaml": params_with(toy, "train", epochs=7)})
    [found] = provenance(toy, "good", "main", unit(UnitKind.PARAM, "params.yaml", 2.0, ("train", "lr")))
    assert found == Provenance(commits=(raised, again))
    assert found.lines() == [
        f"{raised.commit[:7]} 2026-11-02 Alice: raise the learning rate",
        f"{again.commit[:7]} 2026-11-06 Dave: raise it again",
    ]


def test_a_change_merged_into_the_main_line_is_the_merge_commits(toy: Path) -> None:
    """The first-parent path sees the branch's change arrive with the merge; the branch's own commit is not on it."""
    sh(toy, "git", "checkout", "-q", "-b", "feature")
    wrong = (toy / "evaluate.py").read_text().replace('s > p["margin"]', 's < p["margin"]')
    branch = committed(toy, "Alice", 2, "flip the comparison", {"evaluate.py": wrong})
    sh(toy, "git", "checkout", "-q", "main")
    committed(toy, "Bob", 3, "a comment", {"prepare.py": (toy / "prepare.py").read_text() + "# note\n"})
    sh(toy, "git", "merge", "-q", "--no-ff", "feature", "-m", "Merge branch 'feature'")
    merge = sh(toy, "git", "rev-parse", "HEAD").strip()
    [found] = provenance(toy, "good", "main", unit(UnitKind.FILE, "evaluate.py", "bad"))
    assert [c.commit for c in found.commits] == [merge] != [branch.commit]
    assert found.commits[0].subject == "Merge branch 'feature'"
    [direct] = provenance(toy, "good", "feature", unit(UnitKind.FILE, "evaluate.py", "bad"))
    assert direct == Provenance(commits=(branch,))


def test_a_params_key_moved_between_files_names_where_it_arrived_with_bads_value(toy: Path) -> None:
    """train.lr moves from params.yaml to train.yaml keeping its value, then changes there: the unit in train.yaml
    took BAD's value with the change, the unit left behind in params.yaml (absent in BAD) with the move."""
    pipeline = yaml.safe_load((toy / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["params"] = ["train", {"train.yaml": ["lr"]}]
    moved = committed(
        toy,
        "Alice",
        2,
        "move the learning rate to train.yaml",
        {
            "params.yaml": params_with(toy, "train", lr=None),
            "train.yaml": "lr: 0.1\n",
            "dvc.yaml": yaml.safe_dump(pipeline, sort_keys=False),
        },
    )
    raised = committed(toy, "Bob", 3, "raise the learning rate", {"train.yaml": "lr: 2.0\n"})
    arrived, left = provenance(
        toy,
        "good",
        "main",
        unit(UnitKind.PARAM, "train.yaml", 2.0, ("lr",)),
        unit(UnitKind.PARAM, "params.yaml", "<absent>", ("train", "lr")),
    )
    assert (arrived, left) == (Provenance(commits=(raised,)), Provenance(commits=(moved,)))


def test_file_and_data_units_name_the_commit_giving_bads_content(toy: Path) -> None:
    code = (toy / "evaluate.py").read_text()
    record = "outs:\n- md5: {}\n  path: images\n"
    committed(toy, "Alice", 2, "first try", {"evaluate.py": code + "# try 1\n", "images.dvc": record.format("aa")})
    second = committed(toy, "Bob", 3, "second try", {"evaluate.py": code + "# try 2\n"})
    data = committed(toy, "Carol", 4, "new images", {"images.dvc": record.format("bb")})
    removed = committed(toy, "Dave", 5, "drop the prepare script", {"prepare.py": None})
    file, dvcfile, gone = provenance(
        toy,
        "good",
        "main",
        unit(UnitKind.FILE, "evaluate.py", "bad"),
        unit(UnitKind.DATA, "images.dvc", "bad"),
        unit(UnitKind.FILE, "prepare.py", "<absent>"),
    )
    assert (file.commits, dvcfile.commits, gone.commits) == ((second,), (data,), (removed,))


def test_a_stage_definition_names_the_commits_changing_that_stage(toy: Path) -> None:
    pipeline = yaml.safe_load((toy / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["cmd"] = "python train.py --fast"
    changed = committed(toy, "Alice", 2, "train faster", {"dvc.yaml": yaml.safe_dump(pipeline, sort_keys=False)})
    pipeline["stages"]["evaluate"]["cmd"] = "python evaluate.py --all"
    other = committed(toy, "Bob", 3, "evaluate all", {"dvc.yaml": yaml.safe_dump(pipeline, sort_keys=False)})
    train, evaluate = provenance(
        toy,
        "good",
        "main",
        unit(UnitKind.STAGE, "train", pipeline["stages"]["train"]),
        unit(UnitKind.STAGE, "evaluate", pipeline["stages"]["evaluate"]),
    )
    assert (train.commits, evaluate.commits) == ((changed,), (other,))


def test_a_params_file_as_bad_names_the_file_for_what_it_lays_over_head(toy: Path, tmp_path: Path) -> None:
    """BAD = a params file over HEAD: its own value has no commit; a value HEAD's history brought has one."""
    margin = committed(toy, "Alice", 2, "wider margin", {"params.yaml": params_with(toy, "evaluate", margin=0.01)})
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"lr": 2.0}}))
    lr, wider = provenance(
        toy,
        "good",
        str(overlay),
        unit(UnitKind.PARAM, "params.yaml", 2.0, ("train", "lr")),
        unit(UnitKind.PARAM, "params.yaml", 0.01, ("evaluate", "margin")),
    )
    assert lr == Provenance(note=f"from params file {overlay}, laid over commit {margin.commit[:10]}")
    assert wider == Provenance(commits=(margin,))


def test_the_working_tree_as_bad_is_uncommitted_and_as_good_is_said_to_lay_its_own_value(toy: Path) -> None:
    (toy / "evaluate.py").write_text((toy / "evaluate.py").read_text() + "# edited\n")
    [found] = provenance(toy, "good", "workspace", unit(UnitKind.FILE, "evaluate.py", "bad"))
    assert found == Provenance(note="uncommitted in the working tree")
    [back] = provenance(toy, "workspace", "good", unit(UnitKind.FILE, "evaluate.py", "good"))
    head = sh(toy, "git", "rev-parse", "HEAD")[:10]
    assert back.commits == () and back.note == (
        f"no commit on the first-parent path from {head} to {head} brings it: it is there where the path starts; "
        "'workspace' lays its own value over that commit (uncommitted in the working tree)"
    )


def test_bad_not_descending_from_good_is_said_and_nothing_else_claimed(toy: Path) -> None:
    bad = bad_commit(toy, params={"train": {"lr": 2.0}})
    later = committed(toy, "Alice", 2, "more epochs", {"params.yaml": params_with(toy, "train", epochs=6)})
    [found] = provenance(toy, "main", "bad", unit(UnitKind.PARAM, "params.yaml", 2.0, ("train", "lr")))
    assert found == Provenance(
        note=f"commit {bad[:10]} does not descend from {later.commit[:10]}: no first-parent path leads from one "
        "to the other"
    )


def test_a_history_git_cannot_read_is_said_in_the_note(toy: Path) -> None:
    raised = committed(toy, "Alice", 2, "raise the learning rate", {"params.yaml": params_with(toy, "train", lr=2.0)})
    tree = sh(toy, "git", "rev-parse", f"{raised.commit}^{{tree}}").strip()
    (toy / ".git" / "objects" / tree[:2] / tree[2:]).unlink()
    [found] = provenance(toy, "good", "main", unit(UnitKind.PARAM, "params.yaml", 2.0, ("train", "lr")))
    assert found.commits == () and found.note.startswith("git could not read the history (fatal: "), found.note


@pytest.mark.e2e
def test_a_bisection_reports_the_commit_that_brought_the_culprit(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised = committed(toy, "Alice", 2, "raise the learning rate", {"params.yaml": params_with(toy, "train", lr=2.0)})
    committed(toy, "Bob", 3, "more epochs", {"params.yaml": params_with(toy, "train", epochs=6)})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = tmp_path / "summary.md"
    code, report, shown = bisect(toy, "good", "main", "--summary-md", str(summary), mlflow=True)
    assert (code, [u["name"] for u in report["culprit"]["units"]]) == (0, ["train.lr"])
    [culprit] = report["culprit"]["units"]
    assert (culprit["provenance"], culprit["provenance_note"]) == ([raised.to_dict()], "")
    line = f"{raised.commit[:7]} 2026-11-02 Alice: raise the learning rate"
    folder = Path(report["results_dir"])
    assert f"- `train.lr`: {line}\n" in (folder / "report.md").read_text()
    assert f"- `train.lr`: {line}\n" in summary.read_text()
    assert f"<li title='{raised.commit}'>{line}</li>" in (folder / "report.html").read_text()
    assert f"brought by {line}" in shown
    assert json.loads((folder / "report.json").read_text())["culprit"]["units"][0]["provenance"] == [raised.to_dict()]
    if mlflow_installed():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("segbisect")
        [session] = client.search_runs([experiment.experiment_id], "tags.`segbisect.role` = 'session'")
        assert session.data.tags["segbisect.provenance.param:train.lr"] == f"{raised.commit} raise the learning rate"
