"""segbisect end to end on a toy DVC project (real git and DVC; each `dvc repro` takes about a second). With MLflow:
tests/test_segbisect_tracking.py."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from segbisect.project.workspace import Workspaces
from segbisect_toy import bad_commit, bisect, dvc, sh, tree_state, unit_names

pytestmark = pytest.mark.e2e
SEGBISECT = str(Path(sys.executable).parent / "segbisect")
THRESHOLD_BUG = {
    "prepare": {"n": 42},
    "train": {"epochs": 6},
    "evaluate": {"postprocess": "threshold", "threshold": 0.995},
}


def params_file(repo: Path, name: str, overlay: dict[str, Any]) -> str:
    path = repo.parent / name
    path.write_text(yaml.safe_dump(overlay))
    return str(path)


EVALUATE_CODE_BUG = ('pred = [1 if s > p["margin"] else 0 for s in scores]', "pred = [0 for s in scores]  # wrong axis")


@pytest.mark.parametrize(
    "scenario", ["prepare-params-file", "preprocess-commit", "train-params-files", "evaluate-code-commit"]
)
def test_one_stage_differs(toy: Path, scenario: str) -> None:
    if scenario == "prepare-params-file":
        good, bad = "good", params_file(toy, "bad.yaml", {"prepare": {"fg_value": 1}, "train": {"epochs": 6}})
        expected = ("prepare", ["prepare.fg_value"])
    elif scenario == "preprocess-commit":
        good, bad = "good", bad_commit(toy, {"preprocess": {"mask_interp": "bilinear"}, "evaluate": {"margin": 0.01}})
        expected = ("preprocess", ["preprocess.mask_interp"])
    elif scenario == "train-params-files":
        good = params_file(toy, "good.yaml", {"train": {"epochs": 7}})
        bad = params_file(toy, "bad.yaml", {"train": {"epochs": 7, "lr": 2.0}, "prepare": {"n": 42}})
        expected = ("train", ["train.lr"])
    else:
        code = (toy / "evaluate.py").read_text().replace(*EVALUATE_CODE_BUG)
        prepare = (toy / "prepare.py").read_text() + "# a harmless comment\n"
        good, bad = "good", bad_commit(toy, files={"evaluate.py": code, "prepare.py": prepare})
        expected = ("evaluate", ["evaluate.py"])
    code, report, _ = bisect(toy, good, bad)
    assert code == 0, report
    assert report["verdict"] == "culprit"
    assert (report["culprit"]["stage"], unit_names(report)) == expected
    assert report["culprit"]["sufficient"] and report["culprit"]["necessary"] and report["culprit"]["minimal"]
    assert len(report["units"]) == 2


def test_dvc_experiment_reference(toy: Path) -> None:
    dvc(toy, "exp", "run", "--temp", "-q", "-S", "train.lr=2.0", "-n", "lr-two")
    code, report, _ = bisect(toy, "good", "lr-two")
    assert code == 0 and report["bad"]["kind"] == "exp"
    assert (report["culprit"]["stage"], unit_names(report)) == ("train", ["train.lr"])
    assert report["culprit"]["diagnostics"] == {"cause": "collapsed model"}
    assert report["stage_executions"] == 0, "dvc exp run already cached BAD's train and evaluate"


def test_several_stages_differ_only_one_matters_and_cache_is_reused(toy: Path) -> None:
    code, report, _ = bisect(toy, "good", bad_commit(toy, THRESHOLD_BUG))
    assert code == 0
    assert report["culprit"]["stage"] == "evaluate"
    assert unit_names(report) == ["evaluate.postprocess", "evaluate.threshold"]  # 2 units, 1-minimal
    hybrids = {h["label"]: h for h in report["hybrids"]}
    groups = 3  # prepare, train, evaluate differ
    bound = 2 + math.ceil(math.log2(groups)) + 1 + 1 + 2  # GOOD, BAD, prefixes, sufficient, necessary, ddmin
    assert len(report["hybrids"]) <= bound
    # cache reuse, measured from DVC's own log: GOOD restores every stage, BAD runs all four (prepare.n changed),
    # a hybrid runs only the stages downstream of its first BAD group that no earlier hybrid ran with the same inputs
    assert hybrids["GOOD"]["executed"] == [] and len(hybrids["GOOD"]["restored"]) == 4
    good_log = (Path(report["results_dir"]) / "logs" / f"{hybrids['GOOD']['id']}.log").read_text()
    assert good_log.count("didn't change, skipping") == 4 and "is cached" not in good_log, (
        "GOOD's new worktree gets its outputs from dvc.lock in one checkout, not stage by stage"
    )
    assert hybrids["BAD"]["executed"] == ["prepare", "preprocess", "train", "evaluate"]
    assert hybrids["search: prepare"]["executed"] == ["train", "evaluate"]
    assert hybrids["search: prepare..train"]["executed"] == ["evaluate"]
    assert all(
        h["executed"] == ["evaluate"] for label, h in hybrids.items() if label.startswith(("ddmin", "sufficient"))
    )
    assert report["stage_executions"] == 10 < 4 * len(report["hybrids"])


def test_parallel_stage_search_is_one_wave(toy: Path) -> None:
    code, report, _ = bisect(toy, "good", bad_commit(toy, THRESHOLD_BUG), "--jobs", "3")
    assert code == 0 and report["culprit"]["stage"] == "evaluate"
    labels = [h["label"] for h in report["hybrids"]]
    assert sorted(label for label in labels if label.startswith("search")) == [
        "search: evaluate",
        "search: prepare",
        "search: train",
    ]
    assert not any(label.startswith("sufficient") for label in labels)


def test_a_new_worktree_checks_out_the_stages_before_the_hybrids_first_change(toy: Path) -> None:
    """With --jobs 2 GOOD and BAD start in new worktrees at once. BAD changes only evaluate: the three stages before
    it come from GOOD's dvc.lock in one checkout (skipped in place), not from the run-cache one by one.
    """
    bad = bad_commit(toy, {"evaluate": {"postprocess": "threshold", "threshold": 0.995}})
    code, report, _ = bisect(toy, "good", bad, "--jobs", "2")
    assert code == 0 and report["culprit"]["stage"] == "evaluate"
    hybrids = {h["label"]: h for h in report["hybrids"]}
    assert hybrids["BAD"]["executed"] == ["evaluate"]
    bad_log = (Path(report["results_dir"]) / "logs" / f"{hybrids['BAD']['id']}.log").read_text()
    assert bad_log.count("didn't change, skipping") == 3 and "is cached" not in bad_log, bad_log


def test_a_reused_worktree_skips_in_place_what_did_not_change(toy: Path) -> None:
    """One job: every hybrid runs in GOOD's worktree after the previous one. DVC checks every stage there against
    the lock: prepare and preprocess, the same in every hybrid, are skipped in place and reported restored; a train
    that differs comes back from the run-cache.
    """
    bad = bad_commit(toy, {"train": {"epochs": 6}, "evaluate": {"postprocess": "threshold", "threshold": 0.995}})
    code, report, _ = bisect(toy, "good", bad)
    assert code == 0 and report["culprit"]["stage"] == "evaluate"
    logs = Path(report["results_dir"]) / "logs"
    later = report["hybrids"][1:]
    assert len(later) >= 3
    train_back = False
    for previous, hybrid in zip(report["hybrids"], later, strict=False):
        log = (logs / f"{hybrid['id']}.log").read_text()
        assert "Stage 'prepare' didn't change" in log and "Stage 'preprocess' didn't change" in log, log
        assert hybrid["restored"][:2] == ["prepare", "preprocess"]
        assert sorted(hybrid["executed"] + hybrid["restored"]) == ["evaluate", "prepare", "preprocess", "train"]
        epochs = [("param:train.epochs" in h["from_bad"]) for h in (previous, hybrid)]
        if epochs == [True, False]:
            assert "Stage 'train' is cached" in log, log
            train_back = True
    assert train_back


def test_a_stage_dvc_always_runs_runs_in_every_hybrid(toy: Path) -> None:
    """`always_changed: true` makes `dvc repro` run train every time, so no hybrid may leave it out as unchanged."""
    pipeline = yaml.safe_load((toy / "dvc.yaml").read_text())
    pipeline["stages"]["train"]["always_changed"] = True
    (toy / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    dvc(toy, "repro", "-q")
    sh(toy, "git", "commit", "-q", "-am", "train always runs")
    sh(toy, "git", "tag", "good2")
    bad = bad_commit(toy, {"evaluate": {"postprocess": "threshold", "threshold": 0.995}})
    code, report, _ = bisect(toy, "good2", bad)
    assert code == 0 and report["culprit"]["stage"] == "evaluate"
    assert all("train" in hybrid["executed"] for hybrid in report["hybrids"]), report["hybrids"]


def test_interaction_across_stages(toy: Path) -> None:
    code, report, _ = bisect(toy, "good", bad_commit(toy, {"preprocess": {"scale": 0.5}, "evaluate": {"margin": 0.3}}))
    assert code == 0 and report["verdict"] == "interaction"
    assert unit_names(report) == ["evaluate.margin", "preprocess.scale"]
    assert report["culprit"]["stages"] == ["preprocess", "evaluate"]
    assert report["culprit"]["sufficient"] is False and report["culprit"]["necessary"] is True


def test_untestable_hybrids_make_the_verdict_ambiguous(toy: Path) -> None:
    bad = bad_commit(toy, {"prepare": {"n": 50}, "train": {"max_n": 100, "lr": 2.0}})
    code, report, _ = bisect(toy, "good", bad)
    assert code == 1 and report["verdict"] == "ambiguous" and report["candidates"] == ["prepare", "train"]
    skipped = [h for h in report["hybrids"] if h["outcome"] == "skip"]
    assert len(skipped) == 1 and "stage 'train' failed" in skipped[0]["note"] and "max_n" in skipped[0]["note"]


def test_preconditions_and_usage_errors(toy: Path) -> None:
    bad = bad_commit(toy, THRESHOLD_BUG)
    harmless = params_file(toy, "harmless.yaml", {"train": {"epochs": 9}})
    cases = [
        (("bad", "good"), 3, "GOOD does not pass"),
        (("good", harmless), 3, "BAD does not fail"),
        (("good", "good"), 2, "no differences"),
        (("good", "no-such-ref"), 2, "params file, MLflow run id or `workspace` (the working tree)"),
        (("good", bad, "--fail-if", "__import__('os').system('true')"), 2, "is not allowed"),
        (
            ("good", bad, "--fail-if", "fg == 0"),
            2,
            "available keys: accuracy, foreground_fraction, per_class.foreground",
        ),
        (("good", bad, "--fail-if", ""), 2, "--fail-if is empty"),
    ]
    for args, expected_code, message in cases:
        code, report, human = bisect(toy, *args)
        assert code == expected_code, (args, report)
        assert message in report.get("error", report.get("message", "")), (args, report)
        assert message.split(":")[0] in " ".join(human.split())
    settings = toy / "pyproject.toml"
    project = settings.read_text()
    settings.write_text(project.replace("fail-if", "fail_if"))
    code, report, _ = bisect(toy, "good", bad)
    assert code == 2 and "pyproject.toml: unknown key 'fail_if' in [tool.segbisect]" in report["error"]
    settings.unlink()
    code, report, _ = bisect(toy, "good", bad)
    assert code == 2 and report["error"].startswith("no failure check: pass --fail-if EXPR or --run CMD")
    settings.write_text(project)
    (toy / "good").write_text("train: {lr: 2.0}\n")
    code, report, _ = bisect(toy, "good", bad)
    assert code == 2 and "ambiguous" in report["error"] and "'file:'" in report["error"]


def start(repo: Path, results: Path, *args: str) -> subprocess.Popen:
    """segbisect as a terminal starts it: Ctrl-C (SIGINT) at its default, even where this test runs in a background
    job, whose shell sets SIGINT to ignored for everything it starts."""
    return subprocess.Popen(
        [SEGBISECT, *args, "--repo", str(repo), "--results", str(results), "--no-mlflow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_hybrids(results: Path, count: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        journals = list(results.glob("*/journal.jsonl"))
        if journals and sum('"type": "hybrid"' in line for line in journals[0].read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("segbisect did not get that far in time")


def test_user_workspace_untouched_even_when_killed_and_resume_finishes(toy: Path, tmp_path: Path) -> None:
    bad_commit(toy, THRESHOLD_BUG)
    before = tree_state(toy)
    cache_before = tree_state(toy, skip=(".git/",))
    results = tmp_path / "results"

    proc = start(toy, results, "good", "bad")
    wait_for_hybrids(results, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert tree_state(toy) == before

    proc = start(toy, results, "good", "bad")
    wait_for_hybrids(results, 5, proc)
    proc.kill()
    proc.wait()
    after_kill = tree_state(toy)
    assert {k: v for k, v in after_kill.items() if k != "git worktrees"} == {
        k: v for k, v in before.items() if k != "git worktrees"
    }

    code, report, human = bisect(toy, "good", "bad", "--results", str(results))
    assert code == 0 and report["culprit"]["stage"] == "evaluate"
    assert unit_names(report) == ["evaluate.postprocess", "evaluate.threshold"]
    assert len(report["hybrids"]) == 7 and sum(h["reused"] for h in report["hybrids"]) >= 5
    # 10 stage executions in all, none twice; 9 when the kill landed after the sixth hybrid's stage had finished,
    # which leaves that stage in the run-cache for the resumed session to restore.
    assert report["stage_executions_total"] in (9, 10)
    if after_kill["git worktrees"].count("worktree ") > 1:
        assert "cleaned up after a killed session: workspace" in human
    assert tree_state(toy) == before
    cache_after = tree_state(toy, skip=(".git/",))
    assert all(cache_after[k] == v for k, v in cache_before.items())

    code, fresh, _ = bisect(toy, "good", "bad", "--results", str(results), "--fresh")
    assert code == 0 and not any(h["reused"] for h in fresh["hybrids"]) and unit_names(fresh) == unit_names(report)


def test_run_check_and_repeat(toy: Path) -> None:
    check = "python -c \"import json,sys; sys.exit(1 if json.load(open('metrics.json'))['accuracy'] < 0.9 else 0)\""
    code, report, _ = bisect(
        toy, "good", bad_commit(toy, {"evaluate": {"margin": 0.45}}), "--run", check, "--repeat", "2"
    )
    assert code == 0 and report["culprit"]["stage"] == "evaluate" and unit_names(report) == ["evaluate.margin"]
    bad = next(h for h in report["hybrids"] if h["label"] == "BAD")
    assert bad["attempts"] == 2 and bad["executed"] == ["evaluate", "evaluate"]
    assert set(bad["stage_seconds"]) == {"evaluate"}, "a repeat's stage seconds add up under the stage's name"
    assert os.path.isfile(Path(report["results_dir"]) / "report.md")


@pytest.mark.parametrize("lock", ["committed", "not committed"])
def test_reused_worktrees_give_the_results_of_fresh_ones(toy: Path, tmp_path: Path, lock: str) -> None:
    """Hybrids take turns in one worktree; each must see what a worktree of its own (--keep-workspaces) sees.

    BAD's evaluate.py is the culprit: a hybrid after BAD that still saw BAD's code would fail and blame prepare.
    Without a committed dvc.lock, a reused worktree holds the previous hybrid's outputs and no lock at all.
    """
    if lock == "not committed":
        sh(toy, "git", "rm", "-q", "--cached", "dvc.lock")
        sh(toy, "git", "commit", "-q", "-m", "stop tracking dvc.lock")
        sh(toy, "git", "tag", "-f", "good")
    code_bug = (toy / "evaluate.py").read_text().replace(*EVALUATE_CODE_BUG)
    bad = bad_commit(toy, {"prepare": {"n": 42}, "train": {"epochs": 6}}, files={"evaluate.py": code_bug})
    pooled_repo = Path(shutil.copytree(toy, tmp_path / "pooled", symlinks=True))
    code, pooled, _ = bisect(pooled_repo, "good", bad)
    assert code == 0 and (pooled["culprit"]["stage"], unit_names(pooled)) == ("evaluate", ["evaluate.py"]), (
        pooled["message"],
        pooled["hybrids"],
    )
    code, fresh, human = bisect(toy, "good", bad, "--keep-workspaces")
    assert code == 0 and "hybrid worktrees kept" in human

    def evidence(report: dict[str, Any]) -> list[tuple]:
        return [(h["label"], h["outcome"], h["executed"], h["metrics"]) for h in report["hybrids"]]

    assert evidence(pooled) == evidence(fresh)
    assert len(pooled["hybrids"]) > 4


def test_a_released_worktree_comes_back_clean_but_keeps_dvc_outputs_and_their_lock(toy: Path) -> None:
    commit = sh(toy, "git", "rev-parse", "good").strip()
    with Workspaces(toy) as workspaces:
        first, new = workspaces.acquire("h01", commit, ["data", "model/model.json"], ["dvc.lock"])
        other, _ = workspaces.acquire("h02", commit, [], ["dvc.lock"])
        assert new
        assert other != first, "a worktree in use is never handed out twice"
        (first / "params.yaml").write_text("edited: true\n")
        (first / "leftover.py").write_text("untracked\n")
        (first / "__pycache__").mkdir(exist_ok=True)
        (first / "__pycache__" / "ignored.pyc").write_bytes(b"ignored")
        (first / "data").mkdir(exist_ok=True)
        (first / "data" / "prepared.json").write_text("{}")
        (first / "model").mkdir(exist_ok=True)
        (first / "model" / "model.json").write_text("{}")
        (first / "model" / "scratch.tmp").write_text("not an output")
        (first / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
        workspaces.release(first)
        again, new = workspaces.acquire("h03", commit, ["data", "model/model.json"], ["dvc.lock"])
        assert again == first and not new
        assert (again / "params.yaml").read_bytes() == (toy / "params.yaml").read_bytes()
        assert not (again / "leftover.py").exists() and not (again / "__pycache__").exists()
        assert not (again / "model" / "scratch.tmp").exists()
        assert (again / "data" / "prepared.json").read_text() == "{}" and (again / "model" / "model.json").is_file()
        assert (again / ".dvc" / "config.local").is_file(), "the worktree still shares the user's cache"
        assert (again / "dvc.lock").read_text() == "schema: '2.0'\nstages: {}\n", (
            "the lock of the outputs left in place"
        )
        roots = [first, other]
    assert not any(path.exists() for path in roots)
    assert sh(toy, "git", "worktree", "list").count("\n") == 1


def test_the_results_folder_never_shows_in_git_status(toy: Path) -> None:
    (toy / ".gitignore").write_text("__pycache__/\n")
    sh(toy, "git", "commit", "-qam", "results folder not ignored by the project")
    sh(toy, "git", "tag", "-f", "good")
    bad_commit(toy, THRESHOLD_BUG)
    code, report, _ = bisect(toy, "good", "bad")
    assert code == 0 and Path(report["results_dir"]).parent == toy / "segbisect-results"
    assert sh(toy, "git", "status", "--porcelain") == ""


def test_the_reversed_question_names_the_fix_in_its_own_words(toy: Path) -> None:
    """BAD is the broken configuration here and GOOD the fixed one: which change fixed it?"""
    bad_commit(toy, {"train": {"lr": 2.0}})
    code, report, human = bisect(toy, "bad", "good", "--find-fix")
    assert code == 0 and report["verdict"] == "fix"
    assert report["message"] == (
        "stage 'train' holds the fix, sufficient and necessary; minimal change: 1 unit(s); "
        "rerun with --tipping-point to find where train.lr tips"
    )
    assert unit_names(report) == ["train.lr"] and report["terms"] == {"old": "BROKEN", "new": "FIXED"}
    outcomes = {h["label"]: h["outcome"] for h in report["hybrids"]}
    assert outcomes["BROKEN"] == "broken" and outcomes["FIXED"] == "fixed"
    assert report["culprit"]["diagnostics"] == {"cause": "collapsed model"}, "the broken side's evidence"
    assert "culprit" not in report["message"] and "FIXED" in human

    code, report, _ = bisect(toy, "good", "bad", "--find-fix")
    assert code == 3 and report["message"].startswith("BROKEN does not fail (fixed: ")


def test_a_terminal_shows_live_progress_and_a_pipe_only_plain_lines(toy: Path, tmp_path: Path) -> None:
    from segbisect.session import bisect as run_bisection
    from segbisect.session.options import Options

    bad_commit(toy, {"train": {"lr": 2.0}})
    screen = io.StringIO()
    options = Options(good="good", bad="bad", repo=toy, mlflow=False, results=tmp_path / "results")
    code, report = run_bisection(options, Console(file=screen, force_terminal=True, width=200))
    assert code == 0 and report.culprit is not None and report.culprit.stage == "train"
    assert re.search(r"hybrids done \d+ of about \d+ · .* · 0m\d\ds", screen.getvalue())
    code, _, human = bisect(toy, "good", "bad", "--fresh")
    assert code == 0 and "hybrids done" not in human
