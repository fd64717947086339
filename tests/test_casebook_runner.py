"""The casebook runner's folder: GOOD is reused by a later run into the same --out when it was built there from the
same inputs, rebuilt when they differ or its build did not finish, and a folder the runner did not write is refused.

The fast tests decide on real folders without training; the e2e one runs the runner twice into a copy of the
casebook's GOOD folder, built once per pytest run by the runner's own code (conftest's casebook_good).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.scratch import ROOT, git
from support import CASEBOOK_RUNNER as RUNNER
from support import load_script

casebook = load_script(RUNNER)
OVERLAY: dict[str, Any] = {"train": {"epochs": 1}}


def runner(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def casebook_folder(out: Path, inputs: dict[str, str], built: bool = True) -> Path:
    """A casebook folder as the runner leaves it after building GOOD (its repository reduced to dvc.lock)."""
    (out / "repo").mkdir(parents=True)
    (out / "repo" / "dvc.lock").write_text("schema: '2.0'\n")
    casebook.GoodMarker(inputs, built).write(out)
    return out


def test_a_good_built_from_the_same_inputs_is_reused(tmp_path: Path) -> None:
    inputs = casebook.good_inputs(OVERLAY)
    assert inputs == casebook.good_inputs(json.loads(json.dumps(OVERLAY)))
    plan = casebook.plan_good(casebook_folder(tmp_path / "out", inputs), inputs)
    assert not plan.build
    assert plan.why.endswith("reusing GOOD, built there from the same project files, GOOD params, numeric environment")


def test_a_good_built_from_other_params_or_kernels_is_rebuilt_naming_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = casebook_folder(tmp_path / "out", casebook.good_inputs(OVERLAY))
    plan = casebook.plan_good(out, casebook.good_inputs({"train": {"epochs": 2}}))
    assert plan.build
    assert plan.why == f"{out}: GOOD there was built from other GOOD params: rebuilding it, dropping its rows"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    plan = casebook.plan_good(out, casebook.good_inputs(OVERLAY))
    assert plan.build
    assert "built from other numeric environment: rebuilding it" in plan.why


def test_an_unfinished_good_is_rebuilt(tmp_path: Path) -> None:
    inputs = casebook.good_inputs(OVERLAY)
    interrupted = casebook_folder(tmp_path / "interrupted", inputs, built=False)
    finished_then_deleted = casebook_folder(tmp_path / "deleted", inputs)
    shutil.rmtree(finished_then_deleted / "repo")
    for out in (interrupted, finished_then_deleted):
        plan = casebook.plan_good(out, inputs)
        assert plan.build
        assert plan.why == f"{out}: GOOD there is incomplete (its build was interrupted or failed): rebuilding it"


def test_a_new_or_empty_folder_builds_good(tmp_path: Path) -> None:
    inputs = casebook.good_inputs(OVERLAY)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        assert casebook.plan_good(out, inputs) == casebook.GoodPlan(True, f"{out}: new casebook folder: building GOOD")


def test_a_folder_the_runner_did_not_write_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine\n")
    done = runner("--cases", "07-argmax-wrong-axis", "--out", out)
    assert done.returncode == 1
    assert done.stderr == f"{out}: not a casebook folder (not empty, and no casebook.json); pass a new or empty --out\n"
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"]
    assert (out / "chapter1.tex").read_text() == "mine\n"
    (out / "casebook.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"casebook\.json: unreadable .*, so .*thesis is no casebook folder"):
        casebook.plan_good(out, casebook.good_inputs(OVERLAY))
    with pytest.raises(SystemExit, match=r"chapter1\.tex: not a folder"):
        casebook.plan_good(out / "chapter1.tex", casebook.good_inputs(OVERLAY))


def test_a_case_must_name_one_exact_diagnosis(tmp_path: Path) -> None:
    """The test asserts each case's exact category and cause: a list of acceptable ones is refused, naming the file."""
    folder = Path(shutil.copytree(casebook.CASES_DIR / "01-ignore-255", tmp_path / "01-ignore-255"))
    assert casebook.load_case(folder).diagnosis == "labels/no_foreground_labels"
    spec = yaml.safe_load((folder / "case.yaml").read_text())
    (folder / "case.yaml").write_text(yaml.safe_dump({**spec, "diagnosis": ["labels", "unknown"]}))
    with pytest.raises(SystemExit, match=r"01-ignore-255/case.yaml: diagnosis must be one `category/cause`"):
        casebook.load_case(folder)


def test_missing_good_params_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        casebook.main(["--out", str(tmp_path / "out"), "--good-params", str(tmp_path / "good.yaml")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"--good-params {tmp_path / 'good.yaml'}: no such file")
    assert not (tmp_path / "out").exists()


def test_a_rebuild_clears_what_the_runner_wrote_and_nothing_else(tmp_path: Path) -> None:
    out = casebook_folder(tmp_path / "out", casebook.good_inputs(OVERLAY))
    for name in ("mlflow.db", "casebook.md", "casebook.csv", "notes.txt"):
        (out / name).write_text("x\n")
    for name in ("mlruns/1", "segbisect/main..bad-1", "outcomes", ".casebook-07-bad", "plots"):
        (out / name).mkdir(parents=True)
    casebook.clear(out)
    assert sorted(p.name for p in out.iterdir()) == ["casebook.json", "notes.txt", "plots"]


def test_a_record_refuses_anything_but_its_isa_folders(tmp_path: Path) -> None:
    out = tmp_path / "record"
    casebook.check_record_out(out, ("AVX2", "SSE41"))
    casebook_folder(out / "AVX2", casebook.good_inputs(OVERLAY))
    casebook.check_record_out(out, ("AVX2", "SSE41"))
    (out / "SSE41").mkdir()
    (out / "SSE41" / "mine.txt").write_text("mine\n")
    with pytest.raises(SystemExit, match=r"SSE41: not a casebook folder"):
        casebook.check_record_out(out, ("AVX2", "SSE41"))
    (out / "old.csv").write_text("mine\n")
    with pytest.raises(SystemExit, match=r"record: holds old\.csv, which --record does not write"):
        casebook.check_record_out(out, ("AVX2", "SSE41"))


def outcome(case: Any, finished: str) -> Any:
    report = {"verdict": "culprit", "message": "m", "hybrids": [], "culprit": {"stage": case.stage}}
    return casebook.Outcome(case, report, 12.5, 0, "commit on x", 2, finished)


def test_earlier_rows_are_kept_until_their_case_or_segbisect_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cases_dir = Path(shutil.copytree(casebook.CASES_DIR, tmp_path / "cases"))
    monkeypatch.setattr(casebook, "CASES_DIR", cases_dir)
    cases = [casebook.load_case(cases_dir / name) for name in ("01-ignore-255", "07-argmax-wrong-axis")]
    out = tmp_path / "out"
    out.mkdir()
    for case in cases:
        outcome(case, f"2030-01-01T00:00:0{len(case.name) % 10}Z").save(out)
    kept = casebook.earlier_outcomes(out, cases)
    assert [(o.case, o.report, o.finished) for o in kept] == [
        (c, outcome(c, "").report, f"2030-01-01T00:00:0{len(c.name) % 10}Z") for c in cases
    ]
    with (cases_dir / "07-argmax-wrong-axis" / "case.yaml").open("a") as spec:
        spec.write("# edited\n")
    assert [o.case.name for o in casebook.earlier_outcomes(out, cases)] == ["01-ignore-255"]
    assert f"{out}: earlier row of 07-argmax-wrong-axis dropped: its case files or segbisect changed" in (
        capsys.readouterr().out
    )
    (out / "outcomes" / "09-rescaled-outputs.json").write_text('{"inputs": "cut short')
    assert casebook.earlier_outcomes(out, []) == []
    printed = capsys.readouterr().out
    assert "earlier row of 01-ignore-255 dropped: its case is gone" in printed
    assert "earlier row of 09-rescaled-outputs dropped: unreadable (JSONDecodeError(" in printed
    assert list((out / "outcomes").iterdir()) == []


def test_a_case_branch_is_made_again_when_the_case_runs_again(tmp_path: Path) -> None:
    """A case run again (its files edited since, say) re-creates its branches, also after a run killed outright left
    its worktree behind."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"threshold": 0.5}}))
    for args in (("init", "-q", "-b", "main"), ("config", "user.email", "t@example.com"), ("config", "user.name", "t")):
        git(repo, *args)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "GOOD")
    casebook.commit_on_branch(repo, "09-good", "main", "GOOD params", {"evaluate": {"threshold": 0.75}})
    (tmp_path / ".casebook-09-good").mkdir()
    again = casebook.commit_on_branch(repo, "09-good", "main", "GOOD params", {"evaluate": {"threshold": 0.8}})
    assert git(repo, "rev-parse", f"{again}^").strip() == git(repo, "rev-parse", "main").strip()
    assert yaml.safe_load(git(repo, "show", f"{again}:params.yaml")) == {"evaluate": {"threshold": 0.8}}
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


FIRST, SECOND = "07-argmax-wrong-axis", "09-rescaled-outputs"


def good_state(out: Path) -> dict[str, tuple[int, int]]:
    """GOOD's marker and every file of its repository outside git and the DVC cache, by inode and mtime: a rebuild,
    or a stage run again in it, changes them."""
    repo = out / "repo"
    files = [out / "casebook.json"] + [
        p for p in repo.rglob("*") if p.is_file() and not p.relative_to(repo).as_posix().startswith((".git/", ".dvc/"))
    ]
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


@pytest.mark.e2e
def test_a_second_case_into_the_same_folder_reuses_good(casebook_good: Path, tmp_path: Path) -> None:
    """A folder the runner built GOOD in (conftest's casebook_good, by the runner's own prepare_good) takes one case,
    then another: GOOD is reused both times, never rebuilt nor re-run, and the first case's row stays."""
    out = Path(shutil.copytree(casebook_good, tmp_path / "casebook", symlinks=True))
    before = good_state(out)
    assert {"repo/dvc.lock", "repo/reports/metrics.json"} <= before.keys()
    first = runner("--cases", FIRST, "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{out}: reusing GOOD, built there from the same" in first.stdout
    first_finished = pd.read_csv(out / "casebook.csv")["finished"].tolist()

    second = runner("--cases", SECOND, "--out", out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{out}: reusing GOOD, built there from the same" in second.stdout
    assert "building GOOD" not in first.stdout + second.stdout
    assert good_state(out) == before

    table = pd.read_csv(out / "casebook.csv")
    assert list(table["case"]) == [FIRST, SECOND]
    assert table["stage named"][0] == "evaluate"
    assert table["hybrids"].tolist() == [2, 2]
    assert [table["finished"][0]] == first_finished
    assert table["finished"][0] < table["finished"][1]
    report = (out / "casebook.md").read_text()
    assert f"Rows from earlier runs into this folder: {FIRST}; against this same GOOD" in report
    assert report.index(f"## {FIRST}:") < report.index(f"## {SECOND}:")
